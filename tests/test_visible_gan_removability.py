"""visible_gan: what part of a mark an attacker can learn to invert (``removability``), V's
training schedule in GMAN, and the seed-spread script's cheaper two-marking judgement."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from neuralmark.components.methods import build
from neuralmark.components.methods.registry import method_class
from neuralmark.components.methods.visible_gan.baselines import OpacityVariation, StaticBlend
from neuralmark.components.methods.visible_gan.mark import box_mask, builtin_mark
from neuralmark.components.methods.visible_gan.removability import (
    image_dependent_share,
    left_error_map,
    local_linear_left,
    variation_map,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[1]


def _images(n: int, seed: int) -> torch.Tensor:
    """Smooth random images (a 4² grid up-sampled to 16²): pixels a filter can predict."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(16, 16), mode="bilinear")


def test_a_static_blend_is_inverted_by_a_local_linear_filter_and_opacity_is_not():
    mark = builtin_mark(16)
    x_tr, x_te = _images(200, 0), _images(60, 1)
    static = StaticBlend(mark, 0.5, 0.5)
    opacity = OpacityVariation(mark, 0.5, 0.5, 0.2, 1.0)
    g = torch.Generator().manual_seed(2)
    left_static = local_linear_left({"clean": x_tr, "marked": static(x_tr)},
                                    {"clean": x_te, "marked": static(x_te)}, 0.5)
    left_opacity = local_linear_left({"clean": x_tr, "marked": opacity(x_tr, g)},
                                     {"clean": x_te, "marked": opacity(x_te, g)}, 0.5)
    assert left_static < 0.01          # an affine map per pixel: exactly invertible
    assert left_opacity > 10 * left_static  # a random opacity per image is not


def test_image_dependent_share_is_zero_for_one_pattern_and_high_for_noise():
    x = _images(30, 3)
    box = box_mask(16, 16, 0.5)
    pattern = 0.1 * torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    assert image_dependent_share(x, x + pattern, box) == pytest.approx(0.0, abs=1e-6)
    noise = 0.1 * torch.rand(30, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    assert image_dependent_share(x, x + noise - 0.05, box) > 0.9
    assert image_dependent_share(x, x, box) == 0.0
    assert variation_map(x, x + pattern).abs().max() < 1e-10
    assert variation_map(x, x + noise).shape == (1, 1, 16, 16)
    err = left_error_map(x + 0.1, x)
    assert err.shape == (1, 1, 16, 16) and float(err.mean()) == pytest.approx(0.03)


def test_v_warm_up_trains_v_alone_before_gman():
    smoke = method_class("visible_gan").smoke_config
    data = {"train": torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))}
    runs = {}
    for warm in (0, 3):
        torch.manual_seed(0)
        m = build("visible_gan", {**smoke, "steps": 0, "removal_warmup_steps": warm,
                                  "utility_steps": 0, "removal_steps": 0})
        w0 = [p.detach().clone() for p in m.W.parameters()]
        v0 = [p.detach().clone() for p in m.V.parameters()]
        m.fit(data)
        assert all(torch.equal(a, b) for a, b in zip(w0, m.W.parameters(), strict=True))
        runs[warm] = any(not torch.equal(a, b) for a, b in zip(v0, m.V.parameters(),
                                                                strict=True))
    assert runs == {0: False, 3: True}  # V moved only when it had warm-up steps


def test_extra_v_updates_per_gman_step_change_v_only():
    smoke = method_class("visible_gan").smoke_config
    data = {"train": torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))}
    params = {}
    for k in (1, 3):
        torch.manual_seed(0)
        m = build("visible_gan", {**smoke, "steps": 1, "v_updates_per_step": k,
                                  "utility_steps": 0, "removal_steps": 0})
        m.fit(data)
        params[k] = (torch.cat([p.flatten() for p in m.W.parameters()]),
                     torch.cat([p.flatten() for p in m.V.parameters()]))
    assert torch.equal(params[1][0], params[3][0])  # W's one step saw the same V
    assert not torch.equal(params[1][1], params[3][1])


def test_seed_spread_with_two_markings_gives_the_judgement_and_diagnostics():
    spec = importlib.util.spec_from_file_location(
        "visible_gan_seed_spread", ROOT / "scripts" / "visible_gan_seed_spread.py")
    spread = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(spread)
    g = torch.Generator().manual_seed(0)
    data = {"train": torch.rand(8, 3, 16, 16, generator=g),
            "train_labels": torch.arange(8) % 10,
            "val": torch.rand(4, 3, 16, 16, generator=g), "val_labels": torch.arange(4),
            "test": torch.rand(4, 3, 16, 16, generator=g), "test_labels": torch.arange(4)}
    micro = {"working_size": 16, "detect_size": 32, "mark_resolution": 16, "w_width": 4,
             "v_width": 4, "d_width": 4, "classifier_width": 4, "classifier_steps": 2,
             "steps": 2, "batch_size": 4, "removal_steps": 3, "removal_curve_steps": [],
             "calibration_scores": 40}
    run = spread.run_seed(0, data, micro, ["static", "deepstamp"])
    got = {(r["label"], r["metric"]): r["value"] for r in run["rows"]}
    assert run["stampers"] == ["static", "deepstamp"] and run["config"]["removal_steps"] == 3
    assert got[("deepstamp", "removal_left_vs_static")] == pytest.approx(
        got[("deepstamp", "removal_left")] - got[("static", "removal_left")])
    assert ("opacity", "removal_left") not in got  # no V′ for the markings left out
    assert 0.0 <= got[("deepstamp", "image_dependent_share")] <= 1.0
    assert {("static", "local_linear_left"), ("deepstamp", "local_linear_left"),
            ("deepstamp", "contrast_vs_static")} <= set(got)
    assert ("deepstamp", "accuracy_drop") not in got  # no F′ unless asked for
    costed = spread.run_seed(0, data, {**micro, "utility_steps": 2}, ["deepstamp"])
    assert set(spread.ACCURACY_FIGURES) <= {(r["label"], r["metric"]) for r in costed["rows"]}
    full = spread.run_seed(0, data, micro)  # every marking, through fit: same V′ for these
    same = {(r["label"], r["metric"]): r["value"] for r in full["rows"]}
    assert same[("static", "removal_left")] == pytest.approx(got[("static", "removal_left")])
    assert same[("deepstamp", "removal_left")] == pytest.approx(
        got[("deepstamp", "removal_left")])


