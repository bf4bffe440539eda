"""``scripts/visible_gan_seed_spread.py``: one seed run at micro size, and the reduction."""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location(
    "visible_gan_seed_spread", ROOT / "scripts" / "visible_gan_seed_spread.py")
spread = importlib.util.module_from_spec(spec)
spec.loader.exec_module(spread)

MICRO = {"working_size": 16, "detect_size": 32, "mark_resolution": 16, "w_width": 4,
         "v_width": 4, "d_width": 4, "classifier_width": 4, "classifier_steps": 2, "steps": 2,
         "batch_size": 4, "removal_steps": 2, "removal_curve_steps": [],
         "calibration_scores": 40}


def test_a_seed_run_scores_the_judged_figures_and_seeds_differ():
    g = torch.Generator().manual_seed(0)
    data = {"train": torch.rand(8, 3, 16, 16, generator=g),
            "train_labels": torch.arange(8) % 10,
            "val": torch.rand(4, 3, 16, 16, generator=g), "val_labels": torch.arange(4),
            "test": torch.rand(4, 3, 16, 16, generator=g), "test_labels": torch.arange(4)}
    runs = [spread.run_seed(seed, data, MICRO) for seed in (0, 1)]
    for seed, run in zip((0, 1), runs, strict=True):
        assert run["seed"] == seed and run["config"]["seed"] == seed
        assert run["config"]["utility_steps"] == 0  # F′ is not part of the judgement
        got = {(r["label"], r["metric"]) for r in run["rows"]}
        assert (set(spread.JUDGED) - set(spread.BASELINE_FIGURES)
                - set(spread.ACCURACY_FIGURES)) <= got
    left = [{(r["label"], r["metric"]): r["value"] for r in run["rows"]}[
        ("deepstamp", "removal_left")] for run in runs]
    assert left[0] != left[1]  # another seed, another W and V′


def test_summarize_gives_mean_and_t_interval_per_judged_figure(tmp_path):
    values = {0: 0.05, 1: 0.09, 2: 0.07}
    for seed, v in values.items():
        rows = [{"label": label, "metric": metric, "value": v + i, "seed": seed,
                 "stage": "tiny"} for i, (label, metric) in enumerate(spread.JUDGED)]
        (tmp_path / f"seed_{seed}.json").write_text(json.dumps(
            {"seed": seed, "config": {"steps": 300, "removal_steps": 2400}, "rows": rows,
             "seconds": 1.0}))
    judged = spread.summarize(tmp_path)
    first = judged[0]
    assert (first["label"], first["metric"]) == spread.JUDGED[0]
    assert first["mean"] == pytest.approx(0.07)
    half = 4.302653 * statistics.stdev(values.values()) / 3 ** 0.5  # t(0.975, 2 dof)
    assert first["ci_low"] == pytest.approx(0.07 - half, rel=1e-4)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["seeds"] == [0, 1, 2] and saved["recipe"]["removal_steps"] == 2400
    assert "| contrast_vs_static/deepstamp | 0.070 |" in (tmp_path / "summary.md").read_text()
    (tmp_path / "seed_1.json").unlink()
    (tmp_path / "seed_2.json").unlink()
    with pytest.raises(SystemExit, match="a spread needs two"):
        spread.summarize(tmp_path)


