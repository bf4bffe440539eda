"""``--model-uri`` and ``load_method`` through a real MLflow registry (no fake of MLflow).

Every content method (and ``output_mark``) is logged, registered and promoted in a
temporary SQLite store the way the training pipeline does it (``tests/registry_models.py``);
the CLI and the loader then read ``models:/<name>@champion`` and ``models:/<name>/<version>``
and must answer exactly what the registered bundle answers when loaded from its folder.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from neuralmark.cli.app import app
from neuralmark.components.errors import InputError
from neuralmark.components.methods.registry import load_bundle
from neuralmark.integrations.loading import load_method
from tests.isolation import mlflow_store
from tests.registry_models import NO_BUNDLE

CONTENT = ("pgd_signer", "anti_forward", "spread_spectrum")
README = Path(__file__).resolve().parents[1] / "README.md"
PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


@pytest.fixture(scope="module")
def store(registered_models):
    """The registry, as MLflow's tracking URI for this module (restored afterwards)."""
    with mlflow_store(registered_models.uri):
        yield registered_models


@pytest.fixture(scope="module")
def photo_png(tmp_path_factory, photo) -> Path:
    """A 128×128 crop of a real photograph."""
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(photo[100:228, 150:278]).save(path)
    return path


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def _weights(method) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v for name, module in method.modules().items()
            for k, v in module.state_dict().items()}


def _invoke(runner: CliRunner, *args: str):
    return runner.invoke(app, [str(a) for a in args])


# -- load_method ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", [*CONTENT, "output_mark"])
def test_load_method_reads_the_registered_bundle(store, method):
    bundle = load_bundle(store.bundles[store.version_uri(method)], device="cpu")
    for uri in (store.champion_uri(method), store.version_uri(method)):
        loaded = load_method(uri, "cpu")
        assert loaded.key == method and loaded.config == bundle.config
        ours, theirs = _weights(loaded), _weights(bundle)  # spread_spectrum has none
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_every_registered_version_keeps_its_bundle(store):
    """Version 1 of pgd_signer (the shipped bundle) stays loadable after v2 became champion."""
    assert store.champions["pgd_signer"] != "1"
    shipped = load_bundle(store.bundles["models:/neuralmark-pgd_signer/1"], device="cpu")
    loaded = load_method("models:/neuralmark-pgd_signer/1", "cpu", expect="pgd_signer")
    assert loaded.config == shipped.config


@pytest.mark.parametrize("uri, expected", [
    ("models:/neuralmark-pgd_signer/99", "version=99"),
    ("models:/neuralmark-pgd_signer@nonesuch", "nonesuch"),
    ("models:/neuralmark-nope@champion", "neuralmark-nope"),
    ("models:/", "Not a proper models:/ URI"),
    (f"models:/{NO_BUNDLE}/1", "without a neuralmark bundle"),
    ("RUN_WITHOUT_BUNDLE", "holds no neuralmark bundle"),
])
def test_bad_uris_are_input_errors_naming_the_uri(store, runner, photo_png, uri, expected):
    uri = store.run_without_bundle if uri == "RUN_WITHOUT_BUNDLE" else uri
    with pytest.raises(InputError) as err:
        load_method(uri, "cpu")
    assert uri in str(err.value) and expected in str(err.value)
    result = _invoke(runner, "verify", photo_png, "--key", "k", "--model-uri", uri)
    assert result.exit_code == 2 and expected in result.output


def test_a_missing_store_is_named_and_not_created(tmp_path, runner, photo_png):
    absent = tmp_path / "elsewhere" / "mlflow.db"
    uri = "models:/neuralmark-pgd_signer@champion"
    with mlflow_store(f"sqlite:///{absent}"):
        with pytest.raises(InputError, match="no MLflow store at") as err:
            load_method(uri, "cpu")
        result = _invoke(runner, "verify", photo_png, "--key", "k", "--model-uri", uri)
    assert uri in str(err.value) and str(absent) in str(err.value)
    assert result.exit_code == 2 and "MLFLOW_TRACKING_URI" in result.output
    assert not absent.exists()


def test_loading_prints_no_download_progress_and_leaves_the_environment(store, capfd,
                                                                       monkeypatch):
    monkeypatch.delenv(PROGRESS_BAR, raising=False)
    capfd.readouterr()
    load_method(store.champion_uri("spread_spectrum"), "cpu")
    out, err = capfd.readouterr()
    assert "Downloading artifacts" not in out + err
    assert PROGRESS_BAR not in os.environ
    monkeypatch.setenv(PROGRESS_BAR, "true")  # the user's own choice is kept
    load_method(store.champion_uri("spread_spectrum"), "cpu")
    assert os.environ[PROGRESS_BAR] == "true"


