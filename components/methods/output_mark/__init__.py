"""``output_mark``: watermark an image-processing model through its outputs (seed 001).

Zhang et al., AAAI'20. A protected model **M** maps domain A (rainy photos,
ribbed radiographs) to domain B (derained, de-boned). An embedder **H** (UNet)
hides one logo δ in every output: B → B′, invisibly. An extractor **R**
(CEILNet-style) recovers δ from B′ and returns a *blank* image for watermark-free
inputs (A, B). A PatchGAN **D** pushes B′ towards B. An attacker who trains a
surrogate **SM** on (A, B′) learns the mark with the task, so R finds δ in the
surrogate's outputs B″. Stage 2 trains one surrogate (UNet, L2) on (A, B′) and
fine-tunes R on A, B, B′, B″. The losses are in :mod:`.losses`.

Modules: :mod:`.config` (``OutputMarkConfig``), :mod:`.logo` (δ, fingerprints),
:mod:`.losses`, :mod:`.method` (``OutputMark``), :mod:`.training` (the one
training sequence), :mod:`.evaluation` (NC, success rate, Table 1, model
verdicts), :mod:`.matrix` (the surrogate attack matrix), :mod:`.tables`
(Markdown), :mod:`.audit` (the audit text). Measured results: ``MODEL_CARD.md``
beside this file.

Choices where the seed is vague (a contract):

* **Blank δ0**: the all-ones (white) image.
* **Logo δ**: ``logo = "key"`` derives a block pattern from the key's secret (HMAC-SHA256);
  or an image file; a logo whose NC with the blank reaches the threshold is refused.
* **NC**: ``neuralmark.components.metrics.normalized_correlation`` (uncentred); a hit is
  NC > ``threshold`` (0.95, the seed's criterion) on a readable image.
* **Domain B**: the outputs of M, ``M(A)``; the clean term also sees the ground-truth targets.
* **Perceptual loss**: ``"structural"``, a non-learned substitute for VGG (no downloads).
* **Heads**: M and H are residual UNets; R is a CEILNet with a sigmoid head; D a PatchGAN
  trained with the non-saturating BCE loss.
* **Split**: ``surrogate_fraction`` of the training pairs are held out from H and R (by
  source photo when groups are given): stage 2's surrogate trains on them, they calibrate.
* **Photometric jitter** (``jitter``): half of each stage-1/2 batch gets one random tone/colour
  change, the same for A, B, target and B′; no tint for debone (``jitter_tint``).
* **Registered name** (``variant``): ``neuralmark-output_mark`` is derain; debone and the
  task-specific variant register under their own names, each with its own champion.
* **Stage-2 clean counterpart** (``stage2_clean_surrogate``): the stage-2 surrogate is also
  trained on clean (A, M(A)); its outputs join R's clean term.
* **Extra clean images** (not in the seed; ``clean_variety``, off by default, honoured by the
  pipeline, the seed spread and the recipe; ``fit`` ``data["clean"]`` takes any such set):
  crops of the training photos at many scales, procedural images and generic operations'
  outputs join R's clean term, never a held-out or test photo (``training.clean_bank``).
* **Resize round trip** (not in the seed; ``resize_roundtrip``, off by default): a share of B′
  reaches R as the service returns it at f·S (residual upsampled, 8-bit, read back at S).
* **Flat images** (``min_contrast``): no channel with std ≥ 1/255 → *unreadable*, never a hit.
* **Stage 2** freezes H (the released B′ must not change) and fine-tunes R only.
* **Task-specific variant** (``task_specific``): H maps A to the marked target (H *is* the
  marked M); M is still trained as the plain baseline.
* **Any resolution**: inputs are resized to ``working_size``²; ``embed`` adds H's residual
  upsampled bilinearly; ``extract`` returns the logo estimate at the working size.
* **p-values**: empirical ``(1 + #{null ≥ NC}) / (n + 1)`` over the NC of clean held-out
  images (``training`` says which); ``None`` with the reason when uncalibrated.
* **verify_model**: detected when the share of hits ≥ ``model_min_share`` and, when
  calibrated, the binomial p-value of the count ≤ ``model_alpha``.
"""

from neuralmark.components.methods.output_mark.config import OutputMarkConfig
from neuralmark.components.methods.output_mark.evaluation import (
    extraction_nc,
    model_decision,
    quality,
    success_rate,
)
from neuralmark.components.methods.output_mark.logo import (
    LogoStore,
    key_fingerprint,
    key_logo,
    load_logo,
)
from neuralmark.components.methods.output_mark.method import MarkedModel, OutputMark
from neuralmark.components.methods.output_mark.training import (
    split_indices,
    stage1_method,
    stage2_method,
    train_protected_model,
)

__all__ = [
    "LogoStore", "MarkedModel", "OutputMark", "OutputMarkConfig", "extraction_nc",
    "key_fingerprint", "key_logo", "load_logo", "model_decision", "quality", "split_indices",
    "stage1_method", "stage2_method", "success_rate", "train_protected_model",
]
