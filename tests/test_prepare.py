"""The prepare engine, the CIFAR-10 and image-folder readers, GX on prepared data, the pipeline."""

from __future__ import annotations

import csv
import io
import json
import pickle
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import neuralmark.components.data.prepare as prep
from neuralmark.components.data.datasets import PrepareConfig
from neuralmark.components.data.prepare import PREPARED_COLUMNS, prepare_dataset, source_fingerprint
from neuralmark.components.data.readers.base import DatasetLayoutError
from neuralmark.components.methods.base import InputError

CIFAR_N = 4  # images per batch in the fixture
ONE = PrepareConfig(workers=1)


# -- fixtures in the publishers' formats --------------------------------------------------------


def _pickle(obj: dict) -> bytes:
    return pickle.dumps(obj, protocol=2)  # the published batches are protocol-2 pickles


def _cifar_members(seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
             b"ship", b"truck"]
    members = {"batches.meta": _pickle({b"num_cases_per_batch": CIFAR_N,
                                        b"label_names": names, b"num_vis": 3072})}
    for batch in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        members[batch] = _pickle({
            b"batch_label": f"{batch} of 6".encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, CIFAR_N)],
            b"data": rng.integers(0, 256, (CIFAR_N, 3072), dtype=np.uint8),
            b"filenames": [f"img_{i}.png".encode() for i in range(CIFAR_N)],
        })
    members["readme.html"] = b"<html></html>"
    return members


def _write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def cifar_tar(tmp_path_factory) -> Path:
    return _write_tar(tmp_path_factory.mktemp("cifar") / "cifar-10-python.tar.gz",
                      _cifar_members())


