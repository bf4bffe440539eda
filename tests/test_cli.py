"""The ``neuralmark`` CLI: embed → verify round trips, three-way exit codes, honest errors,
and a start that imports only what each command needs.

The CLI is driven with a tiny additive method (``tests/doubles.py``) registered here, so
these tests do not depend on any real method's weights.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from neuralmark.cli.app import app
from neuralmark.components.methods.base import WatermarkKey
from neuralmark.components.methods.registry import build, register
from tests.doubles import ADDITIVE_KEY, AdditiveConfig, AdditiveTestMethod

ROOT = Path(__file__).resolve().parents[1]

# -- a tiny, real watermark for the CLI to drive (tests/doubles.py) --------------------------

register(ADDITIVE_KEY)(AdditiveTestMethod)


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


@pytest.fixture(scope="module")
def evaluated(photo, tmp_path_factory) -> dict[str, Any]:
    """A real robustness report of the test method (2 crops, 3 attacks) and its files on disk.

    Returns ``metrics`` (every summary metric), ``decision`` (the gate's, with floors
    the test method cannot meet, so it carries reasons) and ``reports_dir``.
    """
    from neuralmark.components.evaluation import embed_all, rows_to_csv
    from neuralmark.components.gate import GatePolicy, decide
    from neuralmark.components.robustness import EvaluationSettings, robustness_report

    wm = build(ADDITIVE_KEY)
    image = torch.from_numpy(photo.copy()).permute(2, 0, 1).float() / 255
    clean = torch.stack([image[:, :64, :64], image[:, 200:264, 200:264]])  # 2 3 64 64
    settings = EvaluationSettings(limit=2, fpr_keys=5, attacks=["none", "jpeg", "noise"])
    report = robustness_report(wm, clean, embed_all(wm, clean, settings.key()), settings)
    folder = tmp_path_factory.mktemp("reports") / "training_pipeline-run"
    rows_to_csv(report.rows, folder / "robustness.csv")
    (folder / "report.md").write_text(report.to_markdown())
    policy = GatePolicy(min_psnr=20.0, min_bit_accuracy={},
                        min_detection_rate={"mean_attacked": 0.99}, max_fpr=0.0)
    decision = decide(report.summary, None, policy)
    return {"metrics": dict(report.summary), "reports_dir": str(folder),
            "decision": {"promote": decision.promote, "reasons": decision.reasons,
                         "notes": decision.notes}}


def _plain(output: str) -> str:
    """Printed text without table borders, whitespace collapsed (rich may wrap long cells)."""
    return " ".join(output.translate({ord(c): " " for c in "│┃┌┐└┘─━┬┴├┤┼"}).split())


def _training_result(evaluated: dict[str, Any], version: str) -> dict[str, Any]:
    """What ``run_training`` returns (pipelines/training.py), around a real report."""
    return {"run": f"training_pipeline-{version}", "status": "completed",
            "model_name": "neuralmark-_test_additive", "metrics": evaluated["metrics"],
            "summary": {k: v for k, v in evaluated["metrics"].items() if "/" not in k},
            "decision": evaluated["decision"], "registered_version": version,
            "promoted": False, "champion_version": "1", "mlflow_run_id": "r",
            "reports_dir": evaluated["reports_dir"],
            "mlflow_ui": "mlflow ui --backend-store-uri sqlite:////p/mlflow.db --port 5055"}


def test_train_prints_a_headline_not_every_metric(runner, monkeypatch, tmp_path, evaluated):
    calls = []

    def run_training(method, profile, config_path, callbacks=None):
        calls.append((method, profile, config_path))
        return _training_result(evaluated, "3")

    module = types.ModuleType("neuralmark.pipelines.training")
    module.run_training = run_training
    monkeypatch.setitem(sys.modules, "neuralmark.pipelines.training", module)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("strength: 0.01\n")
    result = runner.invoke(app, ["train", "_test_additive", "--profile", "full",
                                 "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    assert calls == [("_test_additive", "full", cfg)]
    text = _plain(result.output)
    metrics = evaluated["metrics"]
    assert f"PSNR {metrics['psnr']:.2f} dB" in text
    assert f"detection rate, clean {metrics['detection_rate/none']:.3f}" in text
    assert "detection rate, attacked mean" in text and "worst" in text
    assert metrics["fpr"] == 0  # alpha 1e-6: none of the clean trials is flagged
    assert "false-positive rate 0 (95% CI 0–" in text
    assert f"{int(metrics['fpr_trials'])} clean trials" in text
    assert "gate refused" in text and evaluated["decision"]["reasons"][0] in text
    assert "registered neuralmark-_test_additive version 3" in text
    assert "champion version 1 (kept" in text
    assert f"Full report: {evaluated['reports_dir']}" in text
    assert "report.md" in text and "robustness.csv" in text
    assert "mlflow ui --backend-store-uri sqlite:////p/mlflow.db --port 5055" in result.output
    assert "p_value_median" not in text and "unreadable_rate" not in text  # in the report only

    result = runner.invoke(app, ["train", "no_such_method"])
    assert result.exit_code == 2 and "unknown method 'no_such_method'" in result.output
    result = runner.invoke(app, ["train", "_test_additive", "--profile", "huge"])
    assert result.exit_code == 2


def test_headline_stays_short_whatever_the_number_of_metrics(evaluated):
    from neuralmark.cli.headline import gate_rows, quality_rows, registry_rows

    result = _training_result(evaluated, "2")
    rows = (quality_rows(result["metrics"]) + gate_rows(result["decision"])
            + registry_rows(result))
    assert len(result["metrics"]) > 20 >= len(rows)
    reasons = [f"check {i} failed" for i in range(9)]
    rows = gate_rows({"promote": False, "reasons": reasons, "notes": []})
    assert len(rows) == 1 + 4 + 1 and rows[-1][1] == "… 5 more in the report"


def test_a_tiny_false_positive_bound_keeps_its_digits():
    """The demo's FPR: 0 of 16000 clean trials; the interval's top is ~2e-4, not '0.000'."""
    from neuralmark.cli.headline import quality_rows
    from neuralmark.components.stats import clopper_pearson

    low, high = clopper_pearson(0, 16000)
    rows = dict(quality_rows({"fpr": 0.0, "fpr_ci_low": low, "fpr_ci_high": high,
                              "fpr_trials": 16000.0}))
    assert rows["false-positive rate"] == f"0  (95% CI 0–{high:.2g}, 16000 clean trials)"
    assert f"{high:.2g}" != "0"


def test_train_variants_prints_one_row_per_variant(runner, monkeypatch, evaluated, tmp_path):
    def run_variants(method, profile, variants, callbacks=None):
        assert (method, profile, variants) == ("_test_additive", "tiny", ["a", "b"])
        return {"variants": {v: _training_result(evaluated, str(i + 1))
                             for i, v in enumerate(variants)},
                "tables": "| huge | comparison |", "reports_dir": str(tmp_path),
                "mlflow_run_id": "r", "mlflow_ui": "mlflow ui --port 5055"}

    module = types.ModuleType("neuralmark.pipelines.training")
    module.run_variants = run_variants
    monkeypatch.setitem(sys.modules, "neuralmark.pipelines.training", module)
    result = runner.invoke(app, ["train", "_test_additive", "--variant", "a", "--variant", "b"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert sum(line.startswith("│ a ") for line in lines) == 1
    assert sum(line.startswith("│ b ") for line in lines) == 1
    assert f"{evaluated['metrics']['psnr']:.2f} dB" in result.output
    assert "refused" in result.output and "huge" not in result.output
    assert f"Full report: {tmp_path}" in result.output


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


def test_evaluate_prints_the_headline(runner, monkeypatch, bundle, evaluated):
    def run_evaluation(method, bundle_dir, profile, callbacks=None):
        assert (method, bundle_dir, profile) == ("_test_additive", bundle, "tiny")
        return {"bundle": str(bundle_dir), "images": 2, "summary": evaluated["metrics"],
                "metrics": evaluated["metrics"], "gate": evaluated["decision"],
                "csv": str(Path(evaluated["reports_dir"]) / "robustness.csv"),
                "reports_dir": evaluated["reports_dir"]}

    module = types.ModuleType("neuralmark.pipelines.evaluation")
    module.run_evaluation = run_evaluation
    monkeypatch.setitem(sys.modules, "neuralmark.pipelines.evaluation", module)
    result = runner.invoke(app, ["evaluate", "--method", "_test_additive", "--bundle",
                                 str(bundle)])
    assert result.exit_code == 0, result.output
    text = _plain(result.output)
    assert f"PSNR {evaluated['metrics']['psnr']:.2f} dB" in text
    assert "test images 2" in text and "gate refused" in text
    assert f"Full report: {evaluated['reports_dir']}" in text

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


# -- what each command imports (fresh interpreters; measured figures: scripts/benchmark_cli.py) --

MLOPS = ("zenml", "mlflow", "dvc", "great_expectations", "kubernetes")

#: runs ``neuralmark`` commands in one fresh interpreter, then records the exit codes and
#: every module loaded; argv: commands (JSON), where to write the record, register the
#: test method or not
_RUN_COMMANDS = """
import json, sys
commands, record, additive = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
if additive:
    from neuralmark.components.methods.registry import register
    from tests.doubles import ADDITIVE_KEY, AdditiveTestMethod
    register(ADDITIVE_KEY)(AdditiveTestMethod)
