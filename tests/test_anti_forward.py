"""anti_forward (DeepRAFT) specifics: augmentation chain, variants, training, smoothing, bundles."""

from __future__ import annotations

import json

import pytest
import torch

from neuralmark.components.attacks.stochastic import (
    NAMES,
    StochasticAugConfig,
    StochasticAugmentation,
)
from neuralmark.components.methods import InputError, Status, WatermarkKey, build, load_bundle
from neuralmark.components.methods.anti_forward import AntiForward
from neuralmark.components.methods.anti_forward import training as af_training
from neuralmark.components.methods.anti_forward.parts import (
    aggregate_margins,
    kind_calibration,
    threshold_at,
)
from neuralmark.components.metrics import psnr, seam_energy_ratio
from neuralmark.components.stats import clustered_rate
from tests.photo_crops import crops

#: a fit small enough for this CPU (~10 s of CPU), big enough to separate stamped from clean
TRAIN = {"variant": "rs_aug", "working_size": 32, "encoder_width": 8, "scanner_width": 8,
         "steps": 200, "batch_size": 16, "lr": 3e-3, "sigma": 0.25, "sigma_warmup": 40,
         "aug_start": 60, "aug_end": 160, "image_loss_ramp": 120, "n0": 8, "n": 64,
         "score_noise_samples": 4, "calibration_scores": 1000, "log_every": 10,
         "figure_every": 100}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def smoke(**over) -> AntiForward:
    torch.manual_seed(0)
    return build("anti_forward", {**AntiForward.smoke_config, **over})


@pytest.fixture(scope="module")
def trained(photo):
    torch.manual_seed(0)
    method = build("anti_forward", TRAIN)
    logged: list[tuple[int, dict]] = []
    figures: list[str] = []

    class Sink:
        def on_metrics(self, step, metrics):
            logged.append((step, dict(metrics)))

        def on_figure(self, step, name, figure):
            figures.append(name)

    final = method.fit({"train": crops(photo, 48, 48, window=128),
                        "val": crops(photo, 12, 48, window=128)}, [Sink()])
    return method, logged, figures, final


