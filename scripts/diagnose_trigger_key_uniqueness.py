"""Why another key's mark "verified" on hosts that never saw it (issue #13), measured.

Tiny config (grey DnCNN 5×16, 300 host steps, 200 embedding steps, λ = 1e-2, 100
calibration keys) on eight scikit-image photos (six train, two test). The owner's key and
two other keys are embedded into the same unmarked host; for every key it prints

* how far embedding got: ℓ_w per pixel (the stopping rule is 1e-3), d(S, S0), and how much
  of the way from the unmarked host's natural output to S0 the mark moved S
  (``moved`` = 1 − ‖S − M_ref(K)‖ / ‖S0 − M_ref(K)‖);
* the natural spread: d between the unmarked and an independently trained host on K;
* the uniqueness matrix: the seed's absolute d and the relative d_rel = d / d(M_ref(K), S)
  of every host × key, with the verdict (on d_rel, η calibrated per key);
* the owner's mark under short attacks (pruning, one epoch of fine-tuning on original /
  new data, distillation, overwriting).

Usage::

    python scripts/diagnose_trigger_key_uniqueness.py [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402

from neuralmark.components.attacks.model_registry import get_model_attack  # noqa: E402
from neuralmark.components.methods.base import WatermarkKey  # noqa: E402
from neuralmark.components.methods.registry import build  # noqa: E402
from neuralmark.components.methods.trigger_key.analysis import uniqueness_rows  # noqa: E402
from neuralmark.components.methods.trigger_key.evaluation import attacker_data  # noqa: E402
from neuralmark.components.methods.trigger_key.study import skimage_images  # noqa: E402
from neuralmark.components.methods.trigger_key.trigger import distance  # noqa: E402
from neuralmark.components.nets.image_nets import apply_net  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "moon", "page", "text")
CONFIG = {"channels": 1, "host_steps": 300, "embed_steps": 200, "visualizer_steps": 0,
          "calibration_keys": 100}
ATTACKS = [("prune", 0.3), ("prune", 0.5), ("fine_tune_original", 1), ("fine_tune_new", 1),
           ("distill", 1), ("overwrite", None)]




def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    torch.set_num_threads(ap.parse_args().threads)
    start = time.time()
    m = build("trigger_key", CONFIG)
    m.fit(skimage_images(PHOTOS, n_train=6))
    independent = m.train_independent_host(1000)
    owner = WatermarkKey("neuralmark-eval")
    m.embed_model(m.host, owner)
    m.calibrate(owner, [independent])
    print(f"owner: fidelity cost {m.metrics['fidelity_cost_db']:.2f} dB, η {m.eta:.3f}, FPR "
          f"{m.calibration['fpr']:.4f} (CI ≤ {m.calibration['fpr_ci_high']:.4f})")
    owners = {"owner": (m, owner)}
    hosts = {"marked:owner": m.host}
    for i, secret in enumerate(("other-1", "other-2")):
        other = m.with_config(lambda0_reference=False)
        other.train_pairs, other.test_pairs = m.train_pairs, m.test_pairs
        key = WatermarkKey(secret)
        other.embed_model(m.unmarked, key)
        other.calibrate(key, [independent])
        owners[f"key{i + 1}"] = (other, key)
        hosts[f"marked:key{i + 1}"] = other.host
    hosts.update({"unmarked": m.unmarked, "independent": independent})
    for name, (method, key) in owners.items():
        x, s0 = method.key_material(key)
        s, ref, ind = method.s, apply_net(m.unmarked, x), apply_net(independent, x)
        moved = 1 - float((s - ref).norm() / (s0 - ref).norm())
        print(f"{name}: l_w/px {method.metrics['embed_l_w'] / s.numel():.4f}, d(S,S0) "
              f"{float(distance(s, s0)[0]):.2e}, d(M_ref,S) {float(distance(ref, s)[0]):.2e}, "
              f"moved {moved:.2f}, natural spread d(M_ref,ind) "
              f"{float(distance(ref, ind)[0]):.2e}, η(d_rel) {method.eta:.3f}")
    print("| key | host | d (×10⁻³) | d_rel | detected |\n|---|---|---|---|---|")
    for r in uniqueness_rows(owners, hosts):
        print(f"| {r['key']} | {r['host']} | {1e3 * r['d']:.2f} | {r['d_rel']:.3f} | "
              f"{'yes' if r['detected'] else 'no'} |")
    data = attacker_data(m)
    print("| attack | d (×10⁻³) | d_rel | detected | task PSNR |\n|---|---|---|---|---|")
    for attack, strength in ATTACKS:
        attacked = get_model_attack(attack)(m.host, strength, data)
        v = m.verify_model(attacked, owner)
        print(f"| {get_model_attack(attack).label(strength)} | {1e3 * v.extra['d']:.2f} | "
              f"{v.extra['d_rel']:.3f} | {'yes' if v.detected else 'no'} | "
              f"{m.task_psnr_of(attacked):.2f} |")
    print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
