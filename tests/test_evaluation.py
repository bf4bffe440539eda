"""Metrics, run_suite / calibrate_fpr / summarize / CSV, and plots, on a tiny fake method."""

from __future__ import annotations

import hashlib
import math
import re

import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from neuralmark.components.attacks.registry import BENCHMARK_SUITE
from neuralmark.components.evaluation import (
    COLUMNS,
    calibrate_fpr,
    rows_from_csv,
    rows_to_csv,
    run_suite,
    summarize,
)
from neuralmark.components.methods.base import (
    MethodConfig,
    Status,
    Verdict,
    WatermarkKey,
    WatermarkMethod,
    check_images,
)
from neuralmark.components.metrics import (
    bit_accuracy,
    normalized_correlation,
    psnr,
    ssim,
    tpr_at_fpr,
)
from neuralmark.components.plots import curve, example_grid, robustness_curves
from neuralmark.components.stats import binomial_sf
from tests.doubles import NothingToTrain

# -- a tiny content method: additive ±1 patterns, one per bit ----------------------------------


class AdditiveConfig(MethodConfig):
    method: str = "fake_additive"
    amplitude: float = 0.004
    n_bits: int = 32
    alpha: float = 1e-3


class AdditiveMark(NothingToTrain, WatermarkMethod):
    """Bit k is the sign of a key-derived ±1 pattern added at ``amplitude``.

    Decoding correlates a high-pass residual with each pattern; the p-value is
    the exact binomial tail of the number of bits matching the key's word. The
    patterns are generated at the image's own size, so geometry breaks the mark.
    """

    key = "fake_additive"
    Config = AdditiveConfig
    min_size = 16

    def __init__(self, config: AdditiveConfig | None = None) -> None:
        super().__init__(config or AdditiveConfig())
        self.embed_calls = 0
        self.verify_calls = 0
        self._cache: dict[tuple[str, int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def _word_and_patterns(self, key: WatermarkKey, h: int, w: int):
        if (key.secret, h, w) not in self._cache:
            seed = int.from_bytes(hashlib.sha256(key.secret.encode()).digest()[:8], "little")
            g = torch.Generator().manual_seed(seed)
            k = self.config.n_bits
            word = torch.randint(0, 2, (k,), generator=g)  # k
            patterns = torch.randint(0, 2, (k, 3, h, w), generator=g).float() * 2 - 1  # k c h w
            self._cache[(key.secret, h, w)] = (word, patterns)
        return self._cache[(key.secret, h, w)]

    def embed(self, images: torch.Tensor, key: WatermarkKey) -> torch.Tensor:
        check_images(images, self.min_size)
        self.embed_calls += 1
        word, patterns = self._word_and_patterns(key, *images.shape[-2:])
        signs = (word.float() * 2 - 1).view(-1, 1, 1, 1)  # k 1 1 1
        mark = self.config.amplitude * (signs * patterns).sum(0)  # c h w
        return (images + mark).clamp(0, 1)

    def verify(self, images: torch.Tensor, key: WatermarkKey) -> list[Verdict]:
        check_images(images, self.min_size)
        self.verify_calls += 1
        word, patterns = self._word_and_patterns(key, *images.shape[-2:])
        local_mean = F.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)
        corr = (images - local_mean).flatten(1) @ patterns.flatten(1).T  # b k
        decoded = (corr > 0).long()  # b k
        verdicts = []
        for bits in decoded:
            matches = int((bits == word).sum())
            p = binomial_sf(matches, self.config.n_bits)
            detected = p <= self.config.alpha
            verdicts.append(Verdict(
                detected=detected, score=matches / self.config.n_bits, p_value=p,
                status=Status.DETECTED if detected else Status.NOT_DETECTED,
                reason="" if detected else f"p = {p:.3g}", bits=bits.tolist(),
                bit_accuracy=matches / self.config.n_bits,
            ))
        return verdicts


class UniformNull(AdditiveMark):
    """Same method, plus the fast path: exactly uniform null p-values."""

    def null_p_values(self, images: torch.Tensor, n_keys: int,
                      generator: torch.Generator) -> torch.Tensor:
        seed = int(torch.randint(0, 2**31, (1,), generator=generator))
        g = torch.Generator().manual_seed(seed * 7919 + int(images.sum() * 1000))
        return torch.rand(images.shape[0], n_keys, generator=g, dtype=torch.float64)


@pytest.fixture(scope="module")
def carriers(photo) -> torch.Tensor:
    """Eight 64×64 crops of a real photo (8×3×64×64)."""
    img = torch.from_numpy(photo).permute(2, 0, 1).float() / 255
    corners = [(40, 60), (100, 150), (200, 260), (300, 200), (380, 40), (250, 400),
               (60, 380), (420, 420)]
    return torch.stack([img[:, t:t + 64, s:s + 64] for t, s in corners])


KEY = WatermarkKey(secret="owner-secret")


@pytest.fixture(scope="module")
def suite_rows(carriers):
    return run_suite(AdditiveMark(), carriers, KEY, BENCHMARK_SUITE, batch_size=4, seed=0)


def _value(rows, lab, metric):
    found = [r["value"] for r in rows if r["label"] == lab and r["metric"] == metric]
    assert len(found) == 1, (lab, metric, found)
    return found[0]


# -- metrics -----------------------------------------------------------------------------------


def test_psnr_of_known_mse():
    b = torch.full((2, 3, 16, 16), 0.5)
    a = b.clone()
    a[0] += 0.1  # MSE 1e-2 → 20 dB
    a[1] += 0.01  # MSE 1e-4 → 40 dB
    out = psnr(a, b)
    assert out.shape == (2,)
    assert torch.allclose(out, torch.tensor([20.0, 40.0]), atol=1e-3)


def test_ssim_is_one_for_identical_and_drops_with_noise(photo_batch):
    same = ssim(photo_batch, photo_batch)
    noisy = (photo_batch + 0.1 * torch.randn(photo_batch.shape,
                                             generator=torch.Generator().manual_seed(0)))
    drop = ssim(noisy.clamp(0, 1), photo_batch)
    assert same.shape == (2,) and torch.allclose(same, torch.ones(2), atol=1e-5)
    assert torch.all(drop < 0.9)


def test_bit_accuracy_by_hand():
    decoded = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0]])
    expected = torch.tensor([1, 0, 0, 1])
    assert torch.allclose(bit_accuracy(decoded, expected), torch.tensor([0.75, 0.5]))
    probs = torch.tensor([[0.9, 0.2, 0.4, 0.6]])
    assert torch.allclose(bit_accuracy(probs, expected), torch.tensor([1.0]))