# -- the augmentation chain ---------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_each_augmentation_passes_a_finite_gradient(name):
    # grey and saturated pixels included: kornia's HSV hue had NaN gradients there
    x = torch.cat([torch.rand(2, 3, 40, 40), torch.full((1, 3, 40, 40), 0.5),
                   torch.zeros(1, 3, 40, 40)]).requires_grad_(True)
    chain = StochasticAugmentation(StochasticAugConfig(p=1.0, enabled=(name,)))
    y = chain(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and float(y.detach().min()) >= 0 and float(y.detach().max()) <= 1
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert float(x.grad.abs().sum()) > 0


def test_full_chain_is_differentiable_and_replays():
    x = torch.rand(4, 3, 48, 48, requires_grad=True)
    chain = StochasticAugmentation(StochasticAugConfig(p=1.0))
    params = chain.sample(4, torch.Generator().manual_seed(1), (48, 48))
    assert sorted(params["order"]) == sorted(NAMES)
    y = chain.apply(x, params)
    assert torch.equal(y, chain.apply(x, params)), "a draw must replay exactly"
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0
    # the global RNG is left alone by a seeded draw
    torch.manual_seed(5)
    a = torch.rand(1)
    torch.manual_seed(5)
    chain.sample(4, torch.Generator().manual_seed(1), (48, 48))
    assert torch.equal(torch.rand(1), a)


def test_curriculum_strength_zero_is_identity_and_order_is_random():
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(StochasticAugmentation(strength=0.0)(x), x)
    orders = {tuple(StochasticAugmentation().sample(2, torch.Generator().manual_seed(s),
                                                    (32, 32))["order"]) for s in range(8)}
    assert len(orders) > 1


# -- variants ---------------------------------------------------------------------
@pytest.mark.parametrize(("variant", "noise", "aug"), [("baseline", False, False),
                                                       ("rs", True, False),
                                                       ("rs_aug", True, True)])
def test_variants_train_as_documented(variant, noise, aug, photo, monkeypatch):
    m = smoke(variant=variant, steps=3, aug_start=0, aug_end=2)
    seen: list[tuple[float, float]] = []
    original = af_training.joint_loss

    def spy(method, xw, bits, aug_strength, sigma, image_ramp, generator, **kwargs):
        seen.append((aug_strength, sigma))
        return original(method, xw, bits, aug_strength, sigma, image_ramp, generator, **kwargs)

    monkeypatch.setattr(af_training, "joint_loss", spy)
    m.fit({"train": crops(photo, 4, 32, window=128), "val": crops(photo, 2, 32, window=128)})
    assert len(seen) == 3
    assert all((s > 0) == noise for _, s in seen)
    assert any(a > 0 for a, _ in seen) == aug
    assert m.smoothed == noise  # verify certifies only for the noise-trained variants


# -- training and detection ----------------------------------------------------------
def test_fit_reduces_the_loss_streams_metrics_and_figures(trained):
    _, logged, figures, final = trained
    losses = [m["detection_ce"] for s, m in logged if "detection_ce" in m]
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, losses
    assert {"stamp_residual", "scan_statistic_histogram"} <= set(figures)
    assert final["calibration_scores"] >= 1000


def test_fit_separates_stamped_from_clean(trained, photo):
    method, *_ = trained
    clean = crops(photo, 12, 40, window=128)          # other crops, another size than training
    stamped = method.embed(clean, None)
    s_clean = method.scan_statistic(clean)
    s_stamped = method.scan_statistic(stamped)
    assert float(s_stamped.min()) > float(s_clean.max()), (s_stamped, s_clean)
    verdicts = method.verify(stamped, WatermarkKey("any"))
    assert sum(v.detected for v in verdicts) >= 9
    for v in verdicts:
        assert 0.0 <= v.score <= 1.0 and v.p_value is not None
        if v.detected:
            assert v.certified_radius is not None and v.certified_radius > 0
    assert not any(v.detected for v in method.verify(clean, WatermarkKey("any")))


def test_detection_ignores_the_key(trained, photo):
    method, *_ = trained
    stamped = method.embed(crops(photo, 3, 40, window=128), WatermarkKey("owner"))
    a = method.verify(stamped, WatermarkKey("owner"))
    b = method.verify(stamped, WatermarkKey("somebody else"))
    assert AntiForward.keyed_detection is False
    assert [(v.detected, v.p_value) for v in a] == [(v.detected, v.p_value) for v in b]


def test_calibrated_verdicts_honour_the_detection_level(trained, photo):
    method, *_ = trained
    clean = crops(photo, 6, 40, window=128)
    images = torch.cat([clean, method.embed(clean, None)])
    fast = method.null_p_values(images, 3, torch.Generator().manual_seed(0))
    verdicts = method.verify(images)
    assert [float(p) for p in fast[:, 0]] == [v.p_value for v in verdicts]
    assert torch.equal(fast[:, 0:1].expand(-1, 3), fast)  # every key: the same p-value
    for level in (method.config.fpr, 0.3):
        at = method.with_config(fpr=level)
        assert at.detection_alpha == level
        for v in at.verify(images):
            assert not v.detected or v.p_value <= level
    assert any(v.detected for v in verdicts)  # the stamped half passes the calibrated test


def test_score_aggregations_reduce_the_same_margins_and_calibrate_each(trained, photo):
    """af11: the statistic reduces the margins over the fixed noise bank (B×K); each
    reduction is calibrated on its own scores and verify reads it as P(stamped)."""
    method, *_ = trained
    clean = crops(photo, 12, 40, window=128)
    stamped = method.embed(clean, None)
    margins = method.scan_margins(stamped)
    assert margins.shape == (12, method.config.score_noise_samples)
    assert torch.allclose(method.scan_statistic(stamped), margins.mean(dim=1))
    for how in ("mean_probability", "vote_share"):
        m = method.with_config(score_aggregation=how)
        stats = m.scan_statistic(stamped)
        assert torch.allclose(stats, aggregate_margins(margins, how))
        assert 0 <= float(stats.min()) and float(stats.max()) <= 1
        if how == "vote_share":  # a share of K votes
            assert torch.equal(stats * 4, (stats * 4).round())
        m = m.with_config(fpr=0.01, calibration_scores=200)  # a small null, fast
        cal = m.calibrate(crops(photo, 20, 32, window=128), torch.Generator().manual_seed(3))
        assert 0 <= cal["threshold_statistic"] <= 1  # its own scale, not the margins'
        verdicts = m.verify(stamped)
        assert [v.score for v in verdicts] == pytest.approx(stats.tolist())
        assert not any(v.detected for v in m.verify(clean)), how
        # detected iff the statistic passes its own threshold (and the certificate agrees)
        assert all(not v.detected or s > cal["threshold_statistic"]
                   for v, s in zip(verdicts, stats.tolist(), strict=True))
        if how == "mean_probability":
            assert sum(v.detected for v in verdicts) >= 9
    plain = smoke(variant="baseline")  # never noise-trained: one noise-free margin each
    assert plain.scan_margins(clean[:2]).shape == (2, 1)
    with pytest.raises(ValueError, match="unknown score aggregation"):
        aggregate_margins(margins, "median")
    with pytest.raises(ValueError, match="B×K"):
        aggregate_margins(margins[:, 0], "mean_margin")
    with pytest.raises(InputError, match="score_aggregation"):
        method.with_config(score_aggregation="max")


def test_target_psnr_holds_every_stamp_at_one_psnr_and_keeps_the_gradient(photo):
    """af11: with ``target_psnr`` each image's stamp is rescaled to that PSNR (clipping to
    [0, 1] only raises it), whatever the encoder outputs; the encoder still learns where
    the stamp goes (the rescaling is differentiable)."""
    x = crops(photo, 4, 32, window=128)                    # the smoke working size: no resize
    free = smoke(payload_bits=0, message_bits=0)
    held = free.with_config(target_psnr=38.0)
    p_free = psnr(free.embed(x, None), x)
    p_held = psnr(held.embed(x, None), x)
    assert float(p_free.max()) < 37.0, p_free  # an untrained encoder's stamp: louder
    assert float(p_held.min()) >= 38.0 - 1e-3 and float(p_held.max()) <= 38.5, p_held
    encoder = held.modules()["encoder"]
    r = held.residual(x, None)
    assert torch.allclose(r.pow(2).mean(dim=(1, 2, 3)).sqrt(), torch.full((4,), 10 ** -1.9))
    (r * torch.randn_like(r)).sum().backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0
               for p in encoder.parameters())
    with pytest.raises(InputError, match="target_psnr"):
        free.with_config(target_psnr=-3.0)


