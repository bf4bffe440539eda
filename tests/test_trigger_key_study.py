"""trigger_key pipeline pieces without a stack: study numbers, policy, configs, host files.

Fast: synthetic tidy rows for the gate's summary (the numbers asserted follow from the
rows), the real gate (``components.gate.decide``) on them, the run settings of the three
YAMLs under both profiles, and host weights files (safetensors round trip, pickle and
truncated files refused).
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest
import torch

from neuralmark.components.errors import InputError
from neuralmark.components.gate import GatePolicy, decide
from neuralmark.components.methods import build
from neuralmark.components.methods.trigger_key import study
from neuralmark.components.methods.trigger_key.host_files import (
    load_host_file,
    read_state_dict,
    save_host_file,
)
from neuralmark.components.nets.restoration import build_host


def _rows(method: str, detected: dict[str, float], psnr: float = 28.0) -> list[dict]:
    out = []
    for label, det in detected.items():
        attack, _, strength = label.rpartition("_")
        attack = attack if label != "none" else "none"
        s = float(strength) if label not in ("none", "overwrite") else math.nan
        if label == "overwrite":
            attack = "overwrite"
        for metric, value in (("detected", det), ("psnr", psnr)):
            out.append({"method": method, "attack": attack, "strength": s, "label": label,
                        "metric": metric, "value": value})
    return out


OURS = {"none": 1.0, "prune_0.1": 1.0, "prune_0.2": 1.0, "prune_0.5": 0.0, "prune_0.9": 1.0,
        "fine_tune_original_1": 1.0, "overwrite": 0.0}


class _Marked:
    """What gate_summary reads from the marked method."""

    metrics = {"fidelity_cost_db": 0.4}
    calibration = {"fpr": 0.01, "fpr_ci_high": 0.03, "eta": 7e-3, "marked_fpr": 0.125}


FIDELITY = [{"host": h, "metric": m, "value": v} for h, m, v in (
    ("unmarked", "psnr", 28.8), ("unmarked", "ssim", 0.80), ("marked", "psnr", 28.3),
    ("marked", "ssim", 0.79))]
UNIQUE = [{"host": h, "key": k, "d": 1e-3, "detected": det} for h, k, det in (
    ("marked:owner", "owner", True), ("marked:key1", "key1", True),
    ("marked:key1", "owner", False), ("unmarked", "owner", False))]


def test_gate_summary_counts_what_the_rows_say() -> None:
    rows = _rows("trigger_key", OURS) + _rows("trigger_key_backdoor",
                                             {"none": 1.0, "prune_0.1": 0.0, "overwrite": 0.0})
    s = study.gate_summary(rows, FIDELITY, UNIQUE, _Marked())
    assert s["psnr"] == 28.3 and s["ssim"] == 0.79 and s["psnr_unmarked"] == 28.8
    assert s["fidelity_cost_db"] == 0.4 and s["fpr"] == 0.01 and s["eta"] == 7e-3
    assert s["fpr_marked_hosts"] == 0.125
    assert s["detected/none"] == 1.0 and s["detected/overwrite"] == 0.0
    # 4 of the 6 attacked labels verified
    assert s["detection_rate_mean_attacked"] == pytest.approx(4 / 6)
    assert s["trigger_key_backdoor/detection_rate_mean_attacked"] == 0.0
    # 0.5 fails, so 0.9 surviving does not count: survived up to 0.2
    assert s["prune_survived_max"] == 0.2
    assert s["uniqueness_false_matches"] == 0.0
    s2 = study.gate_summary(rows, FIDELITY, [*UNIQUE, {"host": "independent", "key": "owner",
                                                        "d": 0.0, "detected": True}], _Marked())
    assert s2["uniqueness_false_matches"] == 1.0


def test_prune_survived_max_is_zero_when_the_smallest_rate_fails() -> None:
    assert study.prune_survived_max(_rows("trigger_key", {"prune_0.1": 0.0,
                                                          "prune_0.2": 1.0})) == 0.0
    assert study.prune_survived_max([]) == 0.0


def test_the_gate_lists_every_failed_trigger_key_check() -> None:
    rows = _rows("trigger_key", OURS)
    summary = study.gate_summary(rows, FIDELITY, UNIQUE, _Marked())
    policy = GatePolicy(min_psnr=20, min_bit_accuracy={}, max_fpr=0.05,
                        primary_metric="detection_rate_mean_attacked",
                        min_metric={"detected/none": 1, "detected/overwrite": 1,
                                    "prune_survived_max": 0.3},
                        max_metric={"fidelity_cost_db": 0.3, "uniqueness_false_matches": 0})
    d = decide(summary, None, policy)
    assert not d.promote
    text = " ".join(d.reasons)
    assert "detected/overwrite" in text and "prune_survived_max" in text
    assert "fidelity_cost_db" in text and len(d.reasons) == 3
    ok = GatePolicy(**{**policy.model_dump(), "min_metric": {"detected/none": 1},
                       "max_metric": {"fidelity_cost_db": 0.5}})
    assert decide(summary, None, ok).promote


def test_unattacked_rows_are_kept_once_per_method_and_metric() -> None:
    a = _rows("trigger_key", {"none": 1.0, "prune_0.1": 1.0})
    b = _rows("trigger_key", {"none": 1.0, "overwrite": 0.0})
    merged = study.merge_attack_rows([a, b])
    assert [r["label"] for r in merged].count("none") == 2  # detected + psnr
    assert len(merged) == len(a) + len(b) - 2


def test_policy_labels_must_be_attacks_of_the_suite() -> None:
    suite = [("prune", [0.1]), ("overwrite", [None])]
    study.check_policy_labels(["detected/none", "detected/prune_0.1", "fpr"], suite)
    with pytest.raises(InputError, match="fine_tune_original_100"):
        study.check_policy_labels(["detected/fine_tune_original_100"], suite)


def test_run_settings_per_yaml_and_profile() -> None:
    from neuralmark.pipelines.trigger_key import _run_config, resolve_trigger_key

    want = {"trigger_key.yaml": ("neuralmark-trigger_key-dncnn-denoise", 5, 17, 40),
            "trigger_key_red.yaml": ("neuralmark-trigger_key-red-denoise", 6, 30, 40),
            "trigger_key_sr.yaml": ("neuralmark-trigger_key-vdsr-sr2", 5, 20, 20)}
    root = Path(__file__).resolve().parents[1] / "configs"
    for name, (model, tiny_depth, full_depth, trigger) in want.items():
        params = _run_config("tiny", root / name, None)["parameters"]
        assert _run_config("tiny", root / name, None)["model"]["name"] == model
        args = [params.get(k) for k in ("config", "data", "evaluation", "policy", "study")]
        tiny, st, got = resolve_trigger_key("tiny", *args)
        full, _, _ = resolve_trigger_key("full", *args)
        assert got == model and tiny.config.depth == tiny_depth
        assert full.config.depth == full_depth and full.config.trigger_side == trigger
        assert full.config.calibration_keys == 1000 and full.config.width == 64
        assert len(st.suite_for("full")) == 6 and st.capacity_for("full")[-1] == 600
    with pytest.raises(InputError, match="study.other_keys"):
        resolve_trigger_key("tiny", study={"other_keys": -1})
    with pytest.raises(InputError, match="unknown model attack"):
        resolve_trigger_key("tiny", study={"suite": [["melt", [1]]]})
    with pytest.raises(InputError, match="not an attack label"):
        resolve_trigger_key("tiny", policy={"min_metric": {"detected/prune_0.4": 1}})


def _run_config_with(tmp_path: Path, config: dict, study_: dict) -> Path:
    """``configs/trigger_key.yaml`` with ``config`` / ``study`` merged over its parameters."""
    import yaml

    root = Path(__file__).resolve().parents[1] / "configs"
    run = yaml.safe_load((root / "trigger_key.yaml").read_text())
    run["parameters"]["config"].update(config)
    run["parameters"]["study"].update(study_)
    path = tmp_path / "trigger_key.yaml"
    path.write_text(yaml.safe_dump(run))
    return path


@pytest.mark.parametrize("config, study_, where, counts", [
    # the owner's: 3 hosts (marked, independent, λ = 0) × 10 + P 0 → 30 trials
    ({"calibration_keys": 20, "calibration_marked_keys": 0}, {},
     "step embed_owner_mark", "would have 30 trials"),
    # the owner's reaches (3 × 20 + 8·5 = 100), each other key's does not: 2 × 20 + 40 = 80
    ({"calibration_keys": 40}, {}, "step uniqueness", "config.calibration_keys 40"),
    ({}, {"uniqueness_keys": 40}, "step uniqueness", "study.uniqueness_keys 40"),
    # each trigger size: its marked and λ = 0 hosts, no pool: 2 × 30 = 60
    ({}, {"capacity_keys": 60}, "step capacity", "Raise study.capacity_keys (to 100"),
])
def test_calibrations_that_cannot_reach_alpha_are_refused_when_the_run_config_loads(
        tmp_path, config, study_, where, counts) -> None:
    """Issue #13 (tk16): the trial counts of the pipeline's three calibrations, checked
    against alpha 0.01 (99 trials) by the real run-config loader, before any training."""
    from neuralmark.pipelines.trigger_key import _run_config, resolve_trigger_key

    params = _run_config("tiny", _run_config_with(tmp_path, config, study_), None)["parameters"]
    args = [params.get(k) for k in ("config", "data", "evaluation", "policy", "study")]
    with pytest.raises(InputError) as err:
        resolve_trigger_key("tiny", *args)
    msg = " ".join(str(err.value).split())
    for part in (where, counts, "alpha 0.01 needs at least 99",
                 "refused before anything is trained"):
        assert part in msg, (part, msg)
    # what the message says to raise is enough
    if "capacity" in where:
        resolve_trigger_key("tiny", *args[:4], {**args[4], "capacity_keys": 100})
    # without the step that calibrates too little, the same settings resolve
    if where == "step uniqueness":
        resolve_trigger_key("tiny", *args[:4], {**args[4], "other_keys": 0})


def test_the_pipeline_entry_and_the_cli_stop_before_training(tmp_path, monkeypatch) -> None:
    """``run_trigger_key`` / ``neuralmark mark-model --config`` with a capacity study whose
    calibration cannot reach alpha: an ``InputError`` (CLI: exit 2, the message) and no
    step runs (no host trained, no ZenML / MLflow / data folder made in the project)."""
    from typer.testing import CliRunner

    from neuralmark.cli.app import app
    from neuralmark.pipelines.trigger_key import run_trigger_key

    def trained(*_args, **_kwargs):
        raise AssertionError("a host was trained")

    monkeypatch.setattr(study, "train_unmarked", trained)
    bad = _run_config_with(tmp_path, {}, {"capacity_keys": 40})
    project = tmp_path / "project"
    project.mkdir()
    with pytest.raises(InputError, match=r"step capacity\): the calibration null would have 40 "):
        run_trigger_key("tiny", bad, project_root=project)
    assert list(project.iterdir()) == []
    res = CliRunner().invoke(app, ["mark-model", "--config", str(bad)])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "study.capacity_keys 40" in text, res.output


def test_the_training_pipeline_refuses_trigger_key() -> None:
    from neuralmark.pipelines.training import run_training

    with pytest.raises(InputError, match="mark-model"):
        run_training("trigger_key", "tiny")


def test_host_files_round_trip_and_refuse_pickles_and_wrong_shapes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    host = build_host("dncnn", 1, 3, 4).eval()
    path = save_host_file(host, tmp_path / "h.safetensors")
    back = load_host_file(path, "dncnn", 1, 3, 4)
    x = torch.rand(1, 1, 16, 16)
    assert torch.equal(back(x), host(x))
    with pytest.raises(InputError, match="does not hold a dncnn host of depth 5"):
        load_host_file(path, "dncnn", 1, 5, 4)
    with pytest.raises(InputError, match="does not hold a red host"):
        load_host_file(path, "red", 1, 4, 4)
    torch.save(host.state_dict(), tmp_path / "h.pt")
    (tmp_path / "h.pt").rename(tmp_path / "disguised.safetensors")  # a zip with data.pkl
    (tmp_path / "raw.safetensors").write_bytes(pickle.dumps({"a": 1}))
    for name in ("disguised.safetensors", "raw.safetensors"):
        with pytest.raises(InputError, match="pickle checkpoint: refused"):
            read_state_dict(tmp_path / name)
    (tmp_path / "w.pth").write_bytes(b"not even read")
    with pytest.raises(InputError, match="pickle checkpoint: refused"):
        read_state_dict(tmp_path / "w.pth")
    (tmp_path / "cut.safetensors").write_bytes(path.read_bytes()[:50])
    with pytest.raises(InputError, match="not a readable safetensors"):
        read_state_dict(tmp_path / "cut.safetensors")
    with pytest.raises(InputError, match="no host weights file"):
        read_state_dict(tmp_path / "missing.safetensors")
    with pytest.raises(InputError, match=".safetensors only"):
        save_host_file(host, tmp_path / "h.pt")


def test_baselines_are_built_from_the_same_config() -> None:
    m = build("trigger_key", {"depth": 3, "width": 4})
    with pytest.raises(InputError, match="unknown baseline"):
        study.mark_baseline(m, "adi", None, "nowhere")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="expected a trigger_key method"):
        study.as_trigger_key(build("trigger_key_backdoor", {"depth": 3, "width": 4}))


def test_capacity_embeds_other_trigger_sizes_into_a_marked_host() -> None:
    """A marked method's S has its own trigger's shape; capacity starts from the unmarked
    host for every size (this failed with a KeyStore size mismatch before)."""
    from neuralmark.components.methods.base import WatermarkKey
    from neuralmark.components.methods.trigger_key.analysis import capacity_rows
    from neuralmark.components.methods.trigger_key.host_files import sample_task_images

    torch.manual_seed(0)
    m = build("trigger_key", {"depth": 3, "width": 4, "host_steps": 2, "embed_steps": 3,
                              "n_patches": 16, "patch_size": 16, "trigger_size": 16,
                              "batch_size": 4, "check_every": 1})
    m.fit(sample_task_images())
    key = WatermarkKey("owner")
    m.embed_model(m.unmarked, key)
    rows = capacity_rows(m, key, [12, 20], n_keys=100)  # 2 hosts × 50: alpha 0.01's 99
    assert {r["trigger_size"] for r in rows} == {12, 20}
    assert {"fidelity_cost_db", "eta", "detected_marked"} <= {r["metric"] for r in rows}
    assert all(math.isfinite(r["value"]) for r in rows if r["metric"] == "eta")
    assert tuple(m.s.shape) == (1, 1, 16, 16) and m.owns(key)  # the method is not changed
