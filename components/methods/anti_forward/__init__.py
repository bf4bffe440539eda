"""``anti_forward``: DeepRAFT (seed 004) — an invisible anti-forwarding stamp and its scanner.

Seed: an encoder adds an invisible confidentiality stamp to a private image;
a scanner CNN (a binary classifier: stamped or not) lets a messaging platform
block the image when someone forwards it. Encoder and scanner are trained
jointly. Robustness comes from a stochastic concatenation of augmentations
(each with p = 0.75, random order, ramped in by the ``aug_start`` → ``aug_end``
curriculum) and from randomized smoothing (the scanner trained under Gaussian
noise σ, certified at inference with Cohen et al.'s procedure). The seed's
three training scripts are the three ``variant`` values:

* ``baseline``: no noise, no augmentation (``train.py``).
* ``rs``: Gaussian noise σ (0.5) on every scanner input (``train_rs.py``).
* ``rs_aug``: noise and the augmentation chain (``train_rs_aug.py``).

Modules: :mod:`.config` (``AntiForwardConfig``), :mod:`.shaping` (the non-learned
filters that shape the residual), :mod:`.parts` (encoder, scanner, residual, scan statistic,
calibration), :mod:`.training` (the joint training loop, its losses and figures),
:mod:`.method` (``AntiForward``: embed, certify, verify). Measured results: the shipped
bundle's ``MODEL_CARD.md`` (``components/pretrained/anti_forward/``).

Choices where the seed is vague (written down here, as promised):

* **Working size**: everything runs at ``working_size``² (squashed, antialiased
  bilinear); the stamp residual is computed there, up-sampled bilinearly to
  the input size and added, so any resolution in gives the same resolution out.
  The seed trains at 400²; the CPU profiles use smaller working sizes.
* **Stamp at the photo's resolution (``stamp_mode``, ours, "stretch" by default)**: the
  stretched residual is a working-size pattern enlarged (4× on a 512² photo: stripes
  ~30 px wide). With ``stamp_mode`` "tiles" or "conv" the photo is read as a grid of
  working-size tiles (after a resize to the nearest whole grid when its sides are not
  multiples of it); the encoder stamps the photo's own pixels, each tile on its own
  ("tiles": with ``tile_margin`` px of the photo around it, neighbours blended across
  their border, since abutting tiles showed a seam at every border) or the whole grid
  at once ("conv": the
  encoder is fully convolutional; the shaping's global RMS and texture mean are then
  the photo's), and the scanner reads the tiles, its logits averaged over them
  (``scan_statistic``, ``certify`` and the payload bits alike; certification radii are
  then in the grid's space). The nets are the same, since every
  tile is a working-size image, so a bundle switches without retraining; its calibration
  was made on whole working-size views, so re-calibrate a tiled deployment (model card).
  ``fit`` trains on the deployed view (``to_grid``): given whole photos in "tiles" /
  "conv" mode, it stamps them as ``embed`` does and trains the scanner on the grids'
  averaged logits, stamped and clean grids through the chain; ``train_scanner_only``
  keeps the encoder (the stamp) as loaded, to fine-tune a shipped scanner for a tiled
  deployment (our choice: the seed has a single working-size view).
* **Nets** (``neuralmark.components.nets.stamp``): the encoder is a small U-Net at half
  resolution with a ``tanh`` output scaled by ``strength`` (so ``strength`` is
  the largest change of a pixel value, and the knob that trades invisibility
  for robustness at embed time); the scanner is five stride-2 conv blocks,
  global pooling and a linear head giving B×2 logits (class 1 = stamped).
  On a CPU run of the seed's set-up the encoder put most of the stamp into one
  visible band at one edge, which PSNR does not show; the shipped model
  constrains the stamp's shape instead (next point; the model card compares
  the two).
* **Stamp shape (ours, off by default = the seed)**: ``residual_highpass`` σ
  subtracts the Gaussian blur of the encoder's output (no local mean: no cast,
  no smooth band), ``residual_window`` divides it by its local RMS over that
  window and multiplies by its global RMS (the encoder picks the pattern and
  the total energy, not where the energy goes), ``residual_masking`` then
  scales the energy towards textured regions (a non-learned JND mask). They
  are structural, not losses: the losses (``lowfreq_weight``, ``peak_weight``)
  did not move the band within our CPU budget. Such a stamp starts too weak
  for a scanner under σ = 0.5 noise, so ``warmup_start`` trains detection
  alone first.
* **Training step**: a batch of clean images is stamped; stamped and clean
  images both go through the augmentation chain (``rs_aug``) and Gaussian noise
  (``rs``/``rs_aug``), then the scanner; the loss is
  ``detection_weight·CE(scanner, stamped=1/clean=0)
  + payload_weight·BCE(payload bits)
  + ramp·(mse_weight·MSE + ssim_weight·(1 − SSIM))``, encoder and scanner
  updated together by Adam. ``ramp`` goes 0 → 1 over ``image_loss_ramp`` steps
  (as in StegaStamp, on which DeepRAFT builds) so the pair first finds a
  detectable stamp and then makes it invisible.
* **Image loss**: MSE plus SSIM (Gaussian window 11, kornia): non-learned,
  because no VGG/LPIPS backbone can be downloaded here.
* **Noise curriculum**: the training σ ramps 0 → ``sigma`` over
  ``sigma_warmup`` steps (0: full σ from the first step, as in the seed), and
  both that ramp and the image loss's start after ``warmup_start`` steps.
* **Payload** (beyond the seed): with ``payload_bits`` = k > 0 the encoder is
  conditioned on k bits and the scanner has k more logits. The bits are the
  keyed word of ``neuralmark.components.payload`` (HMAC mask of the key's secret, optional
  BCH), so the payload is read with an exact binomial p-value.
* **Keys**: the stamp itself is *not* keyed (``keyed_detection = False``), as
  in the seed: the platform's scanner must find every stamped image whoever
  stamped it. A wrong key therefore changes nothing about detection; it only
  makes the payload read as coin flips, so ``payload`` stays ``None`` (its
  p-value is above ``payload_alpha``). Without a payload the key is ignored.
* **Scores and p-values**: the scan statistic is the logit margin
  ``l₁ − l₀``; for the noise-trained variants it is averaged over
  ``score_noise_samples`` fixed (seeded) Gaussian draws of σ, the input
  distribution the scanner was trained on (a Monte-Carlo estimate of the soft
  smoothed classifier). ``Verdict.score`` is ``sigmoid`` of it, i.e.
  P(stamped). ``score_aggregation`` (opt-in) reduces the same margins
  (``scan_margins``, B×K) otherwise: ``mean_probability`` (mean sigmoid) or
  ``vote_share`` (share of positive draws; the score is then the statistic
  itself); each needs its own ``calibrate`` (af11 measured them under APGD-EoT
  at the same clean FPR: none kept the 3 more of 12 its rule asked, and the
  vote share cannot reach fpr 5e-4 on the shipped scanner, whose clean tail
  votes "stamped" unanimously). ``target_psnr`` (opt-in) rescales every stamp
  to one PSNR, in training and at stamping. At the end of ``fit`` the
  statistic is computed on held-out
  clean images (the ``val`` split) and on views of them through the
  full-strength augmentation chain, at least ``calibration_scores`` in all;
  ``p_value = (1 + #clean ≥ s) / (N + 1)`` (``stats.empirical_p_value``, valid
  under exchangeability) and the calibrated test passes iff ``p_value ≤ fpr``:
  ``fpr`` is the method's detection level (``detection_alpha``), ``certify_alpha``
  the certification level of the next point. An uncalibrated model (``fit``
  never ran) answers p = 1, never "detected". Caveat: the views of one image
  are correlated, so the effective calibration size is nearer the number of
  *distinct* images, and a scanner whose clean scores depend strongly on the
  image (``baseline``) flags more new clean images than ``fpr`` on small
  calibration sets (tiny-profile figures: README). Calibrate on many distinct
  held-out images before trusting ``fpr`` (``calibrate`` takes any set), and let
  the gate's measured FPR decide. ``calibrate(..., groups=, kinds=)`` labels each
  image with its distinct source and its kind (photo, procedural texture, ...) and
  records, per kind and pooled, the kind's own threshold and the sources above a
  threshold counted once each (``stats.clustered_rate``: an interval over distinct
  sources, the honest sample size); the deployed threshold stays the pooled one
  (our choice: the seed calibrates nothing; the tile-grid tail was a few synthetic
  textures, invisible in a pooled count).
* **Smoothing at verify**: when ``smoothing`` is on and the variant trains with
  noise (σ > 0), an image that passes the calibrated test is also certified
  (``certify``: ``n0`` selection and ``n`` estimation samples, Clopper–Pearson
  at ``certify_alpha``). It is detected only if the smoothed scanner says "stamped";
  ``Verdict.certified_radius`` is that answer's L2 radius. If the samples
  cannot certify anything (e.g. ``n`` too small for the bound to pass ½) the
  verdict is ``not_detected`` with the reason "abstained", never a confident
  answer. The AND with the calibrated test keeps the false-positive rate at
  most the calibrated one. Known weakness: an adaptive attack (APGD with EoT
  over the noise) pushes the statistic under its threshold, and the shipped
  spread stamp falls to plain APGD already (model card). A rule on the smoothed
  votes alone (certify every image; detected iff certified "stamped" and the
  share of stamped votes has calibrated p ≤ ``fpr``) was built, measured and not
  kept: clean views through the training chain reach n/n "stamped" votes, so at
  a small ``fpr`` it detected no unattacked stamped image (model card, README).
  That rule needs a scanner whose smoothed classifier rejects augmented clean
  images, i.e. more training than this CPU gives.
* **Adversarial training (ours, off by default: ``adversarial_eps`` 0)**: with
  ``adversarial_eps`` > 0 a share (``adversarial_fraction``) of each batch's stamped views
  is pushed toward "clean" and as many clean views toward "stamped" by PGD (torchattacks,
  ``attacks.adversarial.pgd``) before the training noise, and trained on like the rest.
  The inner attack is SmoothAdv's (Salman et al. 2019: PGD on the soft classifier averaged
  over ``adversarial_noise_samples`` noise draws), not PGD on the bare scanner, because
  every deployed decision reads the scanner under noise σ; ε may ramp in
  (``adversarial_ramp``). With ``train_scanner_only`` it fine-tunes a shipped scanner
  against its fixed stamp (what the model card measures); otherwise the encoder trains too
  (the attacked views keep the stamp's gradient). The seed has no adversarial training:
  its robustness claims rest on the chain and the smoothing.
* **Data-parallel** (``neuralmark.components.distributed``): under torchrun each process
  trains on its rows of every global batch of ``batch_size``; augmentation, noise and
  payload draws are made for the global batch and sliced, so N processes train as one
  does with the same batch (the logged ``psnr`` is then the mean of the shards' PSNRs);
  every process calibrates on the whole ``val`` set. On a GPU the training step's forward
  runs under bf16 autocast (single- or multi-process); on CPU it stays float32.
* **Radius units**: noise is added *at the working size* to images in [0, 1],
  so radii are L2 distances between ``working_size``² images in [0, 1] (a
  perturbation of the full-size image shrinks when resized down).
* **Unreadable**: an image with no variation at all (max − min < 1/255 at the
  working size) cannot carry a stamp, stamped or not; its verdict is
  ``unreadable``. Bad tensors (wrong shape, range, too small) raise
  ``InputError`` like every method.
"""

from neuralmark.components.methods.anti_forward.config import AntiForwardConfig
from neuralmark.components.methods.anti_forward.method import AntiForward

__all__ = ["AntiForward", "AntiForwardConfig"]
