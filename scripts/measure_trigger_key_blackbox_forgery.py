"""A black-box forgery of trigger_key without the owner's secret (issue #13, tk14).

The attacker of tk13's search held the owner's key: it ranked key names by
``NCC(G_i(K), G(K))`` on the owner's K with the owner's keyed ∇. This script measures the
attacker who holds **no** secret of the owner:

* **What the attacker has.** Black-box queries of a suspect host M (the owner's marked host:
  an output for any input it chooses), the public code and the public sample data (so its own
  unmarked host U′, trained from another seed), and its own key names.
* **Estimate the host's keyed filter.** The attacker queries M with ``q`` U(0, 1) noise
  images z of the trigger's size (its own draws, never the owner's K) and runs U′ on the same
  z. A least-squares fit ``M(z) ≈ a·U′(z) + Σ c_j·z_j + b`` over every pixel (z_j: the 3×3
  neighbourhood of the pixel, replicate padding) gives a 3×3 kernel ĉ. If M learnt
  ``G(z) = z − ∇z`` on all noise (tk7/tk8's mechanism), ĉ ∝ δ − ∇ and ∇ zero mean, so
  ``∇̂ = δ − ĉ / Σĉ``. The fit's residual term ``a·U′(z)`` absorbs the host's smooth
  response that every denoiser shares.
* **Rank key names.** ``--candidates`` names of its own (``cand-<63-bit int>``), each
  scored by ``NCC(G_i(z₀), G_∇̂(z₀))`` on one more noise z₀ of its own: the tk8 alignment
  with the estimate in place of the owner's secret.
* **Forge.** For each of the ``--top`` best-ranked keys B and ``--top`` unselected keys (the
  first candidates, the control), the attacker runs the public pipeline on its own host:
  ``embed_model(U′, B)`` (S_B := M′_B(K_B)), ``calibrate`` (``--calib-keys`` random keys,
  one random pool of ``--pool`` marked hosts shared by every B), and then
  * **claims the owner's host**: ``verify_model(M, B)`` with its bundle (its η, its U′ as
    M_ref). A detected verdict is an ownership claim on the owner's host by a key the owner
    never used; controls: the same bundle on the owner's *unmarked* U (a claim that verifies
    on any host means nothing) and on its own marked host;
  * **is read by the owner** (the tk8/tk13 direction, evaluation only): M′_B under the owner's
    key, ``d_rel = d(M′_B(K), S) / d(U(K), S)``, against ``--eta-owner`` (tk6: 0.8116).
* **Evaluation only** (the owner's secret, never used by the attacker): the cosine of ∇̂ with
  the owner's ∇, the true alignment (``calibration.key_alignment``) of the attacker's picks,
  of the secret holder's picks of the same candidates (tk13's attacker), and the Spearman
  correlation of the attacker's score with the true alignment over all candidates.

``--variant field=value,…`` applies ``TriggerKeyConfig`` fields to the owner's and the
attacker's config alike (the public code: a design change, e.g. ``contrastive_negatives=4``).

    python scripts/measure_trigger_key_blackbox_forgery.py --sample DIR \
        [--queries 1,4,16,64 --use-queries 16 --candidates 20000 --top 4 --variant …]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from measure_trigger_key_cross_key import (  # noqa: E402
    host_config,
    random_key_names,
    variant_fields,
)
from scipy import stats  # noqa: E402

from neuralmark.components.data.sample import SampleDataConfig, build_sample_dataset  # noqa: E402
from neuralmark.components.methods.base import WatermarkKey  # noqa: E402
from neuralmark.components.methods.registry import build  # noqa: E402
from neuralmark.components.methods.trigger_key.calibration import key_alignment  # noqa: E402
from neuralmark.components.methods.trigger_key.study import task_images  # noqa: E402
from neuralmark.components.methods.trigger_key.trigger import (  # noqa: E402
    distance,
    gradient_kernel,
    ncc,
    verification_target,
)
from neuralmark.components.nets.image_nets import apply_net  # noqa: E402

OWNER = "neuralmark-eval"
#: the attacker's own host seed (the owner's is the config default, 0)
ATTACKER_SEED = 101


def neighbourhoods(z: torch.Tensor) -> torch.Tensor:
    """The 3×3 neighbourhood of every pixel of ``B×1×H×W`` ``z`` (replicate padding), as
    ``(B·H·W)×9`` rows in the order of ``F.conv2d``'s (cross-correlation) kernel."""
    p = F.unfold(F.pad(z, (1, 1, 1, 1), mode="replicate"), 3)  # b 9 hw
    return p.transpose(1, 2).reshape(-1, 9)