def test_normalized_correlation_by_hand():
    logo = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) + 0.1
    assert torch.allclose(normalized_correlation(logo, logo), torch.ones(3), atol=1e-6)
    assert torch.allclose(normalized_correlation(logo, 5 * logo), torch.ones(3), atol=1e-6)
    assert torch.allclose(normalized_correlation(logo, -logo), -torch.ones(3), atol=1e-6)
    a = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    c = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert float(normalized_correlation(a, b)) == 0.0
    assert math.isclose(float(normalized_correlation(a, c)), 0.5, abs_tol=1e-6)


def test_tpr_at_fpr_by_hand():
    neg = torch.arange(100.0)
    tpr, threshold = tpr_at_fpr([93.0, 95.0, 96.0, 200.0], neg, 0.05)
    assert threshold == 94.0 and tpr == 0.75
    assert int((neg > threshold).sum()) == 5  # exactly 5% of 100 negatives above
    assert tpr_at_fpr([50.0, 150.0], neg, 0.0) == (0.5, 99.0)
    assert tpr_at_fpr([-5.0], neg, 1.0) == (1.0, -math.inf)


# -- run_suite ---------------------------------------------------------------------------------


def test_run_suite_gives_tidy_rows_with_expected_metrics(suite_rows):
    assert all(tuple(r) == COLUMNS for r in suite_rows)
    assert {r["method"] for r in suite_rows} == {"fake_additive"}
    labels = {r["label"] for r in suite_rows}
    assert labels == {"none", "jpeg_90", "jpeg_75", "jpeg_50", "resize_0.5", "crop_0.9",
                      "rotate_5", "blur_1", "noise_0.02", "brightness_1.3", "contrast_1.3",
                      "combo"}
    for lab in labels:
        metrics = {r["metric"] for r in suite_rows if r["label"] == lab}
        expected = {"bit_accuracy", "detection_rate", "false_positive_rate", "p_value_median",
                    "unreadable_rate"}
        assert metrics == (expected | {"psnr", "ssim"} if lab == "none" else expected), lab
    assert all(r["n"] == 8 for r in suite_rows)
    assert {r["strength"] for r in suite_rows if r["attack"] == "jpeg"} == {90.0, 75.0, 50.0}
    assert all(r["strength"] is None for r in suite_rows if r["attack"] in ("none", "combo"))