def _seed_file(folder: Path, seed: int, values: dict, **config) -> None:
    rows = [{"label": label, "metric": metric, "value": v, "seed": seed, "stage": "tiny"}
            for (label, metric), v in values.items()]
    cfg = {"v_width": 16, "batch_size": 32, "removal_lr": 1e-3, "removal_steps": 2400,
           "seed": seed, **config}
    folder.mkdir(exist_ok=True)
    (folder / f"seed_{seed}.json").write_text(json.dumps(
        {"seed": seed, "config": cfg, "rows": rows, "seconds": 1.0}))


def test_summarize_against_a_baseline_pairs_seeds_and_borrows_its_static_v_prime(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "visible_gan_seed_spread", ROOT / "scripts" / "visible_gan_seed_spread.py")
    spread = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(spread)
    base, lever = tmp_path / "base", tmp_path / "lever"
    for seed, (static, ds_base, ds_lever) in enumerate([(0.05, 0.08, 0.10), (0.04, 0.06, 0.09)]):
        _seed_file(base, seed, {("static", "removal_left"): static,
                                ("deepstamp", "removal_left"): ds_base,
                                ("deepstamp", "contrast"): 0.13})
        _seed_file(lever, seed, {("deepstamp", "removal_left"): ds_lever,
                                 ("deepstamp", "contrast"): 0.14}, lambda_v=4.0)
    judged = {(s["label"], s["metric"]): s for s in spread.summarize(lever, base)}
    assert judged[("deepstamp", "removal_left_vs_baseline")]["values"] == pytest.approx(
        [0.02, 0.03])
    assert judged[("deepstamp", "removal_left_vs_static")]["values"] == pytest.approx(
        [0.05, 0.05])
    assert judged[("deepstamp", "contrast_vs_baseline")]["mean"] == pytest.approx(0.01)
    assert json.loads((lever / "summary.json").read_text())["recipe"]["lambda_v"] == 4.0
    _seed_file(lever, 1, {("deepstamp", "removal_left"): 0.09,
                          ("deepstamp", "contrast"): 0.14}, removal_steps=600)
    with pytest.raises(SystemExit, match="V′ settings"):
        spread.summarize(lever, base)
    (base / "seed_1.json").unlink()
    with pytest.raises(SystemExit, match="no baseline run for seed 1"):
        spread.summarize(lever, base)


def test_card_study_section_reads_the_intervals(tmp_path):
    from neuralmark.components.methods.visible_gan import card

    assert card.study_section(tmp_path, {}) == ""  # nothing measured, no section

    def fig(label, metric, values, lo, hi):
        return {"label": label, "metric": metric, "values": values, "n_seeds": len(values),
                "mean": sum(values) / len(values), "ci_low": lo, "ci_high": hi}

    lever = {"name": "V schedule", "sets": ["removal_warmup_steps=1200"], "summary": {
        "seeds": [0, 1, 2], "judged": [
            fig("deepstamp", "removal_left_vs_static", [0.02, 0.03, 0.04], 0.005, 0.055),
            fig("deepstamp", "removal_left_vs_baseline", [-0.01, 0.01, 0.0], -0.03, 0.03)]}}
    (tmp_path / "removal_study.json").write_text(json.dumps({
        "removability": {"command": "python scripts/visible_gan_removability.py",
                         "local_linear_left": {"static": 0.001, "deepstamp": 0.07},
                         "image_dependent_share": 0.5, "corr_variation_vs_linear_left": 0.8},
        "levers": [lever], "levers_note": "3 seeds each", "per_w": [{}, {}, {}],
        "corr_with_removal_left_vs_static": {"local_linear_left": 0.6,
                                             "image_dependent_share": 0.4}}))
    text = card.study_section(tmp_path, {"fit_report": {"removal": {
        "static": {"removal_left": 0.047}}}})
    assert "| static | 0.001 | 0.047 |" in text and "| deepstamp | 0.070 | – |" in text
    assert "share left − static +0.030 [+0.005, +0.055] over 3 seeds, interval above 0" in text
    assert "− baseline W +0.000 [-0.030, +0.030] over 3 seeds, interval includes 0" in text
    assert "Over the 3 W's" in text and "0.60" in text