def estimate_kernel(suspect_out: torch.Tensor, own_out: torch.Tensor,
                    z: torch.Tensor) -> torch.Tensor:
    """∇̂ (3×3, zero mean, the seed's norm √6) from a suspect's outputs on noise ``z``:
    least squares of ``M(z)`` on ``[U′(z), 3×3 neighbourhood of z, 1]`` per pixel, ĉ the
    neighbourhood's coefficients, ``∇̂ = δ − ĉ/Σĉ`` made zero mean and rescaled."""
    a = torch.cat([own_out.reshape(-1, 1), neighbourhoods(z),
                   torch.ones(z.numel(), 1)], dim=1).double()
    coef = torch.linalg.lstsq(a, suspect_out.reshape(-1, 1).double()).solution[:, 0]
    c = coef[1:10].reshape(3, 3)
    delta = torch.zeros(3, 3, dtype=torch.float64)
    delta[1, 1] = 1.0
    g = delta - c / c.sum()
    g = g - g.mean()
    return (g / g.norm() * 6 ** 0.5).float()


def fmt(value: float | None) -> str:
    """A table number, or ``–`` for none (an η the null cannot reach)."""
    return "–" if value is None else f"{value:.3f}"


def kernels_of(names: list[str]) -> torch.Tensor:
    """The keyed ∇ of every name: ``n×3×3``."""
    return torch.stack([gradient_kernel(n) for n in names])