from neuralmark.cli.app import main
codes = []
for argv in commands:
    sys.argv = ["neuralmark", *argv]
    try:
        main()
        codes.append(0)
    except SystemExit as done:
        codes.append(done.code or 0)
with open(record, "w") as fh:
    json.dump({"codes": codes, "modules": sorted(sys.modules)}, fh)
"""


def _run_commands(tmp_path: Path, commands: list[list[str]],
                  additive: bool = False) -> tuple[list[int], set[str]]:
    """Exit codes of ``commands`` run in one new interpreter, and the modules it loaded."""
    record = tmp_path / "record.json"
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
           **{k: v for k, v in os.environ.items() if k.startswith(
               ("ZENML_", "MLFLOW_", "DVC_", "HOME", "NEURALMARK_"))}}
    done = subprocess.run([sys.executable, "-c", _RUN_COMMANDS, json.dumps(commands),
                           str(record), "1" if additive else "0"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0 and record.is_file(), done.stderr[-3000:]
    data = json.loads(record.read_text())
    return data["codes"], set(data["modules"])


def _top(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in names)


def test_help_imports_no_torch_no_components_no_mlops(tmp_path):
    commands = [["--help"], ["verify", "--help"], ["embed", "--help"], ["train", "--help"],
                ["protect", "--help"], ["data", "prepare", "--help"]]
    codes, modules = _run_commands(tmp_path, commands)
    assert codes == [0] * len(commands)
    assert not _top(modules, ("torch", "torchvision", "numpy", "PIL", *MLOPS))
    assert not [m for m in modules if m.startswith("neuralmark.components")]


def test_content_commands_import_no_mlops_package(tmp_path, photo, bundle):
    image = tmp_path / "photo.png"
    Image.fromarray(photo[:64, :64]).save(image)
    output_mark = build("output_mark", type(build("output_mark")).smoke_config)
    om_bundle = output_mark.to_bundle(tmp_path / "om")
    commands = [
        ["list"],
        ["embed", str(image), "marked.png", "--key", "k", "--bundle", str(bundle)],
        ["verify", "marked.png", "--key", "k", "--bundle", str(bundle), "--json"],
        ["verify", str(image), "--key", "k"],  # the shipped pgd_signer; not marked
        ["stamp", str(image), "stamped.png"],  # the shipped anti_forward
        ["scan", "stamped.png", str(image), "--no-smoothing"],
        ["extract", str(image), "--key", "k", "--bundle", str(om_bundle)],
    ]
    codes, modules = _run_commands(tmp_path, commands, additive=True)
    assert codes[:4] == [0, 0, 0, 1] and codes[4] == 0, codes
    assert codes[5] in (0, 1) and codes[6] in (0, 1), codes
    assert (tmp_path / "stamped.png").is_file() and (tmp_path / "photo.logo.png").is_file()
    assert not _top(modules, MLOPS), "content commands must not load an MLOps package"


def test_verify_of_one_photo_imports_only_what_it_uses(tmp_path, photo):
    """One method's package; no torchmetrics, torchvision or kornia (plain verify needs none)."""
    image = tmp_path / "photo.png"
    Image.fromarray(photo[:64, :64]).save(image)
    codes, modules = _run_commands(tmp_path, [["verify", str(image), "--key", "k"]])
    assert codes == [1]  # an unmarked photo, the shipped pgd_signer
    assert "neuralmark.components.methods.pgd_signer" in modules
    own = "neuralmark.components.methods.pgd_signer"
    others = [m for m in modules if m.startswith("neuralmark.components.methods.")
              and m != own and not m.startswith(own + ".")  # the package and its modules
              and m.rsplit(".", 1)[1] not in ("base", "registry")]
    assert not others, f"verify with pgd_signer imported other methods: {others}"
    assert not _top(modules, ("torchmetrics", "torchvision", "kornia", *MLOPS))