def test_skip_removal_trains_f_prime_only_and_pairs_the_accuracy_drop(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = {"train": torch.rand(8, 3, 16, 16, generator=g),
            "train_labels": torch.arange(8) % 10,
            "val": torch.rand(4, 3, 16, 16, generator=g), "val_labels": torch.arange(4),
            "test": torch.rand(4, 3, 16, 16, generator=g), "test_labels": torch.arange(4)}
    with pytest.raises(SystemExit, match="utility_steps > 0"):
        spread.run_seed(0, data, MICRO, removal=False)  # nothing left to measure
    costed = {**MICRO, "utility_steps": 2}
    runs = {name: spread.run_seed(0, data, {**costed, **sets}, removal=False)
            for name, sets in (("base", {}), ("lever", {"v_updates_per_step": 2}))}
    for name, run in runs.items():
        got = {(r["label"], r["metric"]): r["value"] for r in run["rows"]}
        assert run["stampers"] == [] and run["config"]["removal_steps"] == 0
        assert not any(m.startswith("removal") for _, m in got)  # no V′ trained
        assert set(spread.ACCURACY_FIGURES) <= set(got)
        (tmp_path / name).mkdir()
        (tmp_path / name / "seed_0.json").write_text(json.dumps(run))
        (tmp_path / name / "seed_1.json").write_text(json.dumps(
            {**run, "seed": 1, "rows": [{**r, "seed": 1} for r in run["rows"]]}))
    clean = {n: {(r["label"], r["metric"]): r["value"] for r in run["rows"]}[
        ("clean", "accuracy")] for n, run in runs.items()}
    assert clean["base"] == clean["lever"]  # F′ on clean data does not depend on W
    drop = {n: {(r["label"], r["metric"]): r["value"] for r in run["rows"]}[
        ("deepstamp", "accuracy_drop")] for n, run in runs.items()}
    judged = {(s["label"], s["metric"]): s
              for s in spread.summarize(tmp_path / "lever", tmp_path / "base")}
    assert judged[("deepstamp", "accuracy_drop_vs_baseline")]["values"] == pytest.approx(
        [drop["lever"] - drop["base"]] * 2)
    assert ("deepstamp", "removal_left_vs_baseline") not in judged
    other = json.loads((tmp_path / "base" / "seed_1.json").read_text())
    other["config"]["utility_steps"] = 3
    (tmp_path / "base" / "seed_1.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="F′ settings"):
        spread.summarize(tmp_path / "lever", tmp_path / "base")


def test_accuracy_study_and_card_section_read_the_paired_interval(tmp_path, monkeypatch):
    spec_study = importlib.util.spec_from_file_location(
        "visible_gan_accuracy_study", ROOT / "scripts" / "visible_gan_accuracy_study.py")
    study = importlib.util.module_from_spec(spec_study)
    spec_study.loader.exec_module(study)
    from neuralmark.components.methods.visible_gan.card import accuracy_section

    assert accuracy_section(tmp_path) == ""  # nothing measured, no section
    drops = {"base": [0.04, 0.05, 0.03], "lever": [0.03, 0.05, 0.01]}
    for name, values in drops.items():
        for seed, v in enumerate(values):
            rows = [("clean", "accuracy", 0.6), ("deepstamp", "accuracy_drop", v),
                    ("static", "accuracy_drop", 0.04), ("deepstamp", "contrast", 0.13)]
            (tmp_path / name).mkdir(exist_ok=True)
            (tmp_path / name / f"seed_{seed}.json").write_text(json.dumps(
                {"seed": seed, "seconds": 1.0, "config": {
                    "utility_steps": 400, "removal_steps": 0,
                    **({"v_updates_per_step": 2} if name == "lever" else {})},
                 "rows": [{"label": a, "metric": b, "value": x, "seed": seed, "stage": "tiny"}
                          for a, b, x in rows]}))
    spread.summarize(tmp_path / "base")
    args = ["--recipe", f"base={tmp_path / 'base'}", "--recipe", f"lever={tmp_path / 'lever'}",
            "--command", "cmd", "--note", "note", "--rule", "the rule",
            "--out", str(tmp_path / "accuracy_study.json")]
    monkeypatch.setattr("sys.argv", ["x", *args])
    spread.summarize(tmp_path / "lever")  # not paired with the baseline: refused
    with pytest.raises(SystemExit, match="--baseline"):
        study.main()
    spread.summarize(tmp_path / "lever", tmp_path / "base")
    study.main()
    text = accuracy_section(tmp_path)
    half = 4.302653 * statistics.stdev([-0.01, 0.0, -0.02]) / 3 ** 0.5
    assert (f"lever − base, DeepStamp's drop, paired by seed (the same clean F′): -1.00 "
            f"[{100 * (-0.01 - half):+.2f}, {100 * (-0.01 + half):+.2f}] points over 3 seeds"
            in text)
    assert "includes 0: no difference established" in text and "Rule (stated before" in text
    assert "AlexNet 3.15 (static 4.24)" in text  # the seed's own drops, for comparison
    assert "√(p(1−p)/300) = 2.83 points" in text  # at p = 0.6
    assert "| base (`none`) | 0, 1, 2 | 60.00 | +4.00 [" in text
