"""Adversarial attacks (torchattacks wrappers), their evaluation rows and plots, on toy scanners.

The toy scanner is linear: score z(x) = 255 · mean(w ⊙ x) − b with a ±1 pattern
w, so an L∞ perturbation of ε moves z by at most 255·ε (exactly that for
x + ε·w away from the clip bounds). Clean images sit at z = −2, stamped ones
at z = +2: ε = 8/255 can flip every decision, ε = 1/255 none.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from matplotlib.figure import Figure
from torch import nn

from neuralmark.components import smoothing
from neuralmark.components.adversarial_evaluation import (
    adversarial_rows,
    certified_rows,
    scanner_decisions,
)
from neuralmark.components.attacks.adversarial import (
    AttackModel,
    NoisyClassifier,
    QueryCounter,
    apgd,
    apgd_eot,
    attack_label,
    goal_labels,
    square,
)
from neuralmark.components.evaluation import COLUMNS, rows_from_csv, rows_to_csv, summarize
from neuralmark.components.plots import attack_success_plot, certified_accuracy_plot

SHAPE = (3, 16, 16)
MARGIN = 2.0  # score units (1/255 of mean projection) on each side of the boundary


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class LinearScanner(nn.Module):
    """B×3×16×16 → B×2 logits [0, z], z = 255 · mean(w ⊙ (x − 1/2))."""

    def __init__(self, pattern: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("w", pattern)  # 1 c h w, ±1
        self.gain = nn.Parameter(torch.ones(()), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = 255 * self.gain * ((x - 0.5) * self.w).flatten(1).mean(dim=1)  # b
        return torch.stack([torch.zeros_like(z), z], dim=1)


class ToyScanner:
    """The anti_forward scanner API over ``LinearScanner`` (smoothing from components)."""

    key = "toy_scanner"

    def __init__(self, net: nn.Module, sigma: float) -> None:
        self.net = net
        self.config = SimpleNamespace(sigma=sigma, variant="rs" if sigma else "baseline")
        self.smoothed = sigma > 0
        self.working_inputs: list[tuple[int, ...]] = []

    def classifier_module(self) -> nn.Module:
        return self.net

    def scanner_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def to_grid(self, images: torch.Tensor) -> torch.Tensor:
        """The toy scans and certifies at the input size: identity (recorded)."""
        self.working_inputs.append(tuple(images.shape))
        return images

    def certify(self, images, *, n0=None, n=None, certify_alpha=None, generator=None):
        return smoothing.certify(self.net, images, self.config.sigma, n0=n0 or 64, n=n or 200,
                                 alpha=certify_alpha or 0.001, generator=generator)

    def verify(self, images, key=None):
        """Detected iff the margin exceeds 1 (a stricter rule than the argmax)."""
        with torch.no_grad():
            z = self.net(images)[:, 1]
        return [SimpleNamespace(detected=bool(v > 1.0)) for v in z]


@pytest.fixture(scope="module")
def toy():
    """(scanner, clean N×3×16×16, stamped N×3×16×16) with scores exactly ∓MARGIN."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randint(0, 2, (1, *SHAPE), generator=gen).float() * 2 - 1  # 1 c h w
    x = 0.3 + 0.4 * torch.rand(12, *SHAPE, generator=gen)  # n c h w, away from the clip bounds
    proj = ((x - 0.5) * w).flatten(1).mean(dim=1).view(-1, 1, 1, 1)  # n 1 1 1
    clean = x - proj * w - MARGIN / 255 * w
    stamped = clean + 2 * MARGIN / 255 * w
    net = LinearScanner(w)
    return net, clean, stamped


def test_toy_scores_are_as_built(toy):
    net, clean, stamped = toy
    with torch.no_grad():
        assert torch.allclose(net(clean)[:, 1], torch.full((12,), -MARGIN), atol=1e-3)
        assert torch.allclose(net(stamped)[:, 1], torch.full((12,), MARGIN), atol=1e-3)
    assert clean.min() >= 0 and stamped.max() <= 1


def test_attack_label_and_goal_labels():
    assert attack_label("apgd", 8 / 255) == "apgd_linf_8"
    assert attack_label("apgd_eot", 4 / 255) == "apgd_eot_linf_4"
    assert attack_label("square", 0.5 / 255) == "square_linf_0.5"
    assert goal_labels("remove", 3).tolist() == [1, 1, 1]
    assert goal_labels("forge", 2).tolist() == [0, 0]
    with pytest.raises(ValueError):
        attack_label("fgsm", 8 / 255)
    with pytest.raises(ValueError):
        goal_labels("steal", 1)