def test_abstention_is_never_a_confident_verdict(trained, photo):
    method, *_ = trained
    stamped = method.embed(crops(photo, 4, 40, window=128), None)
    # n = 5 votes can never lift the Clopper–Pearson bound above 1/2 at alpha = 1e-3
    few = method.with_config(n=5)
    for cert in few.certify(stamped, n0=2, n=5):
        assert cert.abstained and cert.radius == 0.0
    verdicts = few.verify(stamped)
    for v in verdicts:
        assert not v.detected and v.status is Status.NOT_DETECTED
        assert v.certified_radius is None and v.payload is None
    # the stamped images pass the calibrated scan, so smoothing is what says no
    assert any("abstained" in v.reason for v in verdicts), [v.reason for v in verdicts]


def test_jnd_terms_cost_more_for_a_band_than_for_spread_texture():
    """Equal stamp energy: a smooth band near one edge (what the shipped encoder learned)
    costs more under the low-frequency and peak terms than fine noise spread over the
    image; texture masking makes a stamp on a flat image cost more than on a textured one."""
    g = torch.Generator().manual_seed(0)
    x = torch.full((1, 3, 64, 64), 0.5)
    band = torch.zeros_like(x)
    band[..., 4:12] = 0.08
    spread = torch.randn(x.shape, generator=g)
    spread = spread * band.pow(2).mean().sqrt() / spread.pow(2).mean().sqrt()
    m = smoke(lowfreq_weight=1.0, peak_weight=1.0)
    costs = {}
    for name, r in (("band", band), ("spread", spread)):
        mse = r.pow(2).mean()
        _, metrics = af_training.image_loss(m.config, x + r, x, mse, torch.tensor(0.0))
        costs[name] = metrics
    assert costs["band"]["lowfreq_mse"] > 10 * costs["spread"]["lowfreq_mse"]
    assert costs["band"]["local_energy_rms"] > 2 * costs["spread"]["local_energy_rms"]

    masked = smoke(texture_masking=1.0)
    textured = torch.rand(1, 3, 64, 64, generator=g) * 0.6 + 0.2
    flat = torch.full_like(textured, 0.5) + 0.01 * torch.rand(1, 3, 64, 64, generator=g)
    r = 0.02 * torch.randn(x.shape, generator=g)
    mse = r.pow(2).mean()
    zero = torch.tensor(0.0)
    on_flat = af_training.image_loss(masked.config, flat + r, flat, mse, zero)[1]["masked_mse"]
    on_tex = af_training.image_loss(masked.config, textured + r, textured, mse,
                                    zero)[1]["masked_mse"]
    assert on_flat == pytest.approx(float(mse), rel=0.2)  # flat everywhere: weights ~1
    assert on_tex == pytest.approx(float(mse), rel=0.2)   # textured everywhere: weights ~1
    half = flat.clone()                    # left half flat, right half textured
    half[..., 32:] = textured[..., 32:]
    r_flat, r_tex = torch.zeros_like(r), torch.zeros_like(r)
    r_flat[..., :32] = r[..., :32]         # the same stamp energy on either half
    r_tex[..., 32:] = r[..., 32:]
    cost_flat, cost_tex = (
        af_training.image_loss(masked.config, half + d, half, d.pow(2).mean(),
                               torch.tensor(0.0))[1]["masked_mse"]
        for d in (r_flat, r_tex))
    assert cost_flat > 3 * cost_tex