def test_run_suite_detects_marked_not_clean(suite_rows):
    assert _value(suite_rows, "none", "psnr") > 30
    assert 0.8 < _value(suite_rows, "none", "ssim") <= 1
    assert _value(suite_rows, "none", "bit_accuracy") == 1.0
    assert _value(suite_rows, "none", "detection_rate") == 1.0
    assert _value(suite_rows, "none", "p_value_median") == pytest.approx(2.0**-32)
    assert _value(suite_rows, "jpeg_90", "detection_rate") >= 0.75
    assert _value(suite_rows, "noise_0.02", "detection_rate") >= 0.75
    # the fake's patterns are tied to the pixel grid: geometry breaks it to coin flips
    assert _value(suite_rows, "rotate_5", "bit_accuracy") < 0.7
    assert _value(suite_rows, "rotate_5", "detection_rate") == 0.0
    for r in suite_rows:
        if r["metric"] == "false_positive_rate":
            assert r["value"] == 0.0, r["label"]


def test_run_suite_counts_rejected_inputs_as_unreadable(carriers):
    rows = run_suite(AdditiveMark(), carriers, KEY, [("resize", [0.2])], batch_size=8)
    assert _value(rows, "resize_0.2", "unreadable_rate") == 1.0
    assert _value(rows, "resize_0.2", "detection_rate") == 0.0
    assert not [r for r in rows if r["label"] == "resize_0.2" and r["metric"] == "bit_accuracy"]


def test_run_suite_reuses_watermarked_replays_and_reports_progress(carriers, suite_rows):
    method = AdditiveMark()
    marked = method.embed(carriers, KEY)
    method.embed_calls = 0
    seen = []
    rows = run_suite(method, carriers, KEY, BENCHMARK_SUITE, watermarked=marked, batch_size=4,
                     seed=0, progress=lambda done, total, desc: seen.append((done, total, desc)))
    assert method.embed_calls == 0
    assert rows == suite_rows  # same seed, same draws, same table
    assert seen[-1][0] == seen[-1][1] == 13 and seen[-1][2] == "combo"
    assert [d for d, _, _ in seen] == sorted(d for d, _, _ in seen)


def test_run_suite_alpha_overrides_method_threshold(carriers):
    rows = run_suite(AdditiveMark(), carriers, KEY, [("none", [None])], alpha=1e-12)
    assert _value(rows, "none", "detection_rate") == 0.0  # p = 2^-32 > 1e-12
    rows = run_suite(AdditiveMark(), carriers, KEY, [("none", [None])], alpha=0.6)
    assert _value(rows, "none", "false_positive_rate") > 0.0


def test_summarize_flat_mlflow_safe_names(suite_rows):
    summary = summarize(suite_rows)
    assert summary["psnr"] == _value(suite_rows, "none", "psnr")
    assert summary["bit_accuracy/jpeg_90"] == _value(suite_rows, "jpeg_90", "bit_accuracy")
    assert summary["fpr/combo"] == _value(suite_rows, "combo", "false_positive_rate")
    attacked = [r["value"] for r in suite_rows
                if r["metric"] == "bit_accuracy" and r["label"] != "none"]
    assert len(attacked) == 11
    assert summary["bit_accuracy_mean_attacked"] == pytest.approx(sum(attacked) / 11)
    det = [r["value"] for r in suite_rows
           if r["metric"] == "detection_rate" and r["label"] != "none"]
    assert summary["detection_rate_mean_attacked"] == pytest.approx(sum(det) / len(det))
    assert all(re.fullmatch(r"[A-Za-z0-9_./-]+", k) for k in summary)
    with pytest.raises(ValueError, match="one method"):
        summarize(suite_rows + [{**suite_rows[0], "method": "other"}])


def test_csv_round_trip_is_atomic(tmp_path, suite_rows):
    path = rows_to_csv(suite_rows, tmp_path / "eval" / "suite.csv")
    assert rows_from_csv(path) == suite_rows
    assert [p.name for p in path.parent.iterdir()] == ["suite.csv"]
    with pytest.raises(ValueError, match="missing columns"):  # never half-writes the file
        rows_to_csv([{"method": "m"}], path)  # type: ignore[list-item]
    assert rows_from_csv(path) == suite_rows
    assert [p.name for p in path.parent.iterdir()] == ["suite.csv"]


# -- calibrate_fpr -----------------------------------------------------------------------------


def test_calibrate_fpr_fast_path_interval_contains_true_rate(carriers):
    method = UniformNull()
    result = calibrate_fpr(method, carriers, n_keys=250, alpha=0.05, seed=1)
    assert method.verify_calls == 0  # the fast path was taken
    assert result["trials"] == 2000
    assert result["ci_low"] <= 0.05 <= result["ci_high"]
    assert result["ci_high"] - result["ci_low"] < 0.05
    assert result["fpr"] == result["detections"] / 2000