# -- the CLI ----------------------------------------------------------------------------------


def _verify_json(runner, image: Path, source: list[str]):
    result = _invoke(runner, "verify", image, "--key", "owner", "--message", "5", "--json",
                     "--device", "cpu", *source)
    return result.exit_code, [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.parametrize("method, shipped", [("pgd_signer", True),
                                             *((m, False) for m in CONTENT)])
def test_verify_by_model_uri_answers_as_the_bundle(store, runner, photo_png, method, shipped):
    if shipped:  # v1 of pgd_signer: the shipped weights, no longer champion
        uris = [f"models:/{store.names[method]}/1"]
    else:
        uris = [store.champion_uri(method), store.version_uri(method)]
    by_bundle = _verify_json(runner, photo_png, ["--bundle", store.bundles[uris[-1]]])
    assert by_bundle[0] in (0, 1) and by_bundle[1][0]["status"] != "unreadable"
    for uri in uris:
        assert _verify_json(runner, photo_png, ["--model-uri", uri]) == by_bundle


@pytest.mark.parametrize("method", CONTENT)
def test_embed_by_model_uri_writes_what_the_bundle_writes(store, runner, photo_png, tmp_path,
                                                          method):
    outputs = {}
    for label, source in (("uri", ["--model-uri", store.champion_uri(method)]),
                          ("bundle", ["--bundle", store.bundles[store.version_uri(method)]])):
        outputs[label] = tmp_path / f"{label}.png"
        result = _invoke(runner, "embed", photo_png, outputs[label], "--key", "owner",
                         "--message", "5", "--device", "cpu", *source)
        assert result.exit_code == 0, result.output
    assert outputs["uri"].read_bytes() == outputs["bundle"].read_bytes()
    assert (_verify_json(runner, outputs["uri"], ["--model-uri", store.version_uri(method)])
            == _verify_json(runner, outputs["uri"],
                            ["--bundle", store.bundles[store.version_uri(method)]]))


def test_extract_by_model_uri_answers_as_the_bundle(store, runner, photo_png, tmp_path):
    answers = []
    bundle = store.bundles[store.version_uri("output_mark")]
    for label, source in (("uri", ["--model-uri", store.champion_uri("output_mark")]),
                          ("bundle", ["--bundle", bundle])):
        result = _invoke(runner, "extract", photo_png, "--key", "owner", "--json",
                         "--device", "cpu", "--out", tmp_path / f"{label}.logo.png", *source)
        assert result.exit_code in (0, 1), result.output
        answer = json.loads(result.stdout)
        answer["extra"].pop("logo_estimate")
        answers.append(answer)
    assert answers[0] == answers[1]
    assert (tmp_path / "uri.logo.png").read_bytes() == (tmp_path / "bundle.logo.png").read_bytes()


def test_a_model_method_is_refused_by_the_content_commands(store, runner, photo_png, tmp_path):
    result = _invoke(runner, "embed", photo_png, tmp_path / "x.png", "--key", "k",
                     "--model-uri", store.champion_uri("output_mark"))
    assert result.exit_code == 2 and "model method" in result.output
    assert not (tmp_path / "x.png").exists()


def test_bundle_and_model_uri_together_are_refused(store, runner, photo_png):
    result = _invoke(runner, "verify", photo_png, "--key", "k", "--model-uri",
                     store.champion_uri("pgd_signer"), "--bundle", photo_png.parent)
    assert result.exit_code == 2 and "either --bundle or --model-uri" in result.output


# -- the README's examples --------------------------------------------------------------------


def _readme_commands() -> list[list[str]]:
    """The ``neuralmark … --model-uri …`` lines of the README's registered-model section."""
    text = README.read_text()
    section = text.split("### Using a registered model (`--model-uri`)", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line)[1:] for line in block.splitlines() if line.startswith("neuralmark ")]


def test_readme_model_uri_examples_run(store, runner, photo_png, tmp_path, monkeypatch):
    commands = _readme_commands()
    assert len(commands) >= 5 and all("--model-uri" in c for c in commands)
    uris = [c[c.index("--model-uri") + 1] for c in commands]
    names = {u.removeprefix("models:/").split("@")[0].split("/")[0] for u in uris}
    assert names <= set(store.names.values())
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photo.png").write_bytes(photo_png.read_bytes())
    for args in commands:
        result = runner.invoke(app, [*args, "--device", "cpu"])
        assert result.exit_code in (0, 1), (args, result.output)  # 2: error or unreadable
        if "--json" in args:
            assert json.loads(result.stdout)["status"] != "unreadable"
    assert (tmp_path / "photo.signed.png").is_file() and (tmp_path / "photo.stamped.png").is_file()
