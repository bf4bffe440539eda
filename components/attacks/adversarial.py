"""Adversarial attacks on a stamp scanner, over ``torchattacks`` (pinned 3.3.0).

The scanner is a 2-class classifier (class 1 = stamped). An attacker who wants
to forward a stamped image pushes it to "not stamped" (*removal*); one who
wants to block someone's clean image pushes it to "stamped" (*forgery*). With
two classes both are an untargeted attack away from the image's current
class, which is what ``labels`` is: the class to move away from
(``goal_labels``).

- ``apgd``: APGD L∞ (white box, Croce & Hein 2020), cross-entropy loss.
- ``square``: Square attack L∞ (black box, score-based, a query budget).
- ``apgd_eot``: the adaptive attack on a randomized-smoothing scanner: APGD
  on ``NoisyClassifier(classifier, σ)`` (fresh noise on every forward) with
  torchattacks' ``eot_iter`` averaging the gradient over noise draws.
- ``pgd``: fixed-step PGD (optionally on the noisy soft classifier: SmoothAdv), the
  inner attack of adversarial training.

All functions take and return B×3×H×W float tensors in [0, 1] and never move
farther than ``eps`` in L∞ from the input. They are deterministic for a given
``seed`` and leave the caller's global torch RNG state untouched
(torchattacks reseeds the global RNG; we fork it around each call).

Where torchattacks 3.3.0 falls short (each place says why):

- ``Attack.__init__`` reads the device from ``next(model.parameters())``;
  ``AttackModel`` gives parameter-free classifiers (plain callables, toys) a
  zero-size anchor parameter.
- APGD's ``dlr`` loss needs at least 3 classes (it reads the third-largest
  logit); a 2-class scanner uses ``ce``.
- APGD's default ``forward`` skips inputs the model misclassifies at the
  start and returns the first iterate that one forward misclassifies. For a
  randomized model a single noisy forward is a coin flip, so ``apgd_eot`` calls
  ``APGD.perturb(..., best_loss=True)`` instead: every input is attacked and
  the highest-loss iterate is kept, the loss being that of the EoT module
  (``noise_samples`` > 1 averages it over several draws).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Literal

import torch
import torchattacks
from torch import nn

Classifier = Callable[[torch.Tensor], torch.Tensor]  # B×3×H×W in [0, 1] → B×2 logits
Goal = Literal["remove", "forge"]

STAMPED, CLEAN = 1, 0
ATTACK_NAMES = ("apgd", "square", "apgd_eot")


def goal_labels(goal: Goal, batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Labels to pass to the attacks: the class the attacker moves away from.

    Args:
        goal: ``remove`` (stamped images → "not stamped") or ``forge`` (clean
            images → "stamped").
        batch_size: B.
        device: where the labels live.

    Returns:
        B int64 labels: all 1 for ``remove``, all 0 for ``forge``.
    """
    if goal not in ("remove", "forge"):
        raise ValueError(f"goal must be 'remove' or 'forge', got {goal!r}")
    value = STAMPED if goal == "remove" else CLEAN
    return torch.full((batch_size,), value, dtype=torch.int64, device=device)


def attack_label(name: str, eps: float) -> str:
    """MLflow-safe label of one attack at one L∞ budget: ``apgd_linf_8`` for ε = 8/255.

    Args:
        name: one of ``ATTACK_NAMES``.
        eps: L∞ budget on the [0, 1] scale (shown in 1/255 units).
    """
    if name not in ATTACK_NAMES:
        raise ValueError(f"unknown adversarial attack {name!r}; valid: {', '.join(ATTACK_NAMES)}")
    units = round(float(eps) * 255, 4)
    text = str(int(units)) if float(units).is_integer() else f"{units:g}"
    return f"{name}_linf_{text}"


class AttackModel(nn.Module):
    """``nn.Module`` view of a classifier for torchattacks.

    torchattacks reads the attack device from the model's first parameter, so
    a zero-size anchor parameter is registered first (on ``device``); a module
    classifier is registered as a child so ``eval()``/``train()`` reach it.

    Args:
        classifier: maps B×3×H×W to B×K logits (a module or a callable).
        device: where the inputs live.
    """

    def __init__(self, classifier: Classifier, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(0, device=device), requires_grad=False)
        self.classifier = classifier  # a Module becomes a child; a callable stays an attribute

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # b c h w → b k
        return self.classifier(x)


