"""visible_gan (DeepStamp, seed 003): W's output, gradients through F / V / D, baselines,
the calibrated detector, marks, bundles, the fit sequence and its evaluation rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuralmark.components.errors import InputError
from neuralmark.components.gate import GatePolicy, decide
from neuralmark.components.methods import build, load_bundle
from neuralmark.components.methods.registry import method_class
from neuralmark.components.methods.visible_gan.baselines import (
    Displacement,
    OpacityVariation,
    StaticBlend,
)
from neuralmark.components.methods.visible_gan.evaluation import (
    STAMPERS,
    removal_curve,
    removal_reading,
    remove_with_v,
    seed_table_markdown,
)
from neuralmark.components.methods.visible_gan.losses import (
    contrast,
    removal_loss,
    visibility_loss,
)
from neuralmark.components.methods.visible_gan.mark import (
    builtin_mark,
    feathered_support,
    mark_box,
    mark_from_array,
    place_mark,
)
from neuralmark.components.methods.visible_gan.method import default_null_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMOKE = method_class("visible_gan").smoke_config


def smoke(**changes):
    torch.manual_seed(0)
    return build("visible_gan", {**SMOKE, **changes})


@pytest.fixture(scope="module")
def null_images() -> torch.Tensor:
    return default_null_images(64, count=48, seed=3)


@pytest.fixture(scope="module")
def calibrated(null_images):
    """An untrained W (close to the static mark) with a detector calibrated on clean images."""
    m = smoke(detect_size=64, mark_resolution=32, calibration_scores=2000, fpr=0.01)
    m.calibrate(null_images, torch.Generator().manual_seed(0), source="test null")
    return m


def test_w_output_shapes_ranges_and_confinement():
    m = smoke()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    canvas = m.canvas(3, 32, 32)
    w = m.synthesize(x, canvas).detach()
    assert w.shape == (3, 4, 32, 32) and w.dtype == torch.float32
    assert float(w.min()) >= 0.0 and float(w.max()) <= 1.0
    assert float((w - canvas).abs().max()) <= m.config.max_delta + 1e-6
    top, left, side = mark_box(32, 32, m.config.mark_scale)
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[top:top + side, left:left + side] = False
    assert torch.equal(w[..., outside], canvas[..., outside])  # W only reshapes the mark
    # nor the transparent part of its square: nothing changes off the feathered support
    off = feathered_support(canvas[:, 3:], 1) == 0
    assert off[:, 0, top:top + side, left:left + side].any()
    assert torch.equal(w.masked_select(off), canvas.masked_select(off))
    marked = m.stamp_working(x)[0].detach()
    assert marked.shape == x.shape and 0.0 <= float(marked.min()) <= float(marked.max()) <= 1.0


def test_embed_any_size_changes_only_the_mark_square(photo_batch):
    m = smoke()
    out = m.embed(photo_batch)
    assert out.shape == photo_batch.shape
    top, left, side = mark_box(96, 128, m.config.mark_scale)
    changed = (out - photo_batch).abs().amax(dim=(0, 1)) > 0
    assert changed[top:top + side, left:left + side].any()
    changed[top:top + side, left:left + side] = False
    assert not changed.any()


def test_feathered_support_dilates_then_fades():
    alpha = torch.zeros(1, 1, 9, 9)
    alpha[0, 0, 4, 4] = 1.0
    sup = feathered_support(alpha, 1)[0, 0]
    assert sup[4, 4] == 1.0 and 0 < sup[4, 5] < 1 and 0 < sup[4, 6] < sup[4, 5]
    assert sup[4, 7] == 0 and sup[0, 0] == 0


def test_removal_loss_is_the_share_of_the_mark_v_removes():
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(2, 3, 8, 8, generator=g) * 0.5
    mark = torch.rand(2, 3, 8, 8, generator=g) * 0.2
    assert removal_loss(clean + mark, clean + mark, clean).item() == 0.0      # nothing removed
    assert removal_loss(clean, clean + mark, clean).item() == pytest.approx(1.0)
    assert removal_loss(clean + 2 * mark, clean + mark, clean).item() == 0.0  # worse: 0
    quarter = removal_loss(clean + mark / 2, clean + mark, clean).item()
    assert quarter == pytest.approx(0.75)
    # scale-free: a mark twice as loud, V removing the same share, scores the same
    assert removal_loss(clean + mark, clean + 2 * mark, clean).item() == pytest.approx(0.75)


def test_visibility_loss_is_a_hinge_on_contrast_relative_to_the_static_blend():
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(3, 3, 8, 8, generator=g) * 0.5
    static = clean + 0.3
    support = torch.zeros(1, 1, 8, 8)
    support[..., 2:6, 2:6] = 1
    assert contrast(static, clean, support) == pytest.approx(torch.full((3,), 0.3), abs=1e-6)
    assert visibility_loss(static, static, clean, support, 0.9).item() == 0.0
    assert visibility_loss(clean + 0.6, static, clean, support, 0.9).item() == 0.0  # louder
    faded = (clean + 0.15).requires_grad_()  # half the static blend's contrast
    loss = visibility_loss(faded, static, clean, support, 0.9)
    assert loss.item() == pytest.approx(0.4, abs=1e-5)
    loss.backward()
    assert float(faded.grad[..., 2:6, 2:6].abs().sum()) > 0
    assert float(faded.grad[..., :2, :].abs().sum()) == 0  # only the mark's pixels count


def test_visibility_term_enters_w_loss_with_its_weight(photo_batch):
    work = torch.nn.functional.interpolate(photo_batch, size=(16, 16), mode="bilinear")
    m = smoke(visibility_floor=2.0)  # an untrained W sits at the static blend: ratio ≈ 1
    terms = m.loss_terms(work)
    assert terms["vis"].item() == pytest.approx(1.0, abs=0.05)
    terms["vis"].backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in m.W.parameters())
    off = smoke(visibility_floor=2.0, lambda_visibility=0.0).loss_terms(work)
    on = smoke(visibility_floor=2.0, lambda_visibility=3.0).loss_terms(work)
    assert (on["w"] - off["w"]).item() == pytest.approx(3 * on["vis"].item(), rel=1e-4)


@pytest.mark.parametrize("term", ["f", "v", "d"])
def test_gradient_reaches_w_through_each_adversary(term, photo_batch):
    m = smoke(v_width=16)
    work = torch.nn.functional.interpolate(photo_batch, size=(16, 16), mode="bilinear")
    if term == "v":  # ℒ_v is 0 until V removes part of the mark: let V learn a little first
        opt = torch.optim.Adam(m.V.parameters(), lr=3e-3)
        for _ in range(100):
            attack = m.loss_terms(work)["v_attack"]
            opt.zero_grad()
            attack.backward()
            opt.step()
        m.W.zero_grad(set_to_none=True)
    loss = m.loss_terms(work)[term]
    assert loss.item() > 0
    loss.backward()
    grads = [p.grad for p in m.W.parameters()]
    assert all(g is not None and float(g.abs().sum()) > 0 for g in grads), term
    assert all(p.grad is None for p in m.F.parameters())  # F stays frozen


def test_adversaries_train_on_their_own_losses(photo_batch):
    m = smoke()
    work = torch.nn.functional.interpolate(photo_batch, size=(16, 16), mode="bilinear")
    terms = m.loss_terms(work)
    (terms["v_attack"] + terms["d_disc"]).backward()
    assert all(p.grad is None for p in m.W.parameters())  # they see a detached w′
    assert all(float(p.grad.abs().sum()) > 0 for p in m.V.parameters())
    assert all(float(p.grad.abs().sum()) > 0 for p in m.D.parameters())


def test_baselines_as_specified():
    mark = builtin_mark(16)
    x = torch.rand(6, 3, 40, 40, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(0)
    static = StaticBlend(mark, 0.5, 0.5)(x, g)
    canvas = place_mark(mark, 40, 40, 0.5)
    expected = (x + 0.5 * canvas[:, 3:] * (canvas[:, :3] - x)).clamp(0, 1)
    assert torch.allclose(static, expected)
    # opacity: the mark's change scaled by u ∈ [low, high], one u per image
    opaque = OpacityVariation(mark, 0.5, 0.5, 0.2, 0.4)(x, g)
    ratio = (opaque - x).abs().sum(dim=(1, 2, 3)) / (static - x).abs().sum(dim=(1, 2, 3))
    assert ((ratio > 0.19) & (ratio < 0.41)).all() and ratio.std() > 0
    # displacement: the static mark, moved; no move at fraction 0
    assert torch.equal(Displacement(mark, 0.5, 0.5, 0.0)(x, g), static)
    moved = Displacement(mark, 0.5, 0.5, 0.2)(x, g)
    assert not torch.equal(moved, static)
    assert torch.allclose((moved - x).abs().sum(dim=(1, 2, 3)),
                          (static - x).abs().sum(dim=(1, 2, 3)), rtol=0.5)
    names = [s.name for s in (StaticBlend(mark, 0.5, 0.5), OpacityVariation(mark, 0.5, 0.5),
                              Displacement(mark, 0.5, 0.5))]
    assert names == ["static", "opacity", "displacement"]


def test_verify_detects_marked_and_not_clean_at_the_stated_level(calibrated, photo_batch):
    m = calibrated
    assert m.calibration["n_scores"] >= 2000 and m.calibration["threshold_statistic"] is not None
    for clean in (photo_batch, default_null_images(64, count=8, seed=99)):
        for v in m.verify(m.embed(clean)):
            assert v.detected and v.p_value <= m.config.fpr, v.reason
        verdicts = m.verify(clean)
        assert not any(v.detected for v in verdicts), [v.reason for v in verdicts]
        assert all(v.p_value > m.config.fpr for v in verdicts)
    # every baseline's mark is the same logo: the detector finds it too
    g = torch.Generator().manual_seed(0)
    for name, stamper in m.stampers().items():
        assert all(v.detected for v in m.verify(stamper(photo_batch, g))), name


def test_half_size_images_are_verified_not_refused(calibrated, null_images):
    """resize 0.5 of a 32² image: 16², the smallest side verify takes; smaller is refused."""
    half = torch.nn.functional.interpolate
    clean = half(null_images[:8], size=(32, 32), mode="area")
    small_marked = half(calibrated.embed(clean), size=(16, 16), mode="area")
    assert all(v.detected for v in calibrated.verify(small_marked))
    small_clean = half(null_images[8:], size=(16, 16), mode="area")
    assert not any(v.detected for v in calibrated.verify(small_clean))
    with pytest.raises(InputError, match="at least 16 px"):
        calibrated.verify(torch.rand(1, 3, 10, 10))


def test_flat_images_are_unreadable_and_the_key_is_ignored(calibrated):
    from neuralmark.components.methods.base import Status, WatermarkKey

    flat = torch.full((1, 3, 64, 64), 0.4)
    assert calibrated.verify(flat)[0].status is Status.UNREADABLE
    x = default_null_images(64, count=2, seed=5)
    a = calibrated.verify(x, WatermarkKey("one"))
    b = calibrated.verify(x, WatermarkKey("two"))
    assert [(v.detected, v.p_value) for v in a] == [(v.detected, v.p_value) for v in b]


def test_mark_without_alpha_is_keyed_on_its_border_colour():
    rgb = np.full((20, 30, 3), 255, np.uint8)
    rgb[5:15, 10:20] = (200, 0, 0)
    mark, notes = mark_from_array(rgb, 16)
    assert mark.shape == (4, 16, 16)
    assert notes and "no alpha channel" in notes[0] and "(255, 255, 255)" in notes[0]
    assert float(mark[3].max()) == pytest.approx(1.0) and float(mark[3, 0, 0]) == 0.0
    with pytest.raises(InputError, match="one colour"):
        mark_from_array(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(InputError, match="fully transparent"):
        mark_from_array(np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(InputError, match="H×W×3"):
        mark_from_array(np.zeros((8, 8), np.uint8))


def test_bundle_round_trip_keeps_mark_and_calibration(calibrated, tmp_path, photo_batch):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[2:8, 2:8] = (0, 0, 255, 255)
    mark, _ = mark_from_array(rgba, 32)
    custom = calibrated.with_mark(mark, default_null_images(64, count=16, seed=1),
                                  notes=["blue square"])
    custom.to_bundle(tmp_path / "b")
    again = load_bundle(tmp_path / "b")
    assert torch.equal(again.rgba, custom.rgba) and not torch.equal(again.rgba,
                                                                    calibrated.rgba)
    assert again.calibration == custom.calibration and again.mark_notes == ["blue square"]
    marked = custom.embed(photo_batch)
    assert torch.equal(again.embed(photo_batch), marked)
    assert [v.p_value for v in again.verify(marked)] == [v.p_value for v in
                                                          custom.verify(marked)]


def test_old_bundle_with_a_removed_field_is_named_as_such(calibrated, tmp_path):
    import json

    calibrated.to_bundle(tmp_path / "b")
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    (tmp_path / "b" / "config.json").write_text(json.dumps({**cfg, "v_margin": 0.01}))
    with pytest.raises(InputError, match=r"old visible_gan bundle.*'v_margin'.*retrain"):
        load_bundle(tmp_path / "b")
    (tmp_path / "b" / "config.json").write_text(json.dumps({**cfg, "v_marginn": 0.01}))
    with pytest.raises(InputError, match=r"unknown visible_gan config field.*v_marginn"):
        load_bundle(tmp_path / "b")
    (tmp_path / "b" / "config.json").write_text(json.dumps({**cfg, "blend": 2.0}))
    with pytest.raises(InputError, match=r"config.json: invalid visible_gan config: blend"):
        load_bundle(tmp_path / "b")


def test_removal_curve_checkpoints_equal_shorter_runs():
    m = smoke(v_width=4, batch_size=4)
    g = torch.Generator().manual_seed(0)
    x_tr, x_va = torch.rand(8, 3, 16, 16, generator=g), torch.rand(4, 3, 16, 16, generator=g)
    seen = []
    rows = removal_curve(m, x_tr, x_va, [2, 5], torch.Generator().manual_seed(1),
                         torch.device("cpu"), ["static", "deepstamp"], on_row=seen.append)
    assert [(r["stamper"], r["steps"]) for r in rows] == [
        ("static", 2), ("static", 5), ("deepstamp", 2), ("deepstamp", 5)]
    assert seen == rows
    short = removal_curve(m, x_tr, x_va, [2], torch.Generator().manual_seed(1),
                          torch.device("cpu"), ["static"])
    assert short[0]["removal_gain"] == rows[0]["removal_gain"]  # step 2 of 5 = a 2-step V′
    assert rows[1]["removal_gain"] != rows[0]["removal_gain"]
    with pytest.raises(ValueError, match="positive"):
        removal_curve(m, x_tr, x_va, [0], g, torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown stampers"):
        removal_curve(m, x_tr, x_va, [1], g, torch.device("cpu"), ["statik"])


def test_fit_records_v_prime_learning_curve_at_the_configured_steps():
    m = smoke(removal_steps=4, removal_curve_steps=(2,), utility_steps=0)
    g = torch.Generator().manual_seed(0)
    m.fit({"train": torch.rand(8, 3, 32, 32, generator=g),
           "val": torch.rand(4, 3, 32, 32, generator=g)})
    curve = m.fit_report["removal_curve"]
    assert [(r["stamper"], r["steps"]) for r in curve] == [
        (s, k) for s in STAMPERS for k in (2, 4)]
    for r in curve:
        if r["steps"] == 4:  # the last point is the table's V′
            assert r["removal_left"] == m.fit_report["removal"][r["stamper"]]["removal_left"]
    assert "| V′ steps | static | opacity | displacement | deepstamp |" in seed_table_markdown(
        {**m.fit_report, "accuracy": {"clean": 0.5}})
    with pytest.raises(InputError, match=r"removal_curve_steps \[4, 9\]"):
        smoke(removal_steps=4, removal_curve_steps=(2, 4, 9))


def test_remove_with_v_changes_only_the_centred_square_by_vs_change():
    m = smoke()
    x = torch.rand(2, 3, 40, 64, generator=torch.Generator().manual_seed(1))
    restored = remove_with_v(m, x)
    assert restored.shape == x.shape and 0 <= float(restored.min()) <= float(restored.max()) <= 1
    # the square is 40 wide, centred: columns 12..52; outside it nothing moves
    assert torch.equal(restored[..., :12], x[..., :12])
    assert torch.equal(restored[..., 52:], x[..., 52:])
    assert not torch.equal(restored[..., 12:52], x[..., 12:52])  # an untrained V moves pixels
    # at the working size V's output is taken as is (clamped to [0, 1])
    work = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(remove_with_v(m, work), m.V(work).clamp(0, 1), atol=1e-6)
    m.V = torch.nn.Identity()  # a V that removes nothing gives the marked image back
    assert torch.equal(remove_with_v(m, x), x)


def test_removal_reading_says_which_rows_show_nothing():
    def rem(left):
        return {"removal_left": left, "removal_gain": 1.0, "psnr_before": 20.0,
                "psnr_after": 21.0, "ssim_before": 0.9, "ssim_after": 0.9}

    report = {"removal_steps": 600,
              "removal": {"static": rem(0.27), "opacity": rem(0.998),
                          "displacement": rem(0.29), "deepstamp": rem(1.0)},
              "removal_vs": {"static": {"gain_difference": -5.9, "se": 0.1, "n": 300},
                             "opacity": {"gain_difference": 0.0, "se": 0.01, "n": 300},
                             "displacement": {"gain_difference": 0.1, "se": 0.1, "n": 300}},
              "contrast": {"static": 0.142, "deepstamp": 0.101}}
    text = removal_reading(report, in_training_removed=0.58)
    assert "left the opacity mark(s) in place" in text and "opacity 0.998" in text
    assert "1.000 of DeepStamp's mark (not removed)" in text
    assert "0.71× the static blend's 0.142: fainter" in text
    assert "do not show resistance" in text
    assert "harder to remove than static" in text
    assert "judged over training seeds" in text  # one run never stands for the recipe
    assert "no different from displacement" in text and "opacity (within" not in text
    assert "removed 58 %" in text
    report["removal"]["opacity"] = rem(0.4)
    report["contrast"]["deepstamp"] = 0.14
    text = removal_reading(report)
    assert "removed every baseline's mark" in text and "about as visible" in text
    assert "do not show resistance" not in text
    assert "removed 58" not in text
    assert removal_reading({"removal": {}}) == ""
    assert text in seed_table_markdown({**report, "accuracy": {"clean": 0.5}})
    assert text not in seed_table_markdown({**report, "accuracy": {"clean": 0.5}},
                                           reading=False)
    report["removal_vs"]["static"]["gain_difference"] = 0.0
    assert "judged over training seeds" not in removal_reading(report)

def test_fit_then_evaluation_rows_and_seed_table():
    m = smoke()
    g = torch.Generator().manual_seed(0)
    data = {"train": torch.rand(8, 3, 32, 32, generator=g),
            "val": torch.rand(4, 3, 64, 64, generator=g)}
    final = m.fit(data)
    assert final["steps_done"] == SMOKE["steps"]
    assert set(m.fit_report["accuracy"]) == {"clean", *STAMPERS}
    assert set(m.fit_report["removal"]) == set(STAMPERS)
    assert set(m.fit_report["removal_vs"]) == {"static", "opacity", "displacement"}
    assert m.fit_report["removal_vs"]["static"]["n"] == 16  # 4 val images × 4 rotations
    assert "psnr_after" in m.fit_report["removal_control"]
    rows = m.evaluation_rows(data["val"], m.embed(data["val"]))
    got = {(r["label"], r["metric"]) for r in rows}
    for name in STAMPERS:
        assert {(name, "accuracy_drop"), (name, "removal_gain"), (name, "removal_left"),
                (name, "contrast"), (name, "v_psnr")} <= got
    for base in ("static", "opacity", "displacement"):
        assert {("deepstamp", f"removal_gain_vs_{base}"),
                ("deepstamp", f"removal_gain_vs_{base}_se")} <= got
    assert ("deepstamp", "psnr_vs_static") in got and ("static", "psnr_vs_static") not in got
    assert ("deepstamp", "contrast_vs_static") in got
    assert ("static", "contrast_vs_static") not in got
    value = {(r["label"], r["metric"]): r["value"] for r in rows}
    assert value[("deepstamp", "contrast_vs_static")] == pytest.approx(
        value[("deepstamp", "contrast")] / value[("static", "contrast")])
    assert set(m.fit_report["contrast"]) == set(STAMPERS)
    rem = m.fit_report["removal"]
    for base in ("static", "opacity", "displacement"):
        assert value[("deepstamp", f"removal_left_vs_{base}")] == pytest.approx(
            rem["deepstamp"]["removal_left"] - rem[base]["removal_left"])
    table = seed_table_markdown(m.fit_report)
    assert "| Network | Baseline | Blend | S | O | D | DeepStamp |" in table
    assert m.evaluation_markdown() == table
    with pytest.raises(InputError, match="train_labels"):
        smoke(task="labels").fit(data)


def test_fit_with_labels_and_a_seed_classifier():
    m = smoke(task="labels", num_classes=3, classifier="alexnet")
    g = torch.Generator().manual_seed(0)
    data = {"train": torch.rand(6, 3, 32, 32, generator=g), "train_labels": torch.arange(6) % 3,
            "val": torch.rand(3, 3, 32, 32, generator=g), "val_labels": torch.arange(3)}
    m.fit(data)
    assert 0.0 <= m.fit_report["accuracy"]["deepstamp"] <= 1.0
    assert m.F(torch.rand(2, 3, 32, 32)).shape == (2, 3)


def test_table_classifiers_add_an_f_prime_row_per_architecture():
    # the seed's table has AlexNet, VGG16 and ResNet50 rows; F′ of each trains on every
    # marking, V′ once (it does not depend on F′)
    m = smoke(task="labels", num_classes=3, working_size=32,
              table_classifiers=["vgg16", "resnet50"])
    g = torch.Generator().manual_seed(0)
    data = {"train": torch.rand(6, 3, 32, 32, generator=g), "train_labels": torch.arange(6) % 3,
            "val": torch.rand(3, 3, 32, 32, generator=g), "val_labels": torch.arange(3)}
    m.fit(data)
    by = m.fit_report["accuracy_by_classifier"]
    assert set(by) == {"vgg16", "resnet50"}
    for accs in by.values():
        assert set(accs) == {"clean", *STAMPERS} and all(0 <= a <= 1 for a in accs.values())
    table = seed_table_markdown(m.fit_report)
    assert "| resnet_small |" in table and "| vgg16 |" in table and "| resnet50 |" in table
    value = {(r["label"], r["metric"]): r["value"]
             for r in m.evaluation_rows(data["val"], m.embed(data["val"]))}
    assert value[("deepstamp", "accuracy_drop_vgg16")] == pytest.approx(
        by["vgg16"]["clean"] - by["vgg16"]["deepstamp"])
    with pytest.raises(ValueError, match="repeats an architecture"):
        smoke(table_classifiers=["alexnet", "alexnet"])
    with pytest.raises(ValueError, match="vgg16 needs working_size >= 32"):
        smoke(working_size=16, table_classifiers=["vgg16"])


def test_gate_reads_method_metrics():
    policy = GatePolicy(min_psnr=10, min_bit_accuracy={}, max_fpr=0.1,
                        primary_metric="detection_rate/none",
                        min_metric={"contrast/deepstamp": 0.05},
                        max_metric={"accuracy_drop/deepstamp": 0.1})
    good = {"psnr": 20, "fpr": 0.0, "detection_rate/none": 1.0,
            "contrast/deepstamp": 0.2, "accuracy_drop/deepstamp": 0.02}
    assert decide(good, None, policy).promote
    bad = {**good, "contrast/deepstamp": 0.01, "accuracy_drop/deepstamp": 0.3}
    reasons = decide(bad, None, policy).reasons
    assert any("contrast/deepstamp" in r and "below" in r for r in reasons)
    assert any("accuracy_drop/deepstamp" in r and "above" in r for r in reasons)
    missing = decide({k: v for k, v in good.items() if k != "contrast/deepstamp"}, None, policy)
    assert any("contrast/deepstamp is missing" in r for r in missing.reasons)
