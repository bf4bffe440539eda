"""The frozen config of ``visible_gan`` (DeepStamp, seed 003)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from neuralmark.components.methods.base import MethodConfig

#: classifier architectures F (and F′ of the evaluation) can take
Classifier = Literal["resnet_small", "alexnet", "vgg16", "resnet50"]


class VisibleGanConfig(MethodConfig):
    """Hyper-parameters of ``visible_gan``; profiles override sizes only.

    No pretrained classifier can be downloaded here: F (and every F′ of the evaluation) is
    trained from scratch by ``fit`` on the training split (``classifier``: a small ResNet on
    ``tiny``; CIFAR-style AlexNet / VGG16 / ResNet50 on ``full``, as in the seed's table).
    ``task: labels`` learns the data's classes (``tiny``: ten procedural classes; ``full``:
    CIFAR-10); without class labels F can learn rotation prediction (4 classes).
    """

    method: Literal["visible_gan"] = "visible_gan"
    # geometry
    #: side of the square view W, V, D and F work on (the seed: CIFAR-10's 32)
    working_size: int = 32
    #: side of the square view the detector matches the mark in
    detect_size: int = 64
    #: side of the stored RGBA mark (any mark is padded to a square and resized to this)
    mark_resolution: int = 64
    #: mark side as a fraction of the image's short side (centred)
    mark_scale: float = Field(0.5, gt=0.0, le=1.0)
    #: blend factor β of the seed's table: x′ = x + β·α′·(c′ − x) (0.5 or 1.0 there)
    blend: float = Field(0.5, gt=0.0, le=1.0)
    # nets
    w_width: int = Field(32, ge=4)
    v_width: int = Field(32, ge=4)
    d_width: int = Field(32, ge=4)
    classifier: Classifier = "resnet_small"
    classifier_width: int = Field(16, ge=4)
    #: further F′ architectures of the seed's table, each trained on every marking like
    #: ``classifier``'s F′ (the seed's rows: AlexNet, VGG16, ResNet50; ``full`` sets them)
    table_classifiers: tuple[Classifier, ...] = ()
    #: largest change W may make to a mark channel: w′ = clip(w + max_delta·tanh(W(x ⊕ w)))
    max_delta: float = Field(0.3, gt=0.0, le=1.0)
    # training
    #: ``labels``: F learns the dataset's classes (``fit`` needs ``train_labels``);
    #: ``rotation``: F learns which of 4 rotations an image shows (no labels needed)
    task: Literal["labels", "rotation"] = "rotation"
    num_classes: int = Field(10, ge=2)
    classifier_steps: int = Field(3000, ge=0)
    steps: int = Field(5000, ge=0)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-4, gt=0.0)
    classifier_lr: float = Field(1e-3, gt=0.0)
    #: GMAN's softness λ (Durugkar et al.): 0 = the seed's plain sum ℒ_f + ℒ_v + ℒ_d
    gman_lambda: float = Field(0.0, ge=0.0)
    #: weights of eq. (1); the seed sums the three losses with weight 1
    lambda_f: float = Field(1.0, ge=0.0)
    lambda_v: float = Field(1.0, ge=0.0)
    lambda_d: float = Field(1.0, ge=0.0)
    #: weight of ℒ_vis (not in the seed; ``losses.visibility_loss``), added to W's GMAN loss:
    #: keeps the mark's contrast at least ``visibility_floor`` × the static blend's on each
    #: image, so W cannot win ℒ_v by fading the mark (0 = the seed's objective)
    lambda_visibility: float = Field(1.0, ge=0.0)
    visibility_floor: float = Field(0.9, ge=0.0, le=2.0)
    #: Adam learning rate of every removal attacker: the V W trains against and each V′ of
    #: the evaluation (one value, so W faces an attacker as strong as the one it is judged by)
    removal_lr: float = Field(1e-3, gt=0.0)
    #: V's schedule in GMAN (not in the seed, which trains V once per W step from scratch):
    #: steps V trains alone on W's initial marks before GMAN, so W plays against a V past
    #: the identity plateau (a fresh V′ removes ~nothing for its first 300–600 steps at
    #: tiny), and V's updates per GMAN step
    removal_warmup_steps: int = Field(0, ge=0)
    v_updates_per_step: int = Field(1, ge=1)
    # detection
    #: p-value level of ``verify`` (the false-positive target of the clean calibration)
    fpr: float = Field(1e-3, gt=0.0, lt=1.0)
    calibration_scores: int = Field(1000, ge=1)
    #: template-match search radius, as a fraction of ``detect_size`` (displaced marks)
    search_radius: float = Field(0.125, ge=0.0, le=0.5)
    # evaluation inside fit (dataset utility and removal per stamper, seed's table)
    utility_steps: int = Field(2000, ge=0)
    removal_steps: int = Field(1000, ge=0)
    #: V′ step counts (< ``removal_steps``) at which every V′ is also judged, so each run
    #: records its learning curve (``fit_report["removal_curve"]``) and shows whether the
    #: budget is past the identity plateau; judging costs inference only
    removal_curve_steps: tuple[int, ...] = ()
    opacity_range: tuple[float, float] = (0.5, 1.0)
    displacement: float = Field(0.15, ge=0.0, le=0.5)
    log_every: int = Field(50, ge=1)
    max_train_seconds: float = Field(0.0, ge=0.0)
    device: str = "auto"

    @field_validator("working_size", "detect_size", "mark_resolution")
    @classmethod
    def _at_least_16(cls, v: int) -> int:
        if v < 16 or v % 4:
            raise ValueError(f"must be a multiple of 4 and >= 16, got {v}")
        return v

    @model_validator(mode="after")
    def _curve_within_budget(self) -> VisibleGanConfig:
        bad = [k for k in self.removal_curve_steps if not 0 < k < self.removal_steps]
        if bad:
            raise ValueError(f"removal_curve_steps {bad} must lie in 1..removal_steps − 1 "
                             f"(removal_steps {self.removal_steps}; the last point is "
                             f"removal_steps itself)")
        return self

    @field_validator("table_classifiers")
    @classmethod
    def _distinct(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError(f"table_classifiers repeats an architecture: {list(v)}")
        return v

    @model_validator(mode="after")
    def _classifiers_fit_the_working_size(self) -> VisibleGanConfig:
        # VGG16's five 2×2 poolings need 32² (CIFAR's size); measured: 28² fails in torch
        small = [a for a in (self.classifier, *self.table_classifiers)
                 if a == "vgg16" and self.working_size < 32]
        if small:
            raise ValueError(f"classifier vgg16 needs working_size >= 32 (five 2×2 "
                             f"poolings), got {self.working_size}")
        return self

    @field_validator("opacity_range")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"opacity_range must satisfy 0 < low <= high <= 1, got {v}")
        return v