class NoisyClassifier(nn.Module):
    """A classifier under Gaussian input noise: the base of a smoothed scanner.

    (Not the evaluation attack ``attacks.image.GaussianNoise``, which noises images; this
    wraps a classifier, for randomized smoothing and Expectation over Transformation.)

    Every forward draws fresh noise ``N(0, σ²I)`` in the classifier's input
    space, or after ``transform`` when given (a scanner that resizes inside and
    certifies at its working size needs the resize there, else the noise would
    be low-passed by the resize and the attack would aim at the wrong
    distribution). With ``samples`` = m > 1 it returns the log of the mean
    softmax over m draws, i.e. the smoothed *soft* classifier of Salman et al.
    (2019), whose loss and gradient are far less noisy than a single draw's.

    Args:
        classifier: maps B×3×H×W to B×K logits.
        sigma: noise standard deviation (≥ 0; 0 = no noise).
        samples: noise draws averaged per forward (m ≥ 1).
        seed: seeds the module's own noise generator (reproducible, independent
            of the global RNG).
        transform: differentiable map of the inputs into the space where the
            smoothed classifier adds its noise (e.g. the method's resize to its
            working size); ``None`` = the input space. ``classifier`` then
            receives the transformed, noisy tensor.
    """

    def __init__(self, classifier: Classifier, sigma: float, samples: int = 1,
                 seed: int = 0, transform: Callable[[torch.Tensor], torch.Tensor] | None = None
                 ) -> None:
        super().__init__()
        self.transform = transform
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        self.classifier = classifier
        self.sigma = float(sigma)
        self.samples = int(samples)
        self.generator = torch.Generator().manual_seed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the noise sequence from ``seed``."""
        self.generator.manual_seed(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B×C×H×W → B×K: logits of one noisy draw (m = 1) or log mean softmax (m > 1)."""
        if self.transform is not None:
            x = self.transform(x)
        b = x.shape[0]
        m = self.samples
        batch = x.unsqueeze(1).expand(b, m, *x.shape[1:]).reshape(
            b * m, *x.shape[1:])  # (b m) c h w
        noise = torch.randn(batch.shape, generator=self.generator).to(batch)
        logits = self.classifier(batch + self.sigma * noise)  # (b m) k
        if m == 1:
            return logits
        probs = logits.softmax(dim=1).view(b, m, -1).mean(dim=1)  # b k
        return probs.clamp_min(1e-12).log()


class QueryCounter(nn.Module):
    """Counts the images a black-box attacker sends to ``classifier``.

    Attributes:
        images: total rows forwarded since the last ``reset``.
        calls: forward calls since the last ``reset``.
    """

    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        self.classifier = classifier
        self.images = 0
        self.calls = 0

    def reset(self) -> None:
        self.images = 0
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # b c h w → b k
        self.images += int(x.shape[0])
        self.calls += 1
        return self.classifier(x)


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG inside, restore the caller's state after."""
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _check(images: torch.Tensor, labels: torch.Tensor, eps: float) -> None:
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float B×C×H×W tensor, got {tuple(images.shape)}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")


def _project(adv: torch.Tensor, images: torch.Tensor, eps: float) -> torch.Tensor:
    """Guard the contract (L∞ ≤ eps, [0, 1]) against float drift in the library."""
    return torch.min(torch.max(adv, images - eps), images + eps).clamp(0, 1).detach()


def apgd(classifier: Classifier, images: torch.Tensor, labels: torch.Tensor, *,
         eps: float = 8 / 255, steps: int = 100, n_restarts: int = 1,
         seed: int = 0) -> torch.Tensor:
    """White-box APGD L∞ (``torchattacks.APGD``, cross-entropy loss).

    Args:
        classifier: maps B×3×H×W to B×2 logits (differentiable).
        images: B×3×H×W in [0, 1].
        labels: B classes to move away from (see ``goal_labels``).
        eps: L∞ budget on the [0, 1] scale.
        steps: APGD iterations per restart.
        n_restarts: random restarts (each on the inputs not yet fooled).
        seed: seeds the random start.

    Returns:
        B×3×H×W adversarial images in [0, 1], ``‖adv − images‖∞ ≤ eps``. An
        input the attack does not fool comes back unchanged.
    """
    _check(images, labels, eps)
    model = AttackModel(classifier, images.device)
    attack = torchattacks.APGD(model, norm="Linf", eps=float(eps), steps=int(steps),
                               n_restarts=int(n_restarts), seed=int(seed), loss="ce")
    with _seeded(seed, images.device):
        adv = attack(images.detach(), labels)
    return _project(adv, images, eps)