def test_apgd_at_eps_zero_changes_nothing(toy):
    net, _, stamped = toy
    labels = goal_labels("remove", len(stamped))
    adv = apgd(net, stamped, labels, eps=0.0, steps=10)
    assert torch.equal(adv, stamped)
    # not only through our final projection: the library itself moves nothing at ε = 0
    raw = torchattacks.APGD(AttackModel(net), eps=0.0, steps=10, loss="ce")(stamped, labels)
    assert torch.equal(raw, stamped)


def _decisions(net, images):
    with torch.no_grad():
        return net(images).argmax(dim=1)


def test_apgd_removes_the_stamp_on_a_linear_scanner(toy):
    net, _, stamped = toy
    labels = goal_labels("remove", len(stamped))
    before = (_decisions(net, stamped) != 1).float().mean().item()
    strong = apgd(net, stamped, labels, eps=8 / 255, steps=20, seed=1)
    weak = apgd(net, stamped, labels, eps=1 / 255, steps=20, seed=1)
    success_strong = (_decisions(net, strong) != 1).float().mean().item()
    success_weak = (_decisions(net, weak) != 1).float().mean().item()
    assert before == 0.0
    assert success_strong == 1.0  # 8 score units of budget against a margin of 2
    assert success_weak == 0.0  # 1 unit cannot cross a margin of 2
    for adv, eps in ((strong, 8 / 255), (weak, 1 / 255)):
        assert (adv - stamped).abs().max() <= eps + 1e-6
        assert adv.min() >= 0 and adv.max() <= 1


def test_apgd_forges_on_clean_images(toy):
    net, clean, _ = toy
    adv = apgd(net, clean, goal_labels("forge", len(clean)), eps=8 / 255, steps=20)
    assert (_decisions(net, adv) == 1).all()