def _folder(root: Path, n_per_class: int = 4, classes: tuple[str, ...] = ("cotton", "linen"),
            flat: int = 4) -> Path:
    rng = np.random.default_rng(1)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            arr = rng.integers(0, 256, (40 + i, 56, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{c}_{i}.png")
    for i in range(flat):
        Image.fromarray(rng.integers(0, 256, (48, 36, 3), dtype=np.uint8)).save(
            root / f"{i:04d}.jpg", quality=90)
    return root


@pytest.fixture()
def folder(tmp_path) -> Path:
    return _folder(tmp_path / "KTH_TIPS")


def _rows(manifest: str | Path) -> list[dict[str, str]]:
    with open(manifest, newline="") as f:
        return list(csv.DictReader(f))


# -- end to end -----------------------------------------------------------------------------


def test_cifar10_from_tarball_and_folder(cifar_tar, tmp_path):
    report = prepare_dataset("cifar10", cifar_tar, tmp_path / "out", ONE)
    assert report.counts == {"train": {"image": 5 * CIFAR_N}, "test": {"image": CIFAR_N}}
    rows = _rows(report.manifest)
    assert list(rows[0]) == PREPARED_COLUMNS
    assert {r["label"] for r in rows} <= {str(i) for i in range(10)}
    first = next(r for r in rows if r["path"] == "train/data_batch_1_00000.png")
    with Image.open(Path(report.root) / first["path"]) as im:
        got = np.asarray(im)
    batch = pickle.loads(_cifar_members()["data_batch_1"], encoding="bytes")
    want = batch[b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0)
    assert got.shape == (32, 32, 3) and np.array_equal(got, want)  # channel-major decoded
    assert first["label"] == str(batch[b"labels"][0])

    extracted = tmp_path / "extracted"
    with tarfile.open(cifar_tar) as tf:
        tf.extractall(extracted, filter="data")
    again = prepare_dataset("cifar10", extracted, tmp_path / "out2", ONE)
    assert Path(again.manifest).read_bytes() == Path(report.manifest).read_bytes()


def test_image_folder_groups_sizes_determinism_and_idempotence(folder, tmp_path):
    cfg = PrepareConfig(size=24, workers=1, fractions=(0.5, 0.25, 0.25))
    a = prepare_dataset("image_folder", folder, tmp_path / "a", cfg)
    rows = _rows(a.manifest)
    assert len(rows) == 12 and a.items == 12 and not a.quarantined
    split_of_group: dict[str, set] = {}
    for r in rows:
        assert (r["width"], r["height"], r["mode"]) == ("24", "24", "RGB")
        split_of_group.setdefault(r["group"], set()).add(r["split"])
    assert split_of_group.keys() >= {"cotton", "linen"}
    assert all(len(s) == 1 for s in split_of_group.values())
    b = prepare_dataset("image_folder", folder, tmp_path / "b", cfg)
    assert Path(a.manifest).read_bytes() == Path(b.manifest).read_bytes()
    again = prepare_dataset("image_folder", folder, tmp_path / "a", cfg)
    assert again.skipped and again.counts == a.counts
    assert source_fingerprint("image_folder", folder, cfg) == a.fingerprint
    (folder / "linen" / "extra.png").write_bytes((folder / "linen" / "linen_0.png").read_bytes())
    assert source_fingerprint("image_folder", folder, cfg) != a.fingerprint


def test_pool_gives_the_same_bytes_as_one_process(folder, tmp_path):
    one = prepare_dataset("image_folder", folder, tmp_path / "one", PrepareConfig(size=16,
                                                                                  workers=1))
    two = prepare_dataset("image_folder", folder, tmp_path / "two", PrepareConfig(size=16,
                                                                                  workers=2))
    assert Path(one.manifest).read_bytes() == Path(two.manifest).read_bytes()


def test_interrupted_run_resumes_to_the_same_manifest(folder, tmp_path, monkeypatch):
    cfg = PrepareConfig(size=16, workers=1)
    clean = prepare_dataset("image_folder", folder, tmp_path / "clean", cfg)
    real = prep._process_item
    calls = {"n": 0}

    def crash_after_five(task):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt("simulated interruption")
        return real(task)

    monkeypatch.setattr(prep, "_process_item", crash_after_five)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("image_folder", folder, tmp_path / "out", cfg)
    root = tmp_path / "out" / "image_folder"
    assert not (root / "manifest.csv").exists() and not (root / ".prepared.json").exists()
    assert not any((root / s).exists() for s in ("train", "val", "test"))  # never "done"
    monkeypatch.setattr(prep, "_process_item", real)
    resumed = prepare_dataset("image_folder", folder, tmp_path / "out", cfg)
    assert resumed.reused == 5 and not resumed.skipped
    assert not list(root.glob(".*.tmp")) and not (root / prep.JOURNAL).exists()
    assert Path(resumed.manifest).read_bytes() == Path(clean.manifest).read_bytes()


def test_corrupt_file_is_quarantined_and_too_many_fail(folder, tmp_path):
    good = (folder / "0000.jpg").read_bytes()
    (folder / "0001.jpg").write_bytes(good[: len(good) // 3])  # truncated JPEG
    report = prepare_dataset("image_folder", folder, tmp_path / "out",
                             PrepareConfig(size=16, workers=1, max_bad_fraction=0.2))
    assert [q["item_id"] for q in report.quarantined] == ["0001"]
    assert "0001" not in Path(report.manifest).read_text()
    (folder / "0002.jpg").write_bytes(b"not a jpeg")
    (folder / "0003.jpg").write_bytes(b"")
    with pytest.raises(InputError, match=r"3 of 12 items .* 0001 .*0002 .*0003"):
        prepare_dataset("image_folder", folder, tmp_path / "out2",
                        PrepareConfig(size=16, workers=1, max_bad_fraction=0.2))


def test_wrong_layouts_say_expected_and_found(cifar_tar, tmp_path):
    with pytest.raises(DatasetLayoutError, match="expected cifar-10-python.tar.gz.*found.*"
                                                  "missing"):
        members = _cifar_members()
        del members["test_batch"]
        prepare_dataset("cifar10", _write_tar(tmp_path / "partial.tar.gz", members),
                        tmp_path / "o1", ONE)
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(cifar_tar.read_bytes()[:2000])
    with pytest.raises(DatasetLayoutError, match="truncated"):
        prepare_dataset("cifar10", truncated, tmp_path / "o2", ONE)
    members = _cifar_members()
    members["data_batch_2"] = _pickle({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(DatasetLayoutError, match=r"data_batch_2\[b'data'\] is uint8 \(2, 100\)"):
        prepare_dataset("cifar10", _write_tar(tmp_path / "shape.tar.gz", members),
                        tmp_path / "o3", ONE)
    (tmp_path / "empty" / "docs").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DatasetLayoutError, match="expected a folder of images.*found docs/, "
                                                  "notes.txt"):
        prepare_dataset("image_folder", tmp_path / "empty", tmp_path / "o4", ONE)


class _Payload:
    """Unpickling this calls ``pathlib.Path.touch`` on ``target``: what a hostile batch does."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_a_hostile_cifar_batch_is_refused_without_running(tmp_path):
    """The CIFAR reader unpickles only arrays and containers, never an arbitrary callable."""
    marker = tmp_path / "pwned"
    members = _cifar_members()
    members["data_batch_1"] = pickle.dumps({b"data": _Payload(marker), b"labels": []}, protocol=2)
    with pytest.raises(DatasetLayoutError, match=r"data_batch_1 is not a readable pickle "
                                                  r"\(refusing to load "):
        prepare_dataset("cifar10", _write_tar(tmp_path / "hostile.tar.gz", members),
                        tmp_path / "out", ONE)
    assert not marker.exists(), "the hostile batch ran code"


# -- Great Expectations on prepared manifests --------------------------------------------------


def _rewrite(manifest: Path, change) -> None:
    rows = _rows(manifest)
    change(rows)
    prep.write_prepared_manifest(rows, manifest)


def test_gx_accepts_prepared_and_rejects_broken_pair_and_bad_label(cifar_tar, tmp_path):
    from neuralmark.components.data.datasets import RecipeExpectations, get_recipe
    from neuralmark.integrations.validation import validate_prepared

    report = prepare_dataset("cifar10", cifar_tar, tmp_path / "out", ONE)
    manifest = Path(report.manifest)
    # the facts come from the recipe, through the report
    assert report.expectations == get_recipe("cifar10").expectations(
        prep.effective_config(get_recipe("cifar10"), ONE)).to_dict()
    assert report.expectations["label_range"] == [0, 9] and report.expectations["size"] == 32
    ok = validate_prepared(manifest, report.expectations)
    assert ok.success, ok.failed()

    _rewrite(manifest, lambda rows: rows[0].update(label="10"))
    bad = validate_prepared(manifest, report.expectations)
    assert bad.failed() == ["label_in_range"]

    # a paired layout: rows of domains A and B sharing a pair key; drop one B
    def as_pairs(rows):
        for i, r in enumerate(rows):
            r.update(label="", domain="AB"[i % 2], pair=f"p{i // 2}", group=f"p{i // 2}",
                     split="train")
        del rows[3]

    _rewrite(manifest, as_pairs)
    broken = validate_prepared(manifest, RecipeExpectations("pairs", ("A", "B"), size=32))
    assert broken.failed() == ["pair_complete"]
    detail = next(r for r in broken.results if r["expectation"] == "pair_complete")["details"]
    assert detail["unexpected_count"] == 1


def test_recipes_declare_their_validation_facts():
    from neuralmark.components.data.datasets import available_datasets, get_recipe

    facts = {name: get_recipe(name).expectations(
        prep.effective_config(get_recipe(name), PrepareConfig())) for name in available_datasets()}
    assert facts["cifar10"].label_range == (0, 9) and facts["cifar10"].size == 32
    assert facts["voc_derain"].paired and facts["voc_derain"].size == 400
    assert facts["chestxray8_debone"].paired and facts["chestxray8_debone"].size == 256
    assert facts["chestxray8_debone"].extra_values == {
        "target_kind": ("supplied", "classical-approximation")}
    assert not facts["mirflickr25k"].paired and facts["mirflickr25k"].label_range is None
    assert get_recipe("image_folder").expectations(PrepareConfig(size=24)).size == 24


def test_config_the_recipe_cannot_honour_is_named(cifar_tar, tmp_path):
    with pytest.raises(InputError, match=r"cifar10 keeps the publisher's 32×32 pixels; expected "
                                         r"size=32 or unset, found size=64"):
        prepare_dataset("cifar10", cifar_tar, tmp_path / "o", PrepareConfig(size=64, workers=1))
    with pytest.raises(InputError, match=r"voc_derain has no option\(s\) \['rain_hze'\]; "
                                         r"expected one of \['rain_haze', 'rain'\]"):
        prep.effective_config(prep.get_recipe("voc_derain"),
                              PrepareConfig(options={"rain_hze": True}))


# -- the pipeline -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Iterator[Path]:
    """An isolated ZenML project (``tests.isolation``)."""
    from tests.isolation import isolated_zenml_project

    with isolated_zenml_project(tmp_path_factory.mktemp("nm-prep-project")) as root:
        yield root


@pytest.mark.pipeline
def test_pipeline_prepares_validates_and_caches(project, cifar_tar):
    from neuralmark.pipelines.data_preparation import run_data_preparation

    config = {"workers": 1, "version_with_dvc": False}
    first = run_data_preparation("cifar10", cifar_tar, config=config, project_root=project)
    assert first["status"] == "completed" and not first["cached"]
    assert first["report"]["counts"]["test"] == {"image": CIFAR_N}
    assert (project / "data" / "cifar10" / "manifest.csv").is_file()
    html = Path(first["reports_dir"]) / "validation.html"
    assert "PASSED" in html.read_text()
    assert json.loads(html.with_name("validation.json").read_text())["success"] is True
    second = run_data_preparation("cifar10", cifar_tar, config=config, project_root=project)
    assert second["status"] == "completed" and second["cached"]


def test_cli_prepare_in_process(folder, tmp_path):
    from typer.testing import CliRunner

    from neuralmark.cli.app import app

    args = ["data", "prepare", "image_folder", "--source", str(folder), "--out",
            str(tmp_path / "out"), "--size", "16", "--limit", "6", "--no-pipeline"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "image_folder ready" in result.output and "6 items" in result.output
    missing = CliRunner().invoke(app, ["data", "prepare", "cifar10", "--source",
                                       str(tmp_path / "nope"), "--no-pipeline"])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_cli_option_pairs_are_parsed_and_bad_ones_named():
    from neuralmark.cli.data import parse_options

    assert parse_options(["targets=/x", "rain_haze=true", "b=False"]) == {
        "targets": "/x", "rain_haze": True, "b": False}
    with pytest.raises(InputError, match="not KEY=VALUE"):
        parse_options(["oops"])