def pgd(classifier: Classifier, images: torch.Tensor, labels: torch.Tensor, *,
        eps: float = 8 / 255, steps: int = 10, alpha: float | None = None,
        sigma: float = 0.0, noise_samples: int = 1, seed: int = 0) -> torch.Tensor:
    """PGD L∞ with a random start (``torchattacks.PGD``, cross-entropy), for training.

    With ``sigma`` > 0 the attacked model is ``NoisyClassifier(classifier, sigma,
    noise_samples)``: PGD on the smoothed soft classifier (SmoothAdv, Salman et al. 2019;
    ``noise_samples`` is their m, fresh noise at every step). Cheap and fixed-cost, so it
    fits inside a training step; the evaluation's attacks are ``apgd`` / ``apgd_eot``.

    Args:
        classifier: maps B×3×H×W to B×2 logits (differentiable).
        images: B×3×H×W in [0, 1].
        labels: B classes to move away from (see ``goal_labels``).
        eps: L∞ budget on the [0, 1] scale.
        steps: PGD iterations.
        alpha: step size (default 2.5·eps / steps, Madry et al.'s rule).
        sigma: smoothing noise σ in the classifier's input space (0: no noise).
        noise_samples: noise draws averaged per forward (``sigma`` > 0).
        seed: seeds the random start and the noise.

    Returns:
        B×3×H×W adversarial images in [0, 1], ``‖adv − images‖∞ ≤ eps``.
    """
    _check(images, labels, eps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    target = (NoisyClassifier(classifier, sigma, samples=noise_samples, seed=seed)
              if sigma > 0 else classifier)
    model = AttackModel(target, images.device)
    attack = torchattacks.PGD(model, eps=float(eps), steps=int(steps),
                              alpha=float(alpha if alpha is not None else 2.5 * eps / steps),
                              random_start=True)
    with _seeded(seed, images.device):
        adv = attack(images.detach(), labels)
    return _project(adv, images, eps)


def square(classifier: Classifier, images: torch.Tensor, labels: torch.Tensor, *,
           eps: float = 8 / 255, queries: int = 1000, p_init: float = 0.8,
           seed: int = 0) -> torch.Tensor:
    """Black-box Square attack L∞ (``torchattacks.Square``, margin loss).

    Only logits are read (no gradient). Per restart it spends at most
    ``queries`` forwards of each input still correctly classified, plus three
    bookkeeping forwards (initial prediction, random start, final check);
    wrap ``classifier`` in ``QueryCounter`` to measure.

    Args:
        classifier: maps B×3×H×W to B×2 logits.
        images: B×3×H×W in [0, 1].
        labels: B classes to move away from.
        eps: L∞ budget on the [0, 1] scale.
        queries: query budget per input.
        p_init: initial share of pixels a square covers.
        seed: seeds the random search.

    Returns:
        B×3×H×W adversarial images in [0, 1] (unchanged where not fooled).
    """
    _check(images, labels, eps)
    if queries < 1:
        raise ValueError(f"queries must be >= 1, got {queries}")
    model = AttackModel(classifier, images.device)
    attack = torchattacks.Square(model, norm="Linf", eps=float(eps), n_queries=int(queries),
                                 n_restarts=1, p_init=float(p_init), loss="margin",
                                 seed=int(seed))
    with _seeded(seed, images.device), torch.no_grad():
        adv = attack(images.detach(), labels)
    return _project(adv, images, eps)


def apgd_eot(classifier: Classifier, images: torch.Tensor, labels: torch.Tensor, *,
             sigma: float, eps: float = 8 / 255, steps: int = 100, eot_iter: int = 20,
             noise_samples: int = 1, seed: int = 0,
             transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Adaptive white-box attack on a smoothed scanner: APGD with EoT over the noise.

    ``torchattacks.APGD`` runs on ``NoisyClassifier(classifier, sigma,
    noise_samples)`` with ``eot_iter`` gradient samples per step, and keeps
    the highest-loss iterate of every input (``perturb(best_loss=True)``, see
    the module docstring for why not the default ``forward``).

    Args:
        classifier: the *base* classifier (no noise inside), B×3×H×W → B×2 logits.
        images: B×3×H×W in [0, 1].
        labels: B classes to move away from.
        sigma: the smoothing noise level (> 0), in the classifier's input space.
        eps: L∞ budget on the [0, 1] scale.
        steps: APGD iterations.
        eot_iter: noise draws whose gradients are averaged per step.
        noise_samples: draws averaged inside each forward (log mean softmax).
        seed: seeds the random start and the noise.
        transform: maps inputs to the space where the noise is added (see
            ``NoisyClassifier``); ``None`` = the classifier's input space.

    Returns:
        B×3×H×W adversarial images in [0, 1], ``‖adv − images‖∞ ≤ eps``.
    """
    _check(images, labels, eps)
    if sigma <= 0:
        raise ValueError(f"apgd_eot attacks a smoothed scanner: sigma must be > 0, got {sigma}")
    if eot_iter < 1:
        raise ValueError(f"eot_iter must be >= 1, got {eot_iter}")
    noisy = NoisyClassifier(classifier, sigma, samples=noise_samples, seed=seed,
                          transform=transform)
    model = AttackModel(noisy, images.device)
    attack = torchattacks.APGD(model, norm="Linf", eps=float(eps), steps=int(steps),
                               n_restarts=1, seed=int(seed), loss="ce", eot_iter=int(eot_iter))
    given_training = model.training
    model.eval()
    try:
        with _seeded(seed, images.device):
            _, adv = attack.perturb(images.detach().clone(), labels.detach().clone(),
                                    best_loss=True)
    finally:
        model.train(given_training)
    return _project(adv, images, eps)