def test_highpassed_stamp_has_no_band_or_cast():
    """With ``residual_highpass`` the encoder cannot put a smooth band or a colour cast
    into the stamp: even an encoder whose raw output is one (a constant plus a band) gives
    a residual with (almost) no local mean, and it stays within ±strength."""
    m = smoke(residual_highpass=3.0, strength=0.1)
    x = torch.full((2, 3, 64, 64), 0.5)

    class Band(torch.nn.Module):
        def forward(self, xw, bits):
            out = torch.full_like(xw, 0.6)        # a cast
            out[..., 4:12] = 1.0                  # and a band near the left edge
            return out

    m.encoder = Band()
    r = m.residual(x, None)
    assert r.abs().max() <= 0.1 + 1e-6
    assert r.mean().abs() < 1e-3                              # no cast
    assert r[..., 24:40, 24:40].abs().max() < 1e-4            # flat raw output: nothing there
    plain = smoke(strength=0.1)
    plain.encoder = Band()
    assert plain.residual(x, None).mean() > 0.05             # without it: the cast stays


def test_even_stamp_energy_spreads_a_band_and_follows_texture():
    """``residual_window``: an encoder that puts nearly all its energy into a band gets
    a stamp whose local energy is even over the image (same total); with
    ``residual_masking`` 1 the energy moves to the textured half of the image."""
    g = torch.Generator().manual_seed(0)

    class Band(torch.nn.Module):
        def forward(self, xw, bits):
            out = 0.01 * torch.randn(xw.shape, generator=g)
            out[..., 4:12] += 0.5 * torch.randn(out[..., 4:12].shape, generator=g)
            return out

    def local_rms(r, cols):
        return float(r[..., cols].pow(2).mean().sqrt())

    x = torch.full((1, 3, 64, 64), 0.5)
    plain, even = smoke(strength=0.1), smoke(strength=0.1, residual_window=9)
    plain.encoder = even.encoder = Band()
    r_plain, r_even = plain.residual(x, None), even.residual(x, None)
    assert local_rms(r_plain, slice(4, 12)) > 20 * local_rms(r_plain, slice(30, 50))
    assert local_rms(r_even, slice(4, 12)) < 1.5 * local_rms(r_even, slice(30, 50))
    assert local_rms(r_even, slice(0, 64)) == pytest.approx(local_rms(r_plain, slice(0, 64)),
                                                            rel=0.1)
    half = x.clone()
    half[..., 32:] = torch.rand(1, 3, 64, 32, generator=g)   # right half textured
    masked = smoke(strength=0.1, residual_window=9, residual_masking=1.0)
    masked.encoder = Band()
    r = masked.residual(half, None)
    assert local_rms(r, slice(40, 60)) > 3 * local_rms(r, slice(14, 28))


