"""``visible_gan``: DeepStamp (seed 003) — visible watermarks that keep a dataset useful.

The owner stamps their logo (an RGBA mark) on every image of a dataset they share. A
watermarking network **W** (four conv layers; image ⊕ RGBA mark, 7 channels in, 4 out)
synthesizes a per-image version w′ of the mark, blended onto the image:
``x′ = x + β·α′·(c′ − x)``. W is trained as the generator of a GMAN against three
adversaries: a frozen task classifier **F** (ℒ_f: F's prediction on x′ must stay that on x,
so a network trained on the marked data loses little accuracy), a removal autoencoder **V**
(ℒ_v: the attacker learns to restore x from x′, W makes that fail), and a discriminator
**D** whose "real" is the static alpha blend (ℒ_d: w′ stays a visible copy of the mark).
Baselines: static blend, opacity variation, displacement (:mod:`.baselines`, Dekel et al.).

Modules: :mod:`.config`, :mod:`.mark` (built-in logo, mark files, placement, blending),
:mod:`.nets` (W, V, D, classifiers), :mod:`.classifier` (F's task and training),
:mod:`.losses`, :mod:`.baselines`, :mod:`.detection`
(template match), :mod:`.method` (``VisibleGan``), :mod:`.training` (the one training
sequence), :mod:`.evaluation` (the seed's table, removal, visibility). Measured results:
``components/pretrained/visible_gan/MODEL_CARD.md``.

Choices where the seed is vague (a contract):

* **W's output**: a bounded change of the mark, ``w′ = clip(w + max_delta·tanh(W(x ⊕ w)))``
  inside the mark's square, so W starts at the static mark and cannot paint the whole image.
* **Loss weights**: eq. (1), ℒ_f + ℒ_v + ℒ_d with weight 1 each; GMAN's soft-mean with
  λ = 0 (``gman_lambda``) is exactly that sum.
* **ℒ_f**: KL between F's softmax on x and on x′. **ℒ_v**: V minimises ℓ2 + ℓ1 of its
  restoration; W pays the share of the mark V removes, ``relu(1 − MSE(V(x′), x) / MSE(x′, x))``
  (see ``losses``). **ℒ_d**: non-saturating BCE.
* **D**: three strided convolutions (the seed says transposed; a discriminator reduces).
* **F's task**: class labels (``task: labels``; CIFAR-10's on ``full``, ten procedural
  classes on ``tiny``, both handed over by the training pipeline); rotation prediction
  (4 classes) for unlabelled images. F / F′ are trained from scratch. The seed's table tests
  F′ on the held-out ``test`` split when ``fit`` is given one (else ``val``).
* **Working size**: W, V, D and F work at ``working_size``² (32, CIFAR's); at embed time W's
  change is up-sampled onto the mark placed at full resolution (a sharp logo at any size).
* **Placement**: a square of side ``mark_scale``·short side, centred (displacement moves it).
* **Verification**: not keyed (the visible logo is the claim). The statistic is the largest
  NCC between the image's high-pass and the mark's template within ``search_radius``; its
  p-value is empirical against held-out clean images (+ flips, rotations, crops), and
  ``detected`` iff ``p ≤ fpr``. A new mark (``with_mark``) is recalibrated on an offline
  null set (procedural images + bundled photos).
* **Bundle**: W, V, D, F and the mark (a buffer) in ``weights.safetensors``; calibration
  and the fit report (the seed's table) in ``state.json``.
"""

from neuralmark.components.methods.visible_gan.config import VisibleGanConfig
from neuralmark.components.methods.visible_gan.method import VisibleGan

__all__ = ["VisibleGan", "VisibleGanConfig"]
