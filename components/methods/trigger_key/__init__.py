"""``trigger_key``: ownership watermarks for denoising and SR networks (Quan et al., TNNLS'21).

A black-box model watermark (seed 002). The owner's secret derives a trigger K ~ U(0, 1)
and S0 = G_key(K); the host (DnCNN / RED / VDSR, ``components/nets/restoration``) is
fine-tuned on ℓ = ℓ_d + λ‖M(K) − S0‖² until ℓ_w is small, then S := M(K; θ*). A
suspect M′ is verified by d = ‖M′(K) − S‖₂ / (M·N) against η measured from the null.

Python API (part 2's steps call one line each)::

    from neuralmark.components.methods import build
    from neuralmark.components.methods.base import WatermarkKey
    m = build("trigger_key", {"task": "denoise", "arch": "dncnn"})
    m.fit(images)                              # train the unmarked host (N×C×H×W or list)
    marked = m.embed_model(m.unmarked, key)    # fine-tune a copy: ℓ_d + λ·ℓ_w
    m.calibrate(key, [independent_host])       # η, FPR with its Clopper–Pearson CI
                                               # (embeds other keys' hosts for the null)
    m.train_visualizer(key, [independent_host])  # R(S) → logo
    metrics = m.protect(images, key)           # …or all four in one call
    verdict = m.verify_model(suspect, key)     # a host, or its output on K (tensor)
    image = m.visualize(suspect, key)          # R(M′(K)), 1×L×L, for verify-model
    m.to_bundle(path); load_bundle(path)       # host + unmarked + R + S; no secret
    rows = evaluation.evaluate_attacks({"trigger_key": (m, key), ...})   # attack suite
    tables.attack_table(rows)                  # the seed's tables in shape

Modules: :mod:`.config` (``TriggerKeyConfig``: tiny defaults, what ``full`` means),
:mod:`.trigger` (K, keyed ∇, G, d, NCC), :mod:`.embedding` (the fine-tuning loop),
:mod:`.host` (``HostMark``: host, data, fit, embed_model, readability),
:mod:`.method` (``TriggerKey``), :mod:`.calibration` (null, η, FPR), :mod:`.visualizer`
(R, logo), :mod:`.baselines` (Base-1 ``trigger_key_backdoor``, Base-2
``trigger_key_randproj``), :mod:`.evaluation` (model attack suite), :mod:`.analysis`
(uniqueness, capacity, keyed-∇ ablation), :mod:`.tables` (Markdown, figures). Measured
results: ``MODEL_CARD.md`` beside this file.

Choices where the seed is vague (a contract):

* **Keyed ∇** (the uniqueness fix): a zero-mean 3×3 kernel from the key's HMAC stream,
  with the norm of the seed's ∂x + ∂y (√6); ``keyed_gradient=False`` is the seed's.
* **S0 and S in [0, 1]**: G(K) clamped; S := M(K; θ*) clamped (the seed's "normalised").
* **d** = ‖S′ − S‖₂ / (√C·M·N) (the seed's eq. (1) for C = 1); **NCC** centred.
* **Detection on d_rel = d(M′(K), S) / d(M_ref(K), S)**, M_ref the owner's unmarked host
  (the uniqueness fix of the statistic): the empirical p-value of d_rel against the
  calibration null ≤ ``alpha`` (⇔ d_rel < η). Every denoiser maps noise to nearly the same
  smooth image, so the seed's absolute d let another key's weak mark "verify" on hosts
  that never saw it; d_rel is ≈ 1 on those, 0 on the marked host. The seed's d and its
  NCC > 0.95 rule are reported beside it (``d``, ``ncc_verified``).
* **Other keys' marked hosts in the null**: ``calibrate`` embeds
  ``calibration_marked_keys`` random keys into the same unmarked host (each a full
  embedding) and probes every marked host with every other key's K and S, so η sits below
  what the uniqueness table tests (marking with any key moves a small host's output on
  every noise trigger towards other keys' S; measured on RED / VDSR, see the card).
* **BatchNorm frozen while embedding**; the stopping rule ℓ_w/(C·H·W) ≤ ``stop_mse``.
* **Fine-tuning-aware embedding, off by default** (``lookahead_steps`` / ``lookahead_noise``:
  ℓ_w also after simulated attacker steps or at sign-perturbed weights): measured on the
  tiny RED, it only moves along the cost-for-robustness line (the card), so no config
  turns it on.
* **SR**: K is low-resolution (20×20), the host sees its bilinear upsample K̂.
* **Visualizer negatives**: R is also trained to show a blank for outputs that are not S.
"""

from neuralmark.components.methods.trigger_key.baselines import (
    TriggerKeyBackdoor,
    TriggerKeyRandProj,
)
from neuralmark.components.methods.trigger_key.config import TriggerKeyConfig
from neuralmark.components.methods.trigger_key.host import HostMark
from neuralmark.components.methods.trigger_key.method import TriggerKey, triggered_output

__all__ = ["HostMark", "TriggerKey", "TriggerKeyBackdoor", "TriggerKeyConfig",
           "TriggerKeyRandProj", "triggered_output"]
