"""The one interface every watermarking method implements.

Tensors are ``float32``, ``B×C×H×W``, values in ``[0, 1]``.

A *content* method (``pgd_signer``, ``anti_forward``, ``output_mark``,
``visible_gan``) marks images: ``embed(images, key) -> images`` and
``verify(images, key) -> list[Verdict]``. A *model* method (``trigger_key``)
marks networks: ``embed_model(model, key) -> model`` and
``verify_model(model_or_outputs, key) -> Verdict``.

Every method is built from a frozen pydantic config (``extra="forbid"``, so a
typo in YAML is an error naming the field), trains with ``fit(data, callbacks)``
and saves/loads a bundle directory (``config.json`` + ``weights.safetensors``
[+ key material]) with atomic writes.
"""

from __future__ import annotations

import abc
import enum
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors.torch import load_file, save_file

from neuralmark.components.errors import InputError, describe_validation_error
from neuralmark.components.files import atomic_write_dir


class MethodConfig(BaseModel):
    """Base of every method config: frozen, unknown fields are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: str
    seed: int = 0


@dataclass(frozen=True)
class WatermarkKey:
    """What the owner holds.

    Attributes:
        secret: the secret string; scrambles the payload so that without it the
            mark reads as coin flips.
        message: optional integer ID carried by methods that have a payload. On
            ``verify``, a given message is a *claim* (exact binomial p-value over
            all bits); ``None`` means "decode whatever is there" (p-value
            corrected for the number of possible messages).
    """

    secret: str
    message: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.secret, str) or not self.secret.strip():
            raise ValueError("a watermark key needs a non-empty secret")
        if self.message is not None and (not isinstance(self.message, int) or self.message < 0):
            raise ValueError(f"message must be a non-negative integer, got {self.message!r}")


def random_keys(n_keys: int, generator: torch.Generator) -> list[WatermarkKey]:
    """``n_keys`` keys with random secrets, each claiming message 0: the null's keys.

    The false-positive evaluation verifies clean images against these (a wrong owner's
    key); a method's ``null_p_values`` draws the same keys from the same generator, so
    its fast path and the ``verify`` loop test the very same (image, key) pairs. Message 0
    is claimed as the evaluation key does by default; methods without a payload ignore it.

    Args:
        n_keys: how many keys (>= 0).
        generator: a CPU generator; each key consumes four 32-bit draws.

    Returns:
        The keys, secrets ``"null-<32 hex digits>"``.
    """
    if n_keys < 0:
        raise ValueError(f"n_keys must be >= 0, got {n_keys}")
    draws = torch.randint(0, 2**32, (n_keys, 4), generator=generator).tolist()
    return [WatermarkKey("null-" + "".join(f"{v:08x}" for v in row), 0) for row in draws]


class Status(enum.StrEnum):
    """Three-way answer; ``neuralmark verify`` exits 0 / 1 / 2 for these."""

    DETECTED = "detected"
    NOT_DETECTED = "not_detected"
    UNREADABLE = "unreadable"


@dataclass
class Verdict:
    """The answer of ``verify`` for one image (or one model).

    Attributes:
        detected: the method's decision; never true unless ``p_value <=
            method.detection_alpha`` when the method declares that level.
        score: method-specific detection score, higher = more watermark-like
            (pgd_signer: fraction of matching bits).
        p_value: probability of a score at least this high on an unmarked input,
            or ``None`` with ``reason`` saying why it cannot be given.
        status: detected / not_detected / unreadable.
        reason: human-readable explanation (always set when not detected).
        bits: decoded hard bits (0/1 ints) when the method carries bits.
        payload: decoded message ID; only set when ``detected`` (never a
            confident payload from an unmarked image).
        bit_accuracy: fraction of bits equal to the expected word, when the
            expected word is known (claimed message or message-free signature).
        certified_radius: L2 radius certified by randomized smoothing, if any.
        extra: method-specific numbers (JSON-serialisable).
    """

    detected: bool
    score: float
    p_value: float | None
    status: Status = Status.NOT_DETECTED
    reason: str = ""
    bits: list[int] | None = None
    payload: int | None = None
    bit_accuracy: float | None = None
    certified_radius: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.status = Status(self.status)  # accept "detected" etc. from JSON

    @classmethod
    def unreadable(cls, reason: str) -> Verdict:
        return cls(detected=False, score=0.0, p_value=None, status=Status.UNREADABLE,
                   reason=reason)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status.value
        return d


class Callback(Protocol):
    """Training progress sink. Steps connect it to MLflow, the CLI to a bar."""

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None: ...

    def on_figure(self, step: int, name: str, figure: Any) -> None: ...

    def on_progress(self, done: int, total: int, desc: str = "") -> None: ...


class Callbacks:
    """Fan-out over several callbacks; missing hooks are skipped."""

    def __init__(self, callbacks: Iterable[Any] = ()) -> None:
        self.callbacks = list(callbacks)

    @classmethod
    def of(cls, callbacks: Callbacks | Iterable[Any] | None) -> Callbacks:
        """``callbacks`` as a ``Callbacks``: itself if it is one, else a fan-out over them."""
        return callbacks if isinstance(callbacks, Callbacks) else cls(callbacks or ())

    def _emit(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(*args)

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self._emit("on_metrics", step, metrics)

    def on_figure(self, step: int, name: str, figure: Any) -> None:
        self._emit("on_figure", step, name, figure)

    def on_progress(self, done: int, total: int, desc: str = "") -> None:
        self._emit("on_progress", done, total, desc)


def pick_device(preference: str = "auto") -> torch.device:
    """``cuda`` when present (GPU nodes), else CPU."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


