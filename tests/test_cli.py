"""The ``neuralmark`` CLI: embed → verify round trips, three-way exit codes, honest errors.

The CLI is driven with a tiny additive method registered here, so these tests
do not depend on any real method's weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from neuralmark.cli.app import app
from neuralmark.components.methods.base import (
    MethodConfig,
    Status,
    Verdict,
    WatermarkKey,
    WatermarkMethod,
)
from neuralmark.components.methods.registry import build, register
from tests.doubles import NothingToTrain

# -- a tiny, real watermark for the CLI to drive ----------------------------------------------


class AdditiveConfig(MethodConfig):
    """Config of the test method."""

    strength: float = 2 / 255
    alpha: float = 1e-6


class _Gain(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))


@register("_test_additive")
class AdditiveTestMethod(NothingToTrain, WatermarkMethod):
    """Adds a keyed ±strength pattern; verify correlates the high-pass residual with it.

    Under "no mark", the statistic ``z = Σ r·p / sqrt(Σ r²)`` of the residual ``r``
    against an independent ±1 pattern ``p`` is standard normal, so
    ``p_value = P(N(0,1) >= z)`` is a real one-sided p-value.
    """

    Config = AdditiveConfig

    def __init__(self, config: AdditiveConfig) -> None:
        super().__init__(config)
        self.gain = _Gain()

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"gain": self.gain}

    @staticmethod
    def _pattern(key: WatermarkKey, shape: torch.Size) -> torch.Tensor:
        digest = hashlib.sha256(f"{key.secret}\x00{key.message}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        return torch.randint(0, 2, tuple(shape), generator=gen).float() * 2 - 1

    def embed(self, images: torch.Tensor, key: WatermarkKey) -> torch.Tensor:
        pattern = self._pattern(key, images.shape[1:]).to(images)
        step = self.config.strength * self.gain.scale.detach()
        return (images + step * pattern).clamp(0, 1)

    def verify(self, images: torch.Tensor, key: WatermarkKey) -> list[Verdict]:
        pattern = self._pattern(key, images.shape[1:]).to(images).double()
        smooth = F.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)
        verdicts = []
        for r in (images - smooth).double():
            z = float((r * pattern).sum() / (r.pow(2).sum().sqrt() + 1e-12))
            p = 0.5 * math.erfc(z / math.sqrt(2))
            detected = p <= self.config.alpha
            verdicts.append(Verdict(
                detected=detected, score=z, p_value=p,
                status=Status.DETECTED if detected else Status.NOT_DETECTED,
                reason="" if detected else f"correlation z={z:.2f} is what chance gives",
                payload=key.message if detected else None,
            ))
        return verdicts


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return build("_test_additive").to_bundle(tmp_path_factory.mktemp("b") / "additive")


@pytest.fixture()
def photo_file(tmp_path, photo) -> Path:
    path = tmp_path / "astronaut.png"
    Image.fromarray(photo).save(path)
    return path


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def _args(bundle: Path, *rest: str) -> list[str]:
    return [*rest, "--method", "_test_additive", "--bundle", str(bundle)]


def _embed(runner, bundle, src, dst, key="s3cret", message="7"):
    return runner.invoke(app, _args(bundle, "embed", str(src), str(dst), "--key", key,
                                    "--message", message))


# -- embed / verify ---------------------------------------------------------------------------


def test_list_shows_the_test_method(runner):
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    line = next(row for row in result.output.splitlines() if "_test_additive" in row)
    assert "content" in line and "none" in line  # no shipped weights for it


def test_embed_then_verify_round_trip(runner, bundle, photo_file, tmp_path):
    out = tmp_path / "marked.png"
    result = _embed(runner, bundle, photo_file, out)
    assert result.exit_code == 0, result.output
    assert "PSNR" in result.output and out.is_file()
    psnr = float(result.output.split("PSNR")[1].split("dB")[0])
    assert 40 < psnr < 45  # ±2/255 on every pixel: 20·log10(255/2) ≈ 42 dB
    assert Image.open(out).size == (512, 512)

    result = runner.invoke(app, _args(bundle, "verify", str(out), "--key", "s3cret",
                                      "--message", "7"))
    assert result.exit_code == 0, result.output
    assert "detected" in result.output and "not detected" not in result.output
    assert "payload 7" in result.output
    assert "p-value < 1e-300" in result.output  # an underflowed 0.0 is not shown as certainty

    # the original photo carries no mark
    result = runner.invoke(app, _args(bundle, "verify", str(photo_file), "--key", "s3cret",
                                      "--message", "7"))
    assert result.exit_code == 1, result.output


def test_wrong_key_is_not_detected_with_p_value_and_no_payload(runner, bundle, photo_file,
                                                                tmp_path):
    out = tmp_path / "marked.png"
    assert _embed(runner, bundle, photo_file, out).exit_code == 0
    result = runner.invoke(app, _args(bundle, "verify", str(out), "--key", "other",
                                      "--message", "7"))
    assert result.exit_code == 1, result.output
    assert "not detected" in result.output
    p_value = float(result.output.split("p-value")[1].split()[0])
    assert 1e-6 < p_value <= 1
    assert "payload" not in result.output


def test_json_output_parses(runner, bundle, photo_file, tmp_path):
    out = tmp_path / "marked.png"
    assert _embed(runner, bundle, photo_file, out).exit_code == 0
    good = runner.invoke(app, _args(bundle, "verify", str(out), "--key", "s3cret",
                                    "--message", "7", "--json"))
    assert good.exit_code == 0, good.output
    record = json.loads(good.stdout)
    assert record["path"] == str(out) and record["status"] == "detected"
    assert record["detected"] is True and record["payload"] == 7
    assert record["p_value"] < 1e-6

    bad = runner.invoke(app, _args(bundle, "verify", str(out), "--key", "nope", "--json"))
    assert bad.exit_code == 1
    record = json.loads(bad.stdout)
    assert record["status"] == "not_detected" and record["payload"] is None
    assert 0 < record["p_value"] <= 1


def test_corrupt_input_exits_2_naming_the_file(runner, bundle, photo_file, tmp_path):
    data = photo_file.read_bytes()
    broken = tmp_path / "broken.png"
    broken.write_bytes(data[: len(data) // 3])
    result = runner.invoke(app, _args(bundle, "verify", str(broken), "--key", "s3cret"))
    assert result.exit_code == 2
    assert "broken.png" in result.output and "unreadable" in result.output
    assert "truncated" in result.output

    as_json = runner.invoke(app, _args(bundle, "verify", str(broken), "--key", "s3cret",
                                       "--json"))
    assert as_json.exit_code == 2
    record = json.loads(as_json.stdout)
    assert record["status"] == "unreadable" and record["p_value"] is None
    assert "broken.png" in record["reason"]

    out = tmp_path / "never.png"
    result = _embed(runner, bundle, broken, out)
    assert result.exit_code == 2
    assert "broken.png" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_text_file_as_input(runner, bundle, tmp_path):
    fake = tmp_path / "x.txt"
    fake.write_text("hello")
    result = runner.invoke(app, _args(bundle, "verify", str(fake), "--key", "s3cret"))
    assert result.exit_code == 2
    assert "x.txt is not an image file PIL can read" in result.output


def test_missing_and_empty_key(runner, bundle, photo_file, tmp_path, monkeypatch):
    monkeypatch.delenv("NEURALMARK_KEY", raising=False)
    result = runner.invoke(app, _args(bundle, "verify", str(photo_file)))
    assert result.exit_code != 0
    assert "--key" in result.output and "Missing option" in result.output

    result = runner.invoke(app, _args(bundle, "embed", str(photo_file), str(tmp_path / "o.png"),
                                      "--key", "  "))
    assert result.exit_code == 2
    assert "--key is empty" in result.output
    assert not (tmp_path / "o.png").exists()


def test_key_from_environment(runner, bundle, photo_file, tmp_path, monkeypatch):
    out = tmp_path / "m.png"
    monkeypatch.setenv("NEURALMARK_KEY", "from-env")
    result = runner.invoke(app, _args(bundle, "embed", str(photo_file), str(out)))
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, _args(bundle, "verify", str(out)))
    assert result.exit_code == 0, result.output


def test_failed_write_leaves_no_partial_output(runner, bundle, photo_file, tmp_path,
                                               monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    existing = out / "kept.png"
    existing.write_bytes(b"previous version")
    real_save = Image.Image.save

    def exploding_save(self, fp, *args, **kwargs):
        real_save(self, fp, *args, **kwargs)
        raise OSError("No space left on device (simulated)")

    monkeypatch.setattr(Image.Image, "save", exploding_save)
    for target in (out / "new.png", existing):
        result = _embed(runner, bundle, photo_file, target)
        assert result.exit_code == 2, result.output
        assert "No space left on device" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in out.iterdir()) == ["kept.png"]
    assert existing.read_bytes() == b"previous version"


def test_unknown_output_extension_fails_before_embedding(runner, bundle, photo_file, tmp_path):
    result = _embed(runner, bundle, photo_file, tmp_path / "out.xyz")
    assert result.exit_code == 2
    assert "unknown output extension .xyz" in result.output
    assert list(tmp_path.iterdir()) == [photo_file]


def test_jpeg_output_notes_the_recompression(runner, bundle, photo_file, tmp_path):
    result = _embed(runner, bundle, photo_file, tmp_path / "m.jpg")
    assert result.exit_code == 0, result.output
    assert "this is itself an attack on the mark" in result.output


def test_bundle_method_mismatch_and_missing_shipped_weights(runner, bundle, photo_file):
    result = runner.invoke(app, ["verify", str(photo_file), "--key", "k", "--bundle",
                                 str(bundle), "--method", "pgd_signer"])
    assert result.exit_code == 2
    assert "holds a _test_additive bundle, not pgd_signer" in result.output
    result = runner.invoke(app, ["verify", str(photo_file), "--key", "k",
                                 "--method", "_test_additive"])
    assert result.exit_code == 2
    assert "no shipped weights for _test_additive" in result.output


def test_folders_embed_and_verify_with_documented_exit_codes(runner, bundle, photo, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i, (y, x) in enumerate([(0, 0), (200, 200)]):
        Image.fromarray(photo[y:y + 160, x:x + 160]).save(src / f"p{i}.png")
    (src / "readme.txt").write_text("not an image")
    dst = tmp_path / "out"
    result = runner.invoke(app, _args(bundle, "embed", str(src), str(dst), "--key", "k"))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in dst.iterdir()) == ["p0.png", "p1.png"]

    verify = _args(bundle, "verify", str(dst), "--key", "k", "--json")
    result = runner.invoke(app, verify)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(r["path"]).name for r in records] == ["p0.png", "p1.png"]
    assert all(r["status"] == "detected" for r in records)

    shutil.copy(src / "p0.png", dst / "p2_unmarked.png")
    assert runner.invoke(app, verify).exit_code == 1  # some not detected
    (dst / "p3_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    result = runner.invoke(app, verify)
    assert result.exit_code == 2  # any unreadable
    statuses = [json.loads(line)["status"] for line in result.stdout.splitlines()]
    assert statuses == ["detected", "detected", "not_detected", "unreadable"]
    assert "0 if every image is detected" in runner.invoke(app, ["verify", "--help"]).output


# -- lazily imported pipelines ----------------------------------------------------------------


def test_train_reports_a_missing_pipeline(runner, monkeypatch):
    # the import raises ImportError
    monkeypatch.setitem(sys.modules, "neuralmark.pipelines.training", None)
    result = runner.invoke(app, ["train", "_test_additive", "--profile", "tiny"])
    assert result.exit_code == 2
    assert "training is not available" in result.output
    assert "neuralmark.pipelines.training.run_training" in result.output


def test_train_calls_run_training_and_prints_metrics(runner, monkeypatch, tmp_path):
    calls = []

    def run_training(method, profile, config_path):
        calls.append((method, profile, config_path))
        return {"bit_accuracy": 0.987, "psnr": 41.25, "run": {"id": "abc"}}

    module = types.ModuleType("neuralmark.pipelines.training")
    module.run_training = run_training
    monkeypatch.setitem(sys.modules, "neuralmark.pipelines.training", module)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("strength: 0.01\n")
    result = runner.invoke(app, ["train", "_test_additive", "--profile", "full",
                                 "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    assert calls == [("_test_additive", "full", cfg)]
    assert "bit_accuracy" in result.output and "0.987" in result.output
    assert "run.id" in result.output

    result = runner.invoke(app, ["train", "no_such_method"])
    assert result.exit_code == 2 and "unknown method 'no_such_method'" in result.output
    result = runner.invoke(app, ["train", "_test_additive", "--profile", "huge"])
    assert result.exit_code == 2


def test_pydantic_errors_are_one_red_line(runner, monkeypatch):
    def run_training(method, profile, config_path):
        AdditiveConfig.model_validate({"method": method, "strenght": 0.1})

    module = types.ModuleType("neuralmark.pipelines.training")
    module.run_training = run_training
    monkeypatch.setitem(sys.modules, "neuralmark.pipelines.training", module)
    result = runner.invoke(app, ["train", "_test_additive"])
    assert result.exit_code == 2
    assert "strenght" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_evaluate_prints_the_metric_table(runner, monkeypatch, bundle):
    def run_evaluation(method, bundle_dir, profile):
        assert (method, bundle_dir, profile) == ("_test_additive", bundle, "tiny")
        return {"rows": [{"attack": "jpeg", "strength": 50, "metric": "bit_accuracy",
                          "value": 0.91}], "psnr": 44.0}

    module = types.ModuleType("neuralmark.pipelines.evaluation")
    module.run_evaluation = run_evaluation
    monkeypatch.setitem(sys.modules, "neuralmark.pipelines.evaluation", module)
    result = runner.invoke(app, ["evaluate", "--method", "_test_additive", "--bundle",
                                 str(bundle)])
    assert result.exit_code == 0, result.output
    assert "jpeg" in result.output and "0.91" in result.output and "44" in result.output

    monkeypatch.setitem(sys.modules, "neuralmark.pipelines.evaluation", None)
    result = runner.invoke(app, ["evaluate", "--method", "_test_additive"])
    assert result.exit_code == 2 and "evaluation is not available" in result.output


def test_data_sample_drives_the_builder_with_progress(runner, monkeypatch, tmp_path):
    progress_seen = []

    class SampleDataConfig:
        pass

    def build_sample_dataset(root, config, progress=None):
        assert isinstance(config, SampleDataConfig)
        for i in range(3):
            progress(i + 1, 3)
            progress_seen.append(i + 1)
        root.mkdir(parents=True)
        return root

    module = types.ModuleType("neuralmark.components.data.sample")
    module.build_sample_dataset = build_sample_dataset
    module.SampleDataConfig = SampleDataConfig
    monkeypatch.setitem(sys.modules, "neuralmark.components.data.sample", module)
    root = tmp_path / "sample"
    result = runner.invoke(app, ["data", "sample", "--root", str(root)])
    assert result.exit_code == 0, result.output
    assert progress_seen == [1, 2, 3] and root.is_dir()
    assert "sample dataset ready" in result.output


def test_test_method_p_value_is_calibrated_on_clean_images(photo):
    """The driver method's p-values on unmarked inputs are roughly uniform (honest)."""
    wm = build("_test_additive")
    x = torch.from_numpy(np.ascontiguousarray(photo[:256, :256])).permute(2, 0, 1)[None] / 255
    ps = [wm.verify(x.float(), WatermarkKey(f"k{i}"))[0].p_value for i in range(40)]
    assert all(0 < p <= 1 for p in ps)
    assert 0.25 < float(np.mean(ps)) < 0.75


def test_shipped_bundle_is_listed_and_used_by_default(runner, bundle, photo_file, tmp_path,
                                                      monkeypatch):
    import neuralmark.components.methods.registry as registry

    pretrained = tmp_path / "pkg" / "components" / "pretrained"
    shutil.copytree(bundle, pretrained / "_test_additive")
    monkeypatch.setattr(registry, "PRETRAINED_DIR", pretrained)
    listing = runner.invoke(app, ["list"])
    line = next(row for row in listing.output.splitlines() if "_test_additive" in row)
    assert "yes (components/pretrained/_test_additive)" in line

    out = tmp_path / "m.png"
    result = runner.invoke(app, ["embed", str(photo_file), str(out), "--key", "k",
                                 "--method", "_test_additive"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["verify", str(out), "--key", "k", "--method", "_test_additive"])
    assert result.exit_code == 0 and "detected" in result.output