def test_calibrate_fpr_verify_loop_interval_contains_true_rate(carriers):
    method = AdditiveMark()
    alpha = 0.1
    # exact FPR: matches ~ Binomial(32, 1/2) on clean images with a random key
    true_fpr = sum(math.comb(32, k) for k in range(33) if binomial_sf(k, 32) <= alpha) / 2**32
    result = calibrate_fpr(method, carriers, n_keys=30, alpha=alpha, seed=0, batch_size=8)
    assert method.verify_calls == 30
    assert result["trials"] == 240 and result["unreadable"] == 0
    assert result["ci_low"] <= true_fpr <= result["ci_high"]
    default_alpha = calibrate_fpr(method, carriers, n_keys=2, seed=0)
    assert default_alpha["alpha"] == method.config.alpha


class KeylessConfig(AdditiveConfig):
    fpr: float = 0.25


class KeylessNull(AdditiveMark):
    """Declares a key-independent detector whose level is the config's ``fpr``."""

    Config = KeylessConfig
    keyed_detection = False
    detection_alpha_field = "fpr"


def test_calibrate_fpr_key_independent_detector_counts_images_not_keys(carriers):
    method = KeylessNull(KeylessConfig())
    result = calibrate_fpr(method, carriers, n_keys=50, alpha=0.1, seed=0, batch_size=8)
    assert method.verify_calls == 1  # one pass over the 8 images, not 50
    assert result["trials"] == len(carriers)
    assert result["detections"] == round(result["fpr"] * len(carriers))
    # the declared detection level (config.fpr), not config.alpha, is the default
    assert calibrate_fpr(method, carriers, seed=0)["alpha"] == 0.25


class OwnRule(AdditiveMark):
    """Declares no p-value level: its verdicts are judged by ``Verdict.detected``."""

    detection_alpha_field = None


def test_calibrate_fpr_without_a_level_counts_verdicts(carriers):
    own = OwnRule(AdditiveConfig(alpha=0.2))
    assert own.detection_alpha is None
    result = calibrate_fpr(own, carriers, n_keys=12, seed=3, batch_size=8)
    assert result["alpha"] is None and result["trials"] == 12 * len(carriers)
    # its rule is p <= config.alpha, so the count is that of the same keys at that level
    at_level = calibrate_fpr(AdditiveMark(AdditiveConfig(alpha=0.2)), carriers, n_keys=12,
                             seed=3, batch_size=8)
    assert result["detections"] == at_level["detections"] > 0


def test_calibrate_fpr_level_must_be_a_probability(carriers):
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        calibrate_fpr(AdditiveMark(), carriers, n_keys=1, alpha=1.5)


# -- plots -------------------------------------------------------------------------------------


def test_robustness_curves_one_panel_per_attack(tmp_path, carriers):
    rows = run_suite(AdditiveMark(), carriers[:4], KEY,
                     [("none", [None]), ("jpeg", [50, 90]), ("rotate", [0, 10]), ("combo", [None])])
    fig = robustness_curves(rows, "bit_accuracy")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert isinstance(fig, Figure)
    assert sorted(ax.get_title() for ax in visible) == ["jpeg", "rotate"]
    jpeg_ax = next(ax for ax in visible if ax.get_title() == "jpeg")
    assert list(jpeg_ax.lines[0].get_xdata()) == [50.0, 90.0]
    fig.savefig(tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0
    with pytest.raises(ValueError, match="no rows"):
        robustness_curves(rows, "psnr")


def test_example_grid_and_curve(tmp_path, carriers):
    marked = AdditiveMark().embed(carriers[:3], KEY)
    fig = example_grid(carriers[:3], marked, n=4, amplify=10)
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 9  # 3 rows × min(4, 3) columns
    residual = images[-1].images[0].get_array()
    assert residual.shape == (64, 64) and float(residual.max()) > 0
    fig.savefig(tmp_path / "grid.png")

    fig = curve({"round 1": ([0, 10, 20], [1.0, 0.8, 0.6]),
                 "round 2": ([0, 10, 20], [1.0, 0.9, 0.8])},
                xlabel="rotation (deg)", ylabel="bit accuracy", title="EM rounds")
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["round 1", "round 2"]
    assert ax.get_xlabel() == "rotation (deg)"
    single = curve([0.3, 1.0, 1.5], [0.6, 1.0, 0.9], "scale", "bit accuracy", "")
    assert list(single.axes[0].lines[0].get_ydata()) == [0.6, 1.0, 0.9]
    with pytest.raises(ValueError, match="2 x values but 3"):
        curve([1, 2], [1, 2, 3])