def check_images(images: torch.Tensor, min_size: int = 1) -> None:
    """Validate a ``B×3×H×W`` float batch in ``[0, 1]``; raise ``InputError``."""
    if not isinstance(images, torch.Tensor):
        raise InputError(f"expected a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise InputError(f"expected images of shape B×3×H×W, got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise InputError(f"expected float images in [0, 1], got dtype {images.dtype}")
    h, w = images.shape[-2:]
    if min(h, w) < min_size:
        raise InputError(f"image is {w}×{h} px; this method needs at least {min_size} px a side")
    if images.numel() and (images.min() < -1e-4 or images.max() > 1 + 1e-4):
        raise InputError("image values must lie in [0, 1]")
    if not torch.isfinite(images).all():
        raise InputError("image contains NaN or infinite values")


def resize_square(x: torch.Tensor, size: int, clamp: bool = True) -> torch.Tensor:
    """Resize ``B×C×H×W`` to ``B×C×size×size``: antialiased bilinear, differentiable.

    The working-size view every method reads; identity (same tensor) when the
    images are already ``size``². ``clamp`` keeps the result in [0, 1].
    """
    if tuple(x.shape[-2:]) == (size, size):
        return x
    y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return y.clamp(0, 1) if clamp else y


class WatermarkMethod(abc.ABC):
    """Base class. Subclasses set ``key`` (registry name) and ``Config``.

    The detection contract every method declares (``tests/test_contract.py`` checks
    that each registered method honours it; evaluators read it, never probe for it):

    - ``detection_alpha``: the p-value level of ``verify`` (read from the config field
      ``detection_alpha_field``), or ``None`` when ``verify`` decides by a score rule
      of its own;
    - ``keyed_detection``: whether the key decides detection;
    - ``null_p_values``: optional fast p-values of clean images against random keys;
    - ``has_scanner``: whether there is a scanner classifier for adversarial evaluation.
    """

    #: registry name (set by ``registry.register``; empty on an unregistered class)
    key: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]]
    kind: ClassVar[str] = "content"  # or "model"
    #: does a wrong key change the verdict? ``True`` for a keyed mark (the wrong key reads
    #: coin flips); ``False`` for a detector that finds every mark whoever made it
    #: (anti_forward's stamp), where another key is not another false-positive trial
    keyed_detection: ClassVar[bool] = True
    #: the config field holding the p-value level of ``verify`` (``detection_alpha``);
    #: ``None`` when ``verify`` decides by a score rule of its own (output_mark: NC above
    #: a threshold), not at a p-value level
    detection_alpha_field: ClassVar[str | None] = "alpha"
    #: whether the method is a detector with a scanner classifier that the adversarial
    #: evaluation attacks (``classifier_module``, ``scanner_logits``, ``certify``, ``smoothed``
    #: and ``config.sigma``: ``neuralmark.components.adversarial_evaluation.Scanner``)
    has_scanner: ClassVar[bool] = False
    #: smallest image side the method accepts
    min_size: ClassVar[int] = 64
    #: config overrides that make the method tiny and fast (contract tests, smoke runs)
    smoke_config: ClassVar[dict[str, Any]] = {}
    #: whether ``fit`` also wants the val split at its native size, as
    #: ``data["calibration"]`` (a detector calibrated on the resolution it will verify)
    native_calibration: ClassVar[bool] = False
    #: how to train a method that the generic image training pipeline cannot
    #: (e.g. it needs (A, B) pairs); empty when that pipeline is the way
    own_pipeline: ClassVar[str] = ""
    #: whether ``fit`` trains data-parallel under torchrun (``components/distributed.py``:
    #: each process its shard of every global batch); a method without it trains in one
    #: process, and the training step refuses to start several for it
    data_parallel: ClassVar[bool] = False
    #: config fields a bundle may still carry from an earlier version, each with why it was
    #: removed; ``from_bundle`` names them (old bundle, what changed, retrain) instead of
    #: pydantic's bare "Extra inputs are not permitted"
    removed_fields: ClassVar[dict[str, str]] = {}
    #: config fields a bundle of this version always has → why (the change they mark): a
    #: bundle without one predates the change, and ``from_bundle`` refuses it naming why
    #: (a default would load the old weights as if they had been made under the change)
    required_fields: ClassVar[dict[str, str]] = {}

    def __init__(self, config: MethodConfig) -> None:
        self.config = config
        self.device = torch.device("cpu")

    # -- modules -----------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        """Named trainable networks; their state dicts form the bundle weights."""
        return {}

    def to(self, device: str | torch.device) -> WatermarkMethod:
        self.device = torch.device(device)
        for m in self.modules().values():
            m.to(self.device)
        return self

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for m in self.modules().values() for p in m.parameters()]

    # -- detection contract -------------------------------------------------
    @property
    def detection_alpha(self) -> float | None:
        """The p-value level of ``verify``, or ``None`` when it decides by a score rule.

        Contract: a verdict is ``detected`` only if its ``p_value <= detection_alpha``. A
        method may ask more than that (anti_forward also certifies the smoothed scanner's
        answer), never less, so the share of clean (image, key) trials with ``p <=
        detection_alpha`` bounds the false-positive rate of ``verify``. Read from the config
        field ``detection_alpha_field`` (``config.alpha`` unless a method names another).

        Raises:
            TypeError: the method names a field its config does not have.
        """
        name = self.detection_alpha_field
        if name is None:
            return None
        if name not in type(self.config).model_fields:
            raise TypeError(f"{type(self).__name__}.detection_alpha_field is {name!r}, which "
                            f"is not a field of {type(self.config).__name__}")
        return float(getattr(self.config, name))

    def null_p_values(self, images: torch.Tensor, n_keys: int,
                      generator: torch.Generator) -> torch.Tensor | None:
        """Fast p-values of ``images`` against ``n_keys`` random keys, or ``None``.

        Contract: element ``(i, j)`` is the p-value ``verify(images[i:i + 1], keys[j])``
        would give, with ``keys = random_keys(n_keys, generator)``; NaN where the image is
        unreadable. A method whose decoding does not depend on the key offers this to
        calibrate false-positive rates over thousands of keys with one decode per image.

        Args:
            images: B×3×H×W clean images in [0, 1].
            n_keys: K random keys.
            generator: the keys' generator (see ``random_keys``).

        Returns:
            B×K float64 p-values, or ``None`` (the default: not available, and the
            evaluator calls ``verify`` once per random key).
        """
        return None

    # -- content methods ---------------------------------------------------
    def embed(self, images: torch.Tensor, key: WatermarkKey) -> torch.Tensor:
        """Mark ``images`` (B×3×H×W in [0,1]); same shape and range out."""
        raise TypeError(f"{self.key} is not a content method")

    def verify(self, images: torch.Tensor, key: WatermarkKey) -> list[Verdict]:
        """One ``Verdict`` per image of ``images`` (B×3×H×W in [0,1])."""
        raise TypeError(f"{self.key} is not a content method")

    # -- model methods -----------------------------------------------------
    def embed_model(self, model: torch.nn.Module, key: WatermarkKey) -> torch.nn.Module:
        raise TypeError(f"{self.key} is not a model method")

    def verify_model(self, model_or_outputs: Any, key: WatermarkKey) -> Verdict:
        raise TypeError(f"{self.key} is not a model method")

    # -- method-specific evaluation (what only this method measures) ------------------
    def evaluation_rows(self, clean: torch.Tensor, marked: torch.Tensor,
                        seed: int = 0) -> list[dict[str, Any]]:
        """Tidy rows (``evaluation.COLUMNS``) of measurements only this method has.

        ``robustness_report`` adds them to the suite's rows, so they reach the summary, the
        gate (``GatePolicy.min_metric`` / ``max_metric``), MLflow and ``robustness.csv``.
        Metric names must not be ``psnr`` / ``ssim`` (the summary's own). None by default.

        Args:
            clean: N×3×H×W held-out images in [0, 1].
            marked: the same images marked with the evaluation key.
            seed: seeds any random draw.
        """
        return []

    def evaluation_figures(self, clean: torch.Tensor, marked: torch.Tensor) -> dict[str, Any]:
        """Figures of this method's own measurements (name → matplotlib Figure); none here."""
        return {}

    def evaluation_markdown(self) -> str:
        """Markdown tables of this method's own measurements for ``report.md``; empty here."""
        return ""

    # -- training (every method must provide both) ---------------------------
    @abc.abstractmethod
    def fit(self, data: Any, callbacks: Callbacks | Sequence[Any] = ()) -> dict[str, float]:
        """Train; report through callbacks; return final metrics."""

    @abc.abstractmethod
    def training_loss(self, images: torch.Tensor) -> torch.Tensor:
        """One differentiable loss over all trainable parts (for gradient tests)."""

    def with_config(self, **changes: Any) -> WatermarkMethod:
        """Same weights, config fields changed (validated; e.g. a signing budget)."""
        try:
            config = type(self.config).model_validate(
                {**self.config.model_dump(), **changes})
        except ValidationError as err:
            raise InputError(f"invalid {self.key} setting: "
                             f"{describe_validation_error(err)}") from err
        other = type(self)(config)
        for name, mod in self.modules().items():
            other.modules()[name].load_state_dict(mod.state_dict())
        other.load_extra_state(self.extra_state())
        return other.to(self.device)

    # -- bundles -----------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        """JSON-serialisable state beside the weights (e.g. calibration)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what ``extra_state`` saved (the default saves nothing)."""
        return None

    def to_bundle(self, directory: str | os.PathLike) -> Path:
        """Save ``config.json`` + ``weights.safetensors`` (+ ``state.json``) atomically."""

        def write(tmp: Path) -> None:
            (tmp / "config.json").write_text(
                json.dumps(self.config.model_dump(mode="json"), indent=2, sort_keys=True)
            )
            tensors = {
                f"{name}.{k}": v.detach().cpu().contiguous()
                for name, mod in self.modules().items()
                for k, v in mod.state_dict().items()
            }
            save_file(tensors, str(tmp / "weights.safetensors"))
            (tmp / "state.json").write_text(json.dumps(self.extra_state(), indent=2))

        return atomic_write_dir(directory, write)

    @classmethod
    def _bundle_config(cls, directory: Path, raw: Any) -> MethodConfig:
        """The config of a bundle's ``config.json``; an old or foreign one is named as such.

        Raises:
            InputError: fields this version removed (``removed_fields``: which, why, and
                that the bundle must be retrained), unknown fields, or invalid values.
        """
        missing = [f for f in cls.required_fields if isinstance(raw, dict) and f not in raw]
        if missing:
            why = "; ".join(f"{f!r}: {cls.required_fields[f]}" for f in missing)
            raise InputError(
                f"{directory / 'config.json'} is an old {cls.key or cls.__name__} bundle: it "
                f"lacks field(s) this version added ({why}). Retrain it with this version "
                f"(adding the field to config.json would load the old weights without the "
                f"change)")
        try:
            return cls.Config.model_validate(raw)
        except ValidationError as err:
            extra = [str(e["loc"][0]) for e in err.errors()
                     if e["type"] == "extra_forbidden" and e["loc"]]
            removed = [f for f in extra if f in cls.removed_fields]
            where = f"{directory / 'config.json'}"
            if removed:
                why = "; ".join(f"{f!r}: {cls.removed_fields[f]}" for f in removed)
                raise InputError(
                    f"{where} is an old {cls.key or cls.__name__} bundle: it has field(s) "
                    f"this version removed ({why}). Its weights were trained under the old "
                    f"objective; retrain it with this version (deleting the field from "
                    f"config.json would load the old weights without the change)") from None
            if extra:
                raise InputError(
                    f"{where}: unknown {cls.key or cls.__name__} config field(s) {extra}: "
                    f"the bundle was saved by another version of neuralmark (or edited); "
                    f"retrain or re-save it with this version") from None
            raise InputError(f"{where}: invalid {cls.key or cls.__name__} config: "
                             f"{describe_validation_error(err)}") from None

    @classmethod
    def from_bundle(cls, directory: str | os.PathLike,
                    device: str | torch.device = "cpu") -> WatermarkMethod:
        directory = Path(directory)
        for name in ("config.json", "weights.safetensors"):
            if not (directory / name).is_file():
                raise InputError(f"{directory} is not a neuralmark bundle: missing {name}")
        raw = json.loads((directory / "config.json").read_text())
        method = cls(cls._bundle_config(directory, raw))
        tensors = load_file(str(directory / "weights.safetensors"))
        for name, mod in method.modules().items():
            prefix = f"{name}."
            state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            mod.load_state_dict(state, strict=True)
        state_path = directory / "state.json"
        if state_path.is_file():
            method.load_extra_state(json.loads(state_path.read_text()))
        return method.to(device)