def test_attacks_are_seeded_and_leave_the_global_rng_alone(toy):
    net, _, stamped = toy
    labels = goal_labels("remove", len(stamped))
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = apgd(net, stamped, labels, eps=4 / 255, steps=5, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = apgd(net, stamped, labels, eps=4 / 255, steps=5, seed=7)
    c = square(net, stamped, labels, eps=4 / 255, queries=20, seed=7)
    d = square(net, stamped, labels, eps=4 / 255, queries=20, seed=7)
    assert torch.equal(a, b) and torch.equal(c, d)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_square_stays_within_its_query_budget(toy):
    net, _, stamped = toy
    labels = goal_labels("remove", len(stamped))
    counter = QueryCounter(net)
    budget = 300
    adv = square(counter, stamped, labels, eps=8 / 255, queries=budget, seed=0)
    # ≤ budget random-search queries per image + 3 bookkeeping forwards (start, init, check)
    assert 0 < counter.images <= len(stamped) * (budget + 3)
    assert (adv - stamped).abs().max() <= 8 / 255 + 1e-6
    success = (_decisions(net, adv) != 1).float().mean().item()
    assert success > 0.5  # measured 1.0 here: black box, scores only
    counter.reset()
    square(counter, stamped, labels, eps=8 / 255, queries=5, seed=0)
    assert counter.images <= len(stamped) * (5 + 3)


def test_noisy_classifier_draws_fresh_noise(toy):
    net, _, stamped = toy
    noisy = NoisyClassifier(net, sigma=0.25, seed=3)
    first, second = noisy(stamped), noisy(stamped)
    assert not torch.equal(first, second)
    noisy.reseed(3)
    assert torch.equal(noisy(stamped), first)
    assert torch.equal(NoisyClassifier(net, sigma=0.0)(stamped), net(stamped))
    soft = NoisyClassifier(net, sigma=0.25, samples=16, seed=0)(stamped)  # b k log-probs
    assert soft.shape == (len(stamped), 2)
    assert torch.allclose(soft.exp().sum(dim=1), torch.ones(len(stamped)), atol=1e-5)
    with pytest.raises(ValueError):
        NoisyClassifier(net, sigma=-1.0)


def test_noise_goes_where_the_method_certifies(toy):
    net, _, stamped = toy
    seen = []

    def spy(x):
        seen.append(tuple(x.shape[-2:]))
        return net(F.interpolate(x, size=SHAPE[1:], mode="nearest"))

    def to_working(x):
        return F.interpolate(x, size=(8, 8), mode="bilinear", antialias=True)

    NoisyClassifier(spy, 0.5, transform=to_working)(stamped)
    assert seen == [(8, 8)]  # the noise is added after the map, at 8×8
    # the adaptive attack adds its noise after the method's own map
    method = ToyScanner(net, sigma=0.25)
    adversarial_rows(method, stamped[:2], None, attacks=("apgd_eot",), steps=1, eot_iter=1,
                     smoothing_n=20, seed=0)
    assert method.working_inputs and all(s[1:] == SHAPE for s in method.working_inputs)
    plain = ToyScanner(net, sigma=0.0)  # no smoothing: no noise, no map
    adversarial_rows(plain, stamped[:2], None, attacks=("apgd",), steps=1, seed=0)
    assert plain.working_inputs == []


def test_adaptive_attack_on_the_smoothed_toy(toy):
    net, _, stamped = toy
    sigma = 0.25
    labels = goal_labels("remove", len(stamped))
    gen = torch.Generator().manual_seed(0)
    before = smoothing.predict(net, stamped, sigma, n=200, alpha=0.001, generator=gen)
    adv = apgd_eot(net, stamped, labels, sigma=sigma, eps=8 / 255, steps=10, eot_iter=4,
                   noise_samples=4, seed=0)
    after = smoothing.predict(net, adv, sigma, n=200, alpha=0.001, generator=gen)
    assert (adv - stamped).abs().max() <= 8 / 255 + 1e-6
    assert sum(d == 1 for d in before) >= 10  # the smoothed toy detects its stamps
    assert sum(d == 1 for d in after) == 0  # a linear scanner stays linear when smoothed
    with pytest.raises(ValueError):
        apgd_eot(net, stamped, labels, sigma=0.0)


def test_adversarial_rows_on_the_plain_toy(toy, tmp_path):
    net, clean, stamped = toy
    method = ToyScanner(net, sigma=0.0)
    rows = adversarial_rows(method, stamped, clean, steps=10, queries=100, seed=0,
                            also_verify=True)
    assert all(set(r) == set(COLUMNS) for r in rows)
    labels = {r["label"] for r in rows}
    assert labels == {"none", "apgd_linf_8", "square_linf_8"}  # no noise: no apgd_eot
    flat = summarize(rows)
    assert flat["detection_rate_unattacked/none"] == 1.0
    assert flat["false_positive_rate_unattacked/none"] == 0.0
    assert flat["attack_success_rate/apgd_linf_8"] == 1.0
    assert flat["detection_rate_adversarial/apgd_linf_8"] == 0.0
    assert flat["forgery_success_rate/apgd_linf_8"] == 1.0
    assert flat["linf_distance_max/apgd_linf_8"] <= 8 / 255 + 1e-6
    assert 0 < flat["queries_per_image/square_linf_8"] <= 100 + 3
    # the same adversarial images judged by verify (margin > 1, not the argmax)
    assert flat["detection_rate_unattacked_verify/none"] == 1.0
    assert flat["false_positive_rate_unattacked_verify/none"] == 0.0
    assert flat["attack_success_rate_verify/apgd_linf_8"] == 1.0
    assert flat["forgery_success_rate_verify/apgd_linf_8"] <= flat[
        "forgery_success_rate/apgd_linf_8"]
    back = rows_from_csv(rows_to_csv(rows, tmp_path / "adv.csv"))
    assert [(r["label"], r["metric"]) for r in back] == [(r["label"], r["metric"]) for r in rows]
    fig = attack_success_plot(rows)
    assert isinstance(fig, Figure) and len(fig.axes) == 2


def test_adversarial_rows_judge_the_smoothed_decision(toy):
    net, clean, stamped = toy
    method = ToyScanner(net, sigma=0.25)
    rows = adversarial_rows(method, stamped[:6], clean[:6], attacks=("apgd", "apgd_eot"),
                            steps=8, eot_iter=3, seed=0, smoothing_n=200, name="toy_rs")
    flat = summarize(rows)
    assert {r["method"] for r in rows} == {"toy_rs"}
    assert "abstain_rate_unattacked/none" in flat
    assert "abstain_rate_adversarial/apgd_eot_linf_8" in flat
    assert flat["detection_rate_unattacked/none"] >= 0.5  # p ≈ Φ(2/2.3) per noisy vote
    assert flat["detection_rate_adversarial/apgd_eot_linf_8"] == 0.0
    assert flat["detection_rate_adversarial/apgd_linf_8"] == 0.0


def test_a_method_that_does_not_smooth_is_judged_on_its_argmax(toy):
    net, clean, stamped = toy
    method = ToyScanner(net, sigma=0.25)
    method.smoothed = False  # σ in the config, but verify does not smooth
    rows = adversarial_rows(method, stamped[:4], clean[:4], attacks=("apgd", "apgd_eot"),
                            steps=5, seed=0)
    assert {r["label"] for r in rows} == {"none", "apgd_linf_8"}
    assert not any(r["metric"].startswith("abstain") for r in rows)


def test_smoothed_decisions_abstain_where_the_base_classifier_is_confident(toy):
    net, _, stamped = toy
    # σ = 2 spreads a noisy vote's score by ~18 units around +2: P(vote 1) ≈ 0.54, no certificate
    method = ToyScanner(net, sigma=2.0)
    assert (_decisions(net, stamped) == 1).all()
    assert scanner_decisions(method, stamped, smoothing_n=200, seed=0) == [None] * len(stamped)
    rows = adversarial_rows(method, stamped, None, attacks=("apgd",), steps=3,
                            smoothing_n=200, seed=0)
    flat = summarize(rows)
    assert flat["detection_rate_unattacked/none"] == 0.0
    assert flat["abstain_rate_unattacked/none"] == 1.0
    assert "attack_success_rate/apgd_linf_8" not in flat  # nothing detected: nothing to remove
    assert "false_positive_rate_unattacked/none" not in flat  # no clean images given


def test_certified_rows_and_plot(toy):
    net, clean, stamped = toy
    method = ToyScanner(net, sigma=0.25)
    radii = [0.0, 0.05, 0.1, 0.2, 0.5]
    rows = certified_rows(method, stamped, clean, radii, n0=32, n=200, certify_alpha=0.001,
                          seed=0)
    acc = [r["value"] for r in rows if r["metric"] == "certified_accuracy"]
    assert len(acc) == len(radii)
    assert all(a >= b for a, b in zip(acc, acc[1:], strict=False))  # non-increasing in r
    # the toy's true robust radius is MARGIN/255 · √d: nothing certifies beyond it
    assert MARGIN / 255 * math.sqrt(3 * 16 * 16) < 0.5
    assert acc[-1] == 0.0
    # recompute from certificates drawn with the same seed
    gen = torch.Generator().manual_seed(0)
    certs = method.certify(stamped, n0=32, n=200, certify_alpha=0.001, generator=gen)
    certs += method.certify(clean, n0=32, n=200, certify_alpha=0.001, generator=gen)
    assert acc == smoothing.certified_accuracy(certs, [1] * 12 + [0] * 12, radii)
    flat = summarize(rows)
    assert "certified_accuracy_stamped/certified_l2_0.1" in flat
    assert "abstain_rate/certified_l2" in flat
    fig = certified_accuracy_plot(rows)
    assert isinstance(fig, Figure) and len(fig.axes[0].lines) == 3
    with pytest.raises(ValueError):
        certified_rows(ToyScanner(net, sigma=0.0), stamped, clean, radii)
    with pytest.raises(ValueError):
        certified_accuracy_plot([r for r in rows if r["metric"] == "abstain_rate"])


def test_rows_on_the_anti_forward_smoke_model():
    """The real scanner API (untrained smoke config): every variant yields its rows."""
    import importlib
    import importlib.util

    if importlib.util.find_spec("neuralmark.components.methods.anti_forward") is None:
        pytest.skip("components/methods/anti_forward.py is not there yet")
    # only this method
    module = importlib.import_module("neuralmark.components.methods.anti_forward")
    cls = next(v for v in vars(module).values()
               if isinstance(v, type) and getattr(v, "key", None) == "anti_forward")
    smoke = cls.smoke_config
    images = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    for variant, sigma in (("baseline", 0.0), ("rs", 0.5)):
        # baseline keeps the default σ in its config but does not smooth (method.smoothed)
        method = cls(cls.Config(**{**smoke, "variant": variant,
                                   "payload_bits": 0, "message_bits": 0}))
        stamped = method.embed(images, None)
        rows = adversarial_rows(method, stamped, images, steps=2, queries=4, eot_iter=2,
                                smoothing_n=20, smoothing_n0=4, certify_alpha=0.05, seed=0)
        flat = summarize(rows)
        labels = {r["label"] for r in rows}
        expected = {"none", "apgd_linf_8", "square_linf_8"} | (
            {"apgd_eot_linf_8"} if sigma else set())
        assert labels == expected
        assert all(flat[f"linf_distance_max/{lab}"] <= 8 / 255 + 1e-6
                   for lab in expected - {"none"})
        assert ("abstain_rate_unattacked/none" in flat) == bool(sigma)
        if sigma:
            cert = certified_rows(method, stamped, images, [0.0, 0.25], n0=4, n=20,
                                  certify_alpha=0.05)
            assert {r["label"] for r in cert} == {"certified_l2_0", "certified_l2_0.25",
                                                 "certified_l2"}