def test_clustered_rate_counts_each_group_once():
    # 3 flagged members, all in group "a": one flagged group of three
    r = clustered_rate([True, True, True, False, False], ["a", "a", "a", "b", "c"])
    assert (r["flagged"], r["clusters"], r["rate"]) == (1, 3, pytest.approx(1 / 3))
    assert r["lower"] < 1 / 3 < r["upper"]
    none = clustered_rate([False] * 40, [i // 4 for i in range(40)])  # 10 groups of 4
    assert (none["flagged"], none["clusters"]) == (0, 10)
    assert none["upper_one_sided"] == pytest.approx(1 - 0.05 ** (1 / 10))  # ≈ 3/n
    assert none["upper_one_sided"] < none["upper"]
    with pytest.raises(ValueError, match="2 flags for 3"):
        clustered_rate([True, False], ["a", "b", "c"])


def test_calibration_by_kind_keeps_the_pooled_threshold_and_counts_groups(photo):
    method = smoke(calibration_scores=48, fpr=0.05)
    photos = crops(photo, 6, 32, window=128)
    g = torch.Generator().manual_seed(3)
    textures = torch.rand(6, 3, 32, 32, generator=g)
    clean = torch.cat([photos, textures])
    groups = ["p0", "p0", "p0", "p1", "p1", "p1", *(f"t{i}" for i in range(6))]
    kinds = ["photo"] * 6 + ["procedural"] * 6
    plain = method.calibrate(clean, torch.Generator().manual_seed(9))
    plain = {k: plain[k] for k in ("clean_statistics", "threshold_statistic")}
    cal = method.calibrate(clean, torch.Generator().manual_seed(9), groups=groups, kinds=kinds)
    # labels change nothing about the deployed rule
    assert cal["clean_statistics"] == plain["clean_statistics"]
    assert cal["threshold_statistic"] == plain["threshold_statistic"]
    scores = cal["image_statistics"]
    assert len(scores) == 12 and {len(s) for s in scores} == {cal["views_per_image"]}
    assert sorted(v for s in scores for v in s) == cal["clean_statistics"]
    by = cal["by_kind"]
    assert set(by) == {"photo", "procedural", "all"}
    assert (by["photo"]["n_groups"], by["procedural"]["n_groups"], by["all"]["n_groups"]) == (
        2, 6, 8)
    assert by["photo"]["n_scores"] == 6 * cal["views_per_image"]
    for kind, rows in (("photo", range(6)), ("procedural", range(6, 12)), ("all", range(12))):
        own = sorted(v for i in rows for v in scores[i])
        assert by[kind]["threshold_statistic"] == threshold_at(own, 0.05)
        assert by[kind]["max_statistic"] == own[-1]
        thr = cal["threshold_statistic"]
        above = {groups[i] for i in rows if any(v > thr for v in scores[i])}
        at = by[kind]["at_deployed"]
        assert at["flagged"] == len(above)
        assert at["scores_above"] == sum(v > thr for i in rows for v in scores[i])
    # any other threshold can be judged later from the stored per-image scores
    again = kind_calibration(scores, groups, kinds, 0.05, float("-inf"))
    assert again["photo"]["at_deployed"]["flagged"] == 2
    assert again["all"]["at_deployed"]["flagged"] == 8


def test_calibration_labels_must_fit_thecrops(photo, window=128):
    method = smoke(calibration_scores=8)
    clean = crops(photo, 4, 32, window=128)
    with pytest.raises(InputError, match="groups has 3 labels for 4 images"):
        method.calibrate(clean, groups=["a", "b", "c"], kinds=["photo"] * 4)
    with pytest.raises(InputError, match="kinds has 5 labels"):
        method.calibrate(clean, kinds=["photo"] * 5)
    with pytest.raises(InputError, match='"all" is reserved'):
        method.calibrate(clean, kinds=["photo", "photo", "all", "all"])


def test_uncalibrated_model_never_detects(photo):
    m = smoke()
    v = m.verify(crops(photo, 1, 40, window=128), WatermarkKey("k"))[0]
    assert not v.detected and v.p_value == 1.0 and "not calibrated" in v.reason


def test_odd_inputs(photo):
    m = smoke()
    odd = torch.from_numpy(photo[100:137, 100:191]).permute(2, 0, 1)[None].float() / 255
    out = m.verify(torch.cat([torch.full((1, 3, 37, 91), 0.4), odd]), WatermarkKey("k"))
    assert out[0].status is Status.UNREADABLE and "no variation" in out[0].reason
    assert out[1].status is Status.NOT_DETECTED
    assert m.embed(torch.rand(1, 3, 37, 91), WatermarkKey("k", 1)).shape == (1, 3, 37, 91)
    bad = torch.rand(1, 3, 40, 40)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError):
        m.verify(bad, WatermarkKey("k"))
    with pytest.raises(InputError):
        m.verify((torch.rand(1, 3, 40, 40) * 255).to(torch.uint8), WatermarkKey("k"))
    with pytest.raises(InputError, match="needs a key"):
        m.embed(torch.rand(1, 3, 40, 40), None)  # this smoke model carries a payload


def test_bundle_round_trip_keeps_calibration(trained, tmp_path, photo):
    method, *_ = trained
    method.to_bundle(tmp_path / "af")
    again = load_bundle(tmp_path / "af")
    assert again.calibration == method.calibration
    assert len(again.calibration["clean_statistics"]) >= 1000
    x = method.embed(crops(photo, 3, 40, window=128), None)
    assert [(v.detected, v.p_value, v.score) for v in method.verify(x)] == \
        [(v.detected, v.p_value, v.score) for v in again.verify(x)]


# -- public scanner API and gradients ---------------------------------------------------
def test_scanner_logits_and_classifier_module_are_differentiable(photo):
    m = smoke(payload_bits=0, message_bits=0)
    x = crops(photo, 2, 56, window=128).requires_grad_(True)
    logits = m.scanner_logits(x)
    assert logits.shape == (2, 2)
    logits[:, 1].sum().backward()
    assert float(x.grad.abs().sum()) > 0
    module = m.classifier_module()
    assert isinstance(module, torch.nn.Module)
    assert torch.allclose(module(x.detach()), m.scanner_logits(x.detach()))
    assert {n for n, _ in module.named_parameters()} == \
        {f"scanner.{n}" for n, _ in m.scanner.named_parameters()}


def test_gradient_reaches_the_input_and_every_parameter_through_the_whole_chain(photo):
    m = smoke(variant="rs_aug", aug=StochasticAugConfig(p=1.0))
    x = crops(photo, 2, 32, window=128).requires_grad_(True)
    loss = m.training_loss(x)
    loss.backward()
    assert float(x.grad.abs().sum()) > 0 and torch.isfinite(x.grad).all()
    missing = [f"{name}.{n}" for name, mod in m.modules().items()
               for n, p in mod.named_parameters()
               if p.grad is None or float(p.grad.abs().sum()) == 0.0]
    assert not missing, missing


# -- config names: the certification level is certify_alpha; old bundles still load -------
def test_certification_level_is_certify_alpha_and_old_configs_migrate():
    old = {"method": "anti_forward", "alpha": 0.01, "fpr": 0.002}  # before the rename
    cfg = AntiForward.Config.model_validate(old)
    assert cfg.certify_alpha == 0.01 and cfg.fpr == 0.002
    assert "alpha" not in cfg.model_dump()
    with pytest.raises(InputError, match="'alpha'.*detection level is 'fpr'"):
        build("anti_forward", {"alpha": 0.01})  # alone, alpha would mean detection elsewhere
    with pytest.raises(InputError, match="certify_alpha"):
        build("anti_forward", {"alpha": 0.01, "fpr": 0.002, "certify_alpha": 0.01})


def test_the_shipped_bundle_written_with_alpha_still_loads():
    from neuralmark.components.methods.registry import shipped_bundle

    bundle = shipped_bundle("anti_forward")
    raw = json.loads((bundle / "config.json").read_text())
    assert "alpha" in raw and "certify_alpha" not in raw  # written before the rename
    method = load_bundle(bundle)
    assert method.config.certify_alpha == raw["alpha"]
    assert method.detection_alpha == raw["fpr"]


def test_a_registered_bundle_with_the_old_name_loads(tmp_path, photo):
    m = smoke(certify_alpha=0.02)
    m.to_bundle(tmp_path / "b")
    raw = json.loads((tmp_path / "b" / "config.json").read_text())
    raw["alpha"] = raw.pop("certify_alpha")  # what a bundle registered before the rename holds
    (tmp_path / "b" / "config.json").write_text(json.dumps(raw))
    again = load_bundle(tmp_path / "b")
    assert again.config == m.config
    x = crops(photo, 2, 40, window=128)
    assert [v.p_value for v in again.verify(x)] == [v.p_value for v in m.verify(x)]


# -- the stamp at the photo's resolution (stamp_mode) -------------------------------------
def test_tiled_stamp_is_made_at_the_photos_resolution(photo):
    m = smoke(payload_bits=0, message_bits=0, strength=0.1, stamp_mode="tiles",
              tile_margin=0)
    x = torch.from_numpy(photo[:64, :96].copy()).permute(2, 0, 1)[None].float() / 255
    assert torch.equal(m.untile(m.tiles(x), 1, 64, 96), x)
    stamped = m.embed(x, None)
    # each 32² tile carries the encoder's stamp of that tile's own pixels: nothing stretched
    for i, j in ((0, 0), (1, 2)):
        tile = x[..., 32 * i:32 * i + 32, 32 * j:32 * j + 32]
        with torch.no_grad():
            alone = (tile + m.residual(tile, None)).clamp(0, 1)
        assert torch.allclose(stamped[..., 32 * i:32 * i + 32, 32 * j:32 * j + 32], alone,
                              atol=1e-6)
    # the stretched stamp of the same model is a 32² pattern enlarged 2-3×: smoother
    stretched = m.with_config(stamp_mode="stretch").embed(x, None)

    def roughness(r):  # mean squared difference of horizontal neighbours over the energy
        return float((r[..., 1:] - r[..., :-1]).pow(2).mean() / r.pow(2).mean())
    assert roughness(stamped - x) > 2 * roughness(stretched - x)
    # sides that are not multiples of the working size: the nearest grid, then back
    odd = torch.rand(2, 3, 37, 91)
    assert m.to_grid(odd).shape == (2, 3, 32, 96)
    assert m.embed(odd, None).shape == (2, 3, 37, 91)
    assert m.scanner_logits(odd).shape == (2, 2)


def test_tiled_scan_finds_tiled_stamps_with_the_same_weights(trained, photo):
    method, *_ = trained
    big = crops(photo, 6, 96, window=128)                                    # 3×3 tiles of 32²
    for mode, margin in (("tiles", 8), ("tiles", 0), ("conv", 8)):
        tiled = method.with_config(stamp_mode=mode, tile_margin=margin)
        clean = tiled.scan_statistic(big)
        marked = tiled.scan_statistic(tiled.embed(big, None))
        assert float(marked.min()) > float(clean.max()), (mode, margin)
    # the smoothed scanner reads the same tiles (noise added to the whole grid)
    tiled = method.with_config(stamp_mode="tiles", tile_margin=8)
    certs = tiled.certify(tiled.embed(big[:2], None), n0=8, n=32)
    assert all(c.label == 1 for c in certs)


def test_conv_stamp_is_the_encoder_over_the_whole_photo(photo):
    m = smoke(payload_bits=0, message_bits=0, strength=0.1, stamp_mode="conv")
    x = torch.from_numpy(photo[:64, :96].copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        whole = (x + m.residual(x, None)).clamp(0, 1)
    assert torch.allclose(m.embed(x, None), whole, atol=1e-6)
    # no seam: the abutting tiles' stamp differs from it most along the tile borders
    diff = (m.with_config(stamp_mode="tiles", tile_margin=0).embed(x, None)
            - whole).abs().mean(dim=(0, 1))
    border = torch.zeros(64, 96, dtype=torch.bool)
    border[28:36, :] = border[:, 28:36] = border[:, 60:68] = True
    assert float(diff[border].mean()) > float(diff[~border].mean())


def test_tiles_are_stamped_with_context_and_blended_without_seams(photo, monkeypatch):
    m = smoke(payload_bits=0, message_bits=0, strength=0.1, stamp_mode="tiles", tile_margin=8,
              residual_highpass=2.0, residual_window=9)  # the shaping that made the seams
    x = torch.from_numpy(photo[100:196, 200:328].copy()).permute(2, 0, 1)[None].float() / 255
    blended = m.embed(x, None)                                    # 3×4 tiles of 32²
    abutting = m.with_config(tile_margin=0).embed(x, None)
    # a convex mix of tile stamps: never beyond the strength
    assert float((blended - x).abs().max()) <= 0.1 + 1e-6
    # away from its borders (8 px) a tile carries its own stamp, made with 8 px of the
    # photo around it: the tile at row 1, column 1 spans 32..64
    with torch.no_grad():
        own = m.residual(x[..., 24:72, 24:72], None)[..., 8:40, 8:40]
    inner = (slice(None), slice(None), slice(40, 56), slice(40, 56))
    alone = (x[..., 32:64, 32:64] + own).clamp(0, 1)
    assert torch.allclose(blended[inner], alone[..., 8:24, 8:24], atol=1e-6)
    # the seam: the abutting tiles' stamp is uneven along the borders (the shaping's
    # padding); blended, the borders carry about as much energy as the rest
    seam_abut = float(seam_energy_ratio(abutting, x, 32))
    seam_blend = float(seam_energy_ratio(blended, x, 32))
    assert abs(seam_blend - 1) < abs(seam_abut - 1), (seam_blend, seam_abut)
    # the weights sum to one at every pixel: tile stamps that agree come back unchanged
    monkeypatch.setattr(m, "residual", lambda t, bits: torch.full_like(t, 0.05))
    flat = torch.full((1, 3, 96, 128), 0.5)
    assert torch.allclose(m.embed(flat, None), torch.full_like(flat, 0.55), atol=1e-6)
    with pytest.raises(InputError, match="tile_margin"):
        m.with_config(tile_margin=6)


def test_scanner_only_fit_trains_the_tiled_scan_path_on_whole_grids(trained, photo,
                                                                      monkeypatch):
    """``train_scanner_only`` in "tiles" mode: the encoder (so the stamp) stays as loaded and
    the scanner learns on whole grids as deployed: stamped by ``tiled_residual`` with their
    margins, logits averaged over the tiles, stamped against clean grids through the chain."""
    method, *_ = trained
    m = method.with_config(stamp_mode="tiles", tile_margin=8, train_scanner_only=True,
                           steps=4, batch_size=4, lr=1e-2, warmup_start=0, aug_start=0,
                           aug_end=1, sigma_warmup=1, calibration_scores=8, log_every=1,
                           figure_every=0)
    encoder = {k: v.clone() for k, v in m.encoder.state_dict().items()}
    scanner = {k: v.clone() for k, v in m.scanner.state_dict().items()}
    read, stamped = [], []
    grid_logits, stamp_residual = m.grid_logits, m.stamp_residual

    def read_spy(grid):
        read.append(tuple(grid.shape))
        return grid_logits(grid)

    def stamp_spy(grid, bits):
        stamped.append((tuple(grid.shape), torch.is_grad_enabled()))
        return stamp_residual(grid, bits)

    monkeypatch.setattr(m, "grid_logits", read_spy)
    monkeypatch.setattr(m, "stamp_residual", stamp_spy)
    grids = crops(photo, 6, 64, window=128)                                  # 2×2 tiles of 32²
    m.fit({"train": grids, "val": grids[:2]})
    assert all(torch.equal(v, m.encoder.state_dict()[k]) for k, v in encoder.items())
    assert any(not torch.equal(v, m.scanner.state_dict()[k]) for k, v in scanner.items())
    # each training step: 4 grids stamped whole without gradients, 4 stamped + 4 clean read
    assert stamped[:4] == [((4, 3, 64, 64), False)] * 4
    assert read[:4] == [(8, 3, 64, 64)] * 4
    # what it stamps in training is what embed ships
    with torch.no_grad():
        assert torch.allclose(m.embed(grids[:2], None),
                              (grids[:2] + m.tiled_residual(grids[:2], None)).clamp(0, 1),
                              atol=1e-6)


@pytest.mark.parametrize("mode", ["stretch", "tiles", "conv"])
def test_attacks_add_their_noise_where_the_deployed_scanner_does(mode, photo):
    """The EoT / smoothed-score transform of the adversarial evaluation is the scan path:
    classifier_module on ``eot_transform(x) + σ·noise`` gives the logits the scanner's
    statistic and certification compute for that noise, for every stamp mode."""
    from neuralmark.components.adversarial_evaluation import adversarial_rows, eot_transform
    from neuralmark.components.attacks.adversarial import NoisyClassifier

    m = smoke(payload_bits=0, message_bits=0, stamp_mode=mode, sigma=0.25, tile_margin=8)
    x = crops(photo, 2, 90, window=128)              # not a multiple of 32: a 96² grid of 3×3 tiles
    view = eot_transform(m)(x)
    assert view.shape[-2:] == ((32, 32) if mode == "stretch" else (96, 96))
    noise = torch.randn(view.shape, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        attacked = NoisyClassifier(m.classifier_module(), 0.25, seed=4,
                                   transform=eot_transform(m))(x)
        scanned = m.grid_logits(m.to_grid(x) + 0.25 * noise)[:, :2]
        assert torch.allclose(attacked, scanned, atol=1e-5)
        # the calibrated statistic is the mean margin of that classifier over its noise bank
        bank = m._noise_bank(*view.shape[-2:])
        logits = m.classifier_module()((view[:, None] + 0.25 * bank[None]).flatten(0, 1))
        margins = (logits[:, 1] - logits[:, 0]).view(2, -1).mean(dim=1)
        assert torch.allclose(margins, m.scan_statistic(x), atol=1e-5)
    rows = adversarial_rows(m, x[:1], None, attacks=("apgd_eot",), steps=1, eot_iter=1,
                            smoothing_n=8, seed=0)
    assert any(r["metric"] == "linf_distance_max" and r["value"] <= 8 / 255 + 1e-6
               for r in rows)
    assert eot_transform(m.with_config(smoothing=False)) is None