def scores_against(kernels: torch.Tensor, estimate: torch.Tensor, z0: torch.Tensor,
                   chunk: int = 4096) -> torch.Tensor:
    """``NCC(G_i(z₀), G_∇̂(z₀))`` for every kernel (the attacker's ranking statistic)."""
    ref = verification_target(z0, estimate, "denoise")  # 1 1 t t
    out = []
    for i in range(0, kernels.shape[0], chunk):
        k = kernels[i:i + chunk]  # n 3 3
        g = (z0 - F.conv2d(F.pad(z0, (1, 1, 1, 1), mode="replicate"), k[:, None])).clamp(0, 1)
        out.append(ncc(g.transpose(0, 1), ref[0]))  # n 1 t t against 1 t t
    return torch.cat(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample", required=True, help="build / reuse the tiny sample set here")
    ap.add_argument("--queries", default="1,4,16,64",
                    help="query budgets whose estimate is reported (40×40 noise images each)")
    ap.add_argument("--use-queries", type=int, default=16,
                    help="the budget whose estimate ranks the keys")
    ap.add_argument("--candidates", type=int, default=20000)
    ap.add_argument("--top", type=int, default=4, help="best-ranked keys forged (and as many "
                    "unselected control keys)")
    ap.add_argument("--seed", type=int, default=21, help="seed of the attacker's key names")
    ap.add_argument("--pool", type=int, default=8, help="the attacker's calibration pool")
    ap.add_argument("--calib-keys", type=int, default=200,
                    help="random keys of the attacker's calibration (no null hosts: 200 keys "
                         "and the pool of 8 give the ≥ 99 calibration trials α 0.01 needs)")
    ap.add_argument("--eta-owner", type=float, default=0.8116,
                    help="the owner's η on d_rel (tk6's tiny pipeline; not calibrated here)")
    ap.add_argument("--variant", default="", help="field=value,… on both configs")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    budgets = [int(v) for v in args.queries.split(",") if v]
    if not budgets or min(budgets) < 1 or args.use_queries < 1:
        raise SystemExit("--queries / --use-queries: positive integers")
    if args.candidates < 2 * args.top or args.top < 1:
        raise SystemExit("--candidates must be at least twice --top, --top at least 1")
    torch.set_num_threads(args.threads)
    fields = variant_fields(args.variant)
    t0 = time.time()
    cfg = {**host_config("dncnn"), **fields}
    owner_m = build("trigger_key", cfg)
    manifest = build_sample_dataset(args.sample, SampleDataConfig(
        size=128, crops_per_photo=4, n_procedural=12))
    data = task_images(manifest)
    fit = owner_m.fit(data)
    owner = WatermarkKey(OWNER)
    owner_m.embed_model(owner_m.unmarked, owner)
    c = owner_m.config
    x_own, s_own = owner_m.reference(owner)[:2]
    u_out = apply_net(owner_m.unmarked, x_own).clamp(0, 1)
    norm = float(distance(u_out, s_own))
    suspect = owner_m.host  # the black box: only its outputs are used below
    print(f"owner: unmarked {fit['host_psnr']:.2f} dB, marked "
          f"{owner_m.task_psnr_of(suspect):.2f} dB, cost "
          f"{owner_m.metrics['fidelity_cost_db']:.3f} dB, d(S, S0) "
          f"{owner_m.metrics['d_s_to_s0']:.3e}, variant {fields or 'none'} "
          f"({time.time() - t0:.0f} s)", flush=True)

    t1 = time.time()
    att = build("trigger_key", {**cfg, "seed": ATTACKER_SEED})
    att_fit = att.fit(data)
    u_att = att.unmarked
    print(f"attacker's own host U′ (seed {ATTACKER_SEED}, public data): "
          f"{att_fit['host_psnr']:.2f} dB ({time.time() - t1:.0f} s)", flush=True)

    # -- estimate the keyed filter from queries ------------------------------------------
    true_k = gradient_kernel(OWNER)
    g = torch.Generator().manual_seed(7)
    side = c.trigger_side
    estimates = {}
    print("| queries | s | cos(∇̂, ∇_owner) | true alignment of ∇̂ |")
    for q in sorted(set(budgets + [args.use_queries])):
        t2 = time.time()
        z = torch.rand((q, 1, side, side), generator=g)
        est = estimate_kernel(apply_net(suspect, z), apply_net(u_att, z), z)
        secs = time.time() - t2
        estimates[q] = est
        cos = float((est.flatten() @ true_k.flatten()) / (est.norm() * true_k.norm()))
        true_al = float(ncc(verification_target(x_own, est, "denoise"),  # the owner's K
                            verification_target(x_own, true_k, "denoise"))[0])
        print(f"| {q} | {secs:.2f} | {cos:.3f} | {true_al:.3f} |", flush=True)
    # the same fit on the owner's *unmarked* host: what the estimate reads without a mark
    z = torch.rand((args.use_queries, 1, side, side), generator=g)
    est_u = estimate_kernel(apply_net(owner_m.unmarked, z), apply_net(u_att, z), z)
    al_u = float(ncc(verification_target(x_own, est_u, "denoise"),
                     verification_target(x_own, true_k, "denoise"))[0])
    print(f"control: the fit on the owner's unmarked host U: cos(∇̂, ∇_owner) "
          f"{float((est_u.flatten() @ true_k.flatten()) / (est_u.norm() * 6 ** 0.5)):.3f}, "
          f"true alignment {al_u:.3f}", flush=True)

    # -- rank the attacker's key names ---------------------------------------------------
    t3 = time.time()
    names = [n.replace("rand-", "cand-") for n in random_key_names(args.candidates, args.seed)]
    kernels = kernels_of(names)
    z0 = torch.rand((1, 1, side, side), generator=g)
    score = scores_against(kernels, estimates[args.use_queries], z0)
    rank_s = time.time() - t3
    order = torch.argsort(score, descending=True, stable=True)
    picks = [names[int(i)] for i in order[:args.top]]
    controls = names[:args.top]
    # evaluation only: the true alignment (the owner's secret)
    t4 = time.time()
    true_al = torch.tensor(key_alignment(OWNER, names, side, c.channels, c.task, c.scale,
                                         c.keyed_gradient, c.key_family))
    rho = stats.spearmanr(score.numpy(), true_al.numpy())
    best_true = torch.sort(true_al, descending=True).values
    pick_true = [float(true_al[int(i)]) for i in order[:args.top]]
    print(f"ranking {args.candidates} names on the {args.use_queries}-query estimate: "
          f"{rank_s:.1f} s; Spearman(attacker score, true alignment) {rho.statistic:.3f}; "
          f"attacker's top {args.top}: true alignment "
          + ", ".join(f"{v:.3f}" for v in pick_true)
          + " (true rank " + ", ".join(str(int((true_al > v).sum()) + 1) for v in pick_true)
          + f"); the secret holder's top {args.top}: "
          + ", ".join(f"{float(v):.3f}" for v in best_true[:args.top])
          + f" (true alignment computed in {time.time() - t4:.1f} s)", flush=True)

    # -- forge: the public pipeline on the attacker's own host ---------------------------
    t5 = time.time()
    pool = att.marked_pool(args.pool, seed=3) if args.pool else []
    print(f"attacker's calibration pool: {len(pool)} hosts ({time.time() - t5:.0f} s)",
          flush=True)
    print("| key | kind | true alignment | attacker score | claim: d_rel of the owner's M under "
          "B | η_B | claim verified | B's bundle on the owner's unmarked U | B on its own host "
          "| owner reads M′_B: d_rel | owner match (η "
          f"{args.eta_owner}) | B's held-out FPR | s |")
    results = {"pick": [], "control": []}
    for kind, group in (("pick", picks), ("control", controls)):
        for name in group:
            t6 = time.time()
            key = WatermarkKey(name)
            att.embed_model(u_att, key)
            cal = att.calibrate(key, [], n_keys=args.calib_keys, pool=pool)
            claim = att.verify_model(suspect, key)
            ctrl = att.verify_model(owner_m.unmarked, key)
            own = att.verify_model(att.host, key)
            rel = float(distance(apply_net(att.host, x_own).clamp(0, 1), s_own)) / norm
            i = names.index(name)
            results[kind].append((claim.detected, rel < args.eta_owner))
            print(f"| {name} | {kind} | {float(true_al[i]):.3f} | {float(score[i]):.3f} | "
                  f"{claim.extra['d_rel']:.3f} | {fmt(claim.extra['eta'])} | "
                  f"{'YES' if claim.detected else 'no'} | {ctrl.extra['d_rel']:.3f} "
                  f"{'YES' if ctrl.detected else 'no'} | {own.extra['d_rel']:.3f} "
                  f"{'yes' if own.detected else 'NO'} | {rel:.3f} | "
                  f"{'YES' if rel < args.eta_owner else 'no'} | FPR {cal['fpr']:.4f} "
                  f"({int(cal['fp'])}/{int(cal['trials'])}) | {time.time() - t6:.0f} |",
                  flush=True)
    for kind, rows in results.items():
        print(f"{kind}: claims verified on the owner's host {sum(a for a, _ in rows)}/"
              f"{len(rows)}; owner's key matches M′_B {sum(b for _, b in rows)}/{len(rows)}")
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
