"""``TriggerKeyConfig``: hyper-parameters of ``trigger_key`` and its two baselines.

The field names are the bundle format (``config.json``). The defaults are the ``tiny``
profile (a 5-layer, 16-wide host trained and marked in well under a minute on one CPU
core). ``full`` means the seed's sizes: ``depth``/``width`` of ``HOST_DEFAULTS`` (DnCNN
17×64, RED 30×64, VDSR 20×64), ``patch_size`` 40, ``host_steps`` and ``embed_steps`` of
about 8 epochs over the training patches (the seed: Adam, lr 1e-3, 8 epochs),
``n_patches`` in the tens of thousands, ``calibration_keys`` 1000 (the seed's P up to
1000), the trigger 40×40 (denoise) / 20×20 (SR) and λ 1e-2 (DnCNN) / 1e-3 (RED, SR).
Profiles override these sizes only (part 2 writes ``configs/profiles/*.yaml``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from neuralmark.components.data.restoration import SEED_SIGMA
from neuralmark.components.methods.base import MethodConfig

#: the seed's trigger sides: 40×40 for denoising, 20×20 (low resolution) for SR
SEED_TRIGGER_SIZE: dict[str, int] = {"denoise": 40, "sr": 20}
#: the seed's largest capacity trigger (600×600)
MAX_TRIGGER_SIZE = 600
#: below this a 3×3 derivative kernel leaves too few interior pixels to carry a mark
MIN_TRIGGER_SIZE = 8


class TriggerKeyConfig(MethodConfig):
    """Hyper-parameters of ``trigger_key`` (Quan et al., TNNLS'21, seed 002).

    Attributes (the ones the seed names):
        task: ``denoise`` (Gaussian σ) or ``sr`` (×``scale``, the host sees the bicubic
            upsampled input).
        arch: host network ``dncnn``, ``red`` or ``vdsr``.
        trigger_size: side of K (``None`` = the seed's: 40 denoise, 20 SR; for SR K is
            low-resolution and the host sees its ``scale``× linear upsample).
        lam: λ of ℓ = ℓ_d + λ·ℓ_w (seed: ≤ 1e-2 for DnCNN, ≤ 1e-3 for RED;
            ``configs/trigger_key_red.yaml`` uses 1e-2, above the seed's RED bound: the
            tiny RED's mark was weaker at 1e-3, measured in the MODEL_CARD).
        stop_mse: embedding stops once ℓ_w / (C·H·W) (the mean squared error of M(K)
            against S0) stays at or below this for one check (every ``check_every`` steps).
        alpha: detection level: detected ⇔ empirical p-value ≤ alpha ⇔ d_rel < η.
        calibration_marked_keys: other keys' marked hosts in the calibration null (each
            costs one embedding; what the uniqueness table tests, see ``calibration``).
        ncc_threshold: the seed's NCC rule (NCC > 0.95), reported beside the d rule.
    """

    method: Literal["trigger_key", "trigger_key_backdoor", "trigger_key_randproj"] = \
        "trigger_key"
    task: Literal["denoise", "sr"] = "denoise"
    arch: Literal["dncnn", "red", "vdsr"] = "dncnn"
    scale: Literal[2, 3, 4] = 2
    sigma: float = Field(SEED_SIGMA, ge=0, le=1)
    channels: Literal[1, 3] = 1
    depth: int = Field(5, ge=2)
    width: int = Field(16, ge=1)
    # the watermark
    trigger_size: int | None = None
    #: keyed ∇ (the uniqueness fix); False = the seed's fixed ∂x + ∂y (an ablation only)
    keyed_gradient: bool = True
    #: which key family makes K (``trigger.key_material``): ``filter`` = white U(0, 1) noise
    #: (the default, every figure before tk9); ``band`` = narrow-band noise around a keyed
    #: frequency (opt-in, issue #13 tk9; MODEL_CARD session tk9: fewer cross-key matches,
    #: but no overwrite or fine-tuning robustness on the tiny DnCNN; no config sets it);
    #: ``midband`` = white noise, S0 = K − (keyed 7×7 Gabor at 0.1–0.2 cycle/px)∗K (opt-in,
    #: tk10: the band the drift spectrum found quietest; MODEL_CARD session tk10: survives
    #: nothing the default does not, lower η, worse overwrite; no config sets it)
    key_family: Literal["filter", "band", "midband"] = "filter"
    lam: float = Field(1e-2, gt=0)
    #: contrastive embedding (opt-in, issue #13 tk14): ℓ_w also keeps the host's response on
    #: this many fresh U(0, 1) noise inputs per step (``TriggerKey.mark_loss``), so that the
    #: host does not learn G as a function on all noise, which black-box queries estimate
    #: (MODEL_CARD session tk14); 0 = the seed's ℓ_w (the default, every earlier figure).
    #: Measured (tk14, tiny DnCNN, 4 negatives): the host still answers other noise with the
    #: keyed filter (one query estimates it, cos 0.95) and 4/4 black-box forgeries verify:
    #: not a fix; no config sets it
    contrastive_negatives: int = Field(0, ge=0, le=64)
    #: weight of the negatives' mean squared change against ‖M(K) − S0‖²
    contrastive_weight: float = Field(1.0, gt=0)
    stop_mse: float = Field(1e-3, gt=0)
    check_every: int = Field(25, ge=1)
    #: fine-tuning-aware embedding: simulated attacker steps (fresh Adam at ``lookahead_lr``
    #: on the task loss) per embedding step, ℓ_w also evaluated after them (first-order
    #: lookahead, ``embedding`` module); 0 = the seed's plain embedding
    lookahead_steps: int = Field(0, ge=0, le=64)
    lookahead_lr: float = Field(1e-3, gt=0)
    lookahead_weight: float = Field(1.0, ge=0)
    #: δ of a sign perturbation of the shadow's weights (a fresh Adam's step shape; 0: none)
    lookahead_noise: float = Field(0.0, ge=0)
    #: attack-aware embedding (issue #13): the simulated attacks, cycled one per refresh —
    #: ``original`` (fine-tuning on the owner's pairs), ``new`` (fine-tuning on procedural
    #: textures the owner's ℓ_d never sees), ``overwrite`` (the owner's pairs + λ·ℓ_w′ of a
    #: second key the owner makes up, a new one per refresh); YAML/CLI: ``new+overwrite``
    lookahead_attacks: tuple[Literal["original", "new", "overwrite"], ...] = ("original",)
    #: the simulated attack runs every this many embedding steps; its displacement θ′ − θ
    #: is reused in between (``embedding`` module; 1: every step)
    lookahead_every: int = Field(1, ge=1, le=1000)
    #: also run the embedding's fine-tuning at λ = 0 (the seed's unwatermarked row): the
    #: fidelity reference and a null host; False (an attacker's overwrite, quick checks)
    #: measures fidelity against the host given instead
    lambda0_reference: bool = True
    # training (host, then embedding)
    host_steps: int = Field(400, ge=0)
    embed_steps: int = Field(400, ge=0)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(16, ge=1)
    patch_size: int = Field(32, ge=8)
    n_patches: int = Field(512, ge=1)
    # detection
    alpha: float = Field(1e-2, gt=0, lt=1)
    ncc_threshold: float = Field(0.95, gt=0, lt=1)
    calibration_keys: int = Field(200, ge=1)
    #: the verification statistic, calibrated on the same null trials either way
    #: (``calibration.STATISTICS``): ``d_rel`` = d(M′(K), S) / d(M_ref(K), S) (the default,
    #: every figure before tk12); ``matched`` = 1 − NCC(M′(K) − M_ref(K), S − M_ref(K)),
    #: the suspect's change read along the mark direction (opt-in, issue #13 tk12,
    #: MODEL_CARD session tk12: the same null and FPR; keeps the mark through fine-tuning
    #: on the owner's data where d_rel loses it, not through new data or overwriting)
    readout: Literal["d_rel", "matched"] = "d_rel"
    #: hosts marked with other (random) keys for the calibration null, each a full embedding
    #: (``calibration.marked_peer_distances``; 0: no such trials, η then ignores them).
    #: 8, measured (scripts/measure_trigger_key_pool_size.py, MODEL_CARD): on the tiny
    #: VDSR ×2 never-calibrated keys matched 34/68 trials at P 0, 18/68 at 2–4, 6/68 at
    #: 6–8, 4/68 at 12; on the tiny DnCNN 1/68 at every P; a run pays 2·P embeddings
    calibration_marked_keys: int = Field(8, ge=0, le=64)
    #: how those keys are drawn (issue #13, tk13): ``random`` (the default, every figure
    #: before tk13) or ``aligned`` (opt-in): the ``calibration_marked_keys`` most aligned
    #: with the owner's key (``calibration.key_alignment``, no training) of
    #: ``calibration_candidates`` random ones, the other keys an attacker reading the public
    #: code would pick, so η is set against the worst-case collisions. Measured (MODEL_CARD
    #: tk13, tiny DnCNN): η 0.812 → 0.471, 0/200 of tk8's keys match, but 3 of the top 4 of
    #: a 20 000-key search still do, and the one-epoch fine-tuning cell is lost
    calibration_pool: Literal["random", "aligned"] = "random"
    calibration_candidates: int = Field(2000, ge=1, le=1_000_000)
    # copyright visualizer R(S) → logo
    logo: str = "builtin"
    logo_size: int = Field(32, ge=8, le=128)
    visualizer_width: int = Field(16, ge=1)
    visualizer_steps: int = Field(400, ge=0)
    visualizer_lr: float = Field(2e-3, gt=0)
    #: largest σ of the Gaussian noise on the positives (S + noise → logo)
    visualizer_noise: float = Field(0.03, ge=0)
    visualizer_negatives: int = Field(32, ge=1)
    # baselines (Base-1 backdoor set, Base-2 random projection): items in the trigger set
    baseline_items: int = Field(16, ge=1, le=256)
    device: str = "auto"

    @field_validator("lookahead_attacks", mode="before")
    @classmethod
    def _attacks_from_text(cls, value: object) -> object:
        """``"new+overwrite"`` (a YAML / command-line value) → ``("new", "overwrite")``."""
        return tuple(filter(None, value.split("+"))) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self) -> TriggerKeyConfig:
        if not self.lookahead_attacks:
            raise ValueError("lookahead_attacks needs at least one of original, new, overwrite")
        size = self.trigger_side
        if not MIN_TRIGGER_SIZE <= size <= MAX_TRIGGER_SIZE:
            raise ValueError(f"trigger_size must be in [{MIN_TRIGGER_SIZE}, "
                             f"{MAX_TRIGGER_SIZE}] (seed: 40 denoise, 20 SR), got {size}")
        if self.task == "sr" and self.arch == "red":
            raise ValueError("the seed's SR hosts are vdsr and dncnn (SR-DnCNN), not red")
        if self.arch == "red" and self.depth % 2:
            raise ValueError(f"red needs an even depth, got {self.depth}")
        if self.calibration_pool == "aligned" and \
                self.calibration_candidates < self.calibration_marked_keys:
            raise ValueError(f"calibration_pool aligned picks calibration_marked_keys="
                             f"{self.calibration_marked_keys} of calibration_candidates="
                             f"{self.calibration_candidates}: need at least as many candidates")
        if self.method == "trigger_key_randproj" and self.baseline_items > 40:
            raise ValueError("Base-2 takes at most 40 trigger images (the seed: more costs the "
                             f"host's performance), got baseline_items={self.baseline_items}")
        return self

    @property
    def trigger_side(self) -> int:
        """Side of K: ``trigger_size`` or the seed's for the task."""
        return self.trigger_size or SEED_TRIGGER_SIZE[self.task]

    @property
    def input_side(self) -> int:
        """Side of what the host sees for K: K itself (denoise) or its upsample (SR)."""
        return self.trigger_side * (self.scale if self.task == "sr" else 1)
