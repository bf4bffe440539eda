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
import copy
import os
import time

os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from measure_trigger_key_cross_key import (  # noqa: E402
    HOST_CELLS,
    host_config,
    random_key_names,
    variant_fields,
)
from scipy import stats  # noqa: E402

from neuralmark.components.data.sample import SampleDataConfig, build_sample_dataset  # noqa: E402
from neuralmark.components.errors import InputError  # noqa: E402
from neuralmark.components.methods.base import WatermarkKey  # noqa: E402
from neuralmark.components.methods.registry import build  # noqa: E402
from neuralmark.components.methods.trigger_key.calibration import (  # noqa: E402
    key_alignment,
    require_null_size,
)
from neuralmark.components.methods.trigger_key.study import task_images  # noqa: E402
from neuralmark.components.methods.trigger_key.trigger import (  # noqa: E402
    distance,
    gradient_kernel,
    host_input,
    ncc,
    trigger,
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


#: the sign of ∇ in S0 = G(K): ``K − ∇K`` (denoise), ``K̂ + ∇K̂`` (SR; ``verification_target``)
SIGN = {"denoise": -1.0, "sr": 1.0}


def estimate_kernel(suspect_out: torch.Tensor, own_out: torch.Tensor,
                    z: torch.Tensor, task: str = "denoise") -> torch.Tensor:
    """∇̂ (3×3, zero mean, the seed's norm √6) from a suspect's outputs on host inputs ``z``
    (``B×1×H×W``): least squares of ``M(z)`` on ``[U′(z), 3×3 neighbourhood of z, 1]`` per
    pixel, ĉ the neighbourhood's coefficients; ĉ ∝ δ ∓ ∇ (``SIGN``: − denoise, + SR), so
    ``∇̂ = ∓(δ − ĉ/Σĉ)``, made zero mean and rescaled."""
    a = torch.cat([own_out.reshape(-1, 1), neighbourhoods(z),
                   torch.ones(z.numel(), 1)], dim=1).double()
    coef = torch.linalg.lstsq(a, suspect_out.reshape(-1, 1).double()).solution[:, 0]
    c = coef[1:10].reshape(3, 3)
    delta = torch.zeros(3, 3, dtype=torch.float64)
    delta[1, 1] = 1.0
    g = -SIGN[task] * (delta - c / c.sum())
    g = g - g.mean()
    return (g / g.norm() * 6 ** 0.5).float()


def fmt(value: float | None) -> str:
    """A table number, or ``–`` for none (an η the null cannot reach)."""
    return "–" if value is None else f"{value:.3f}"


def kernels_of(names: list[str]) -> torch.Tensor:
    """The keyed ∇ of every name: ``n×3×3``."""
    return torch.stack([gradient_kernel(n) for n in names])


def scores_against(kernels: torch.Tensor, estimate: torch.Tensor, z0: torch.Tensor,
                   chunk: int = 4096, task: str = "denoise", scale: int = 2) -> torch.Tensor:
    """``NCC(G_i(z₀), G_∇̂(z₀))`` for every kernel (the attacker's ranking statistic); ``z0``
    ``1×1×t×t`` a trigger-sized noise (low resolution for SR: G sees its upsample)."""
    ref = verification_target(z0, estimate, task, scale)  # 1 1 T T
    up = host_input(z0, task, scale)
    out = []
    for i in range(0, kernels.shape[0], chunk):
        k = kernels[i:i + chunk]  # n 3 3
        grad = F.conv2d(F.pad(up, (1, 1, 1, 1), mode="replicate"), k[:, None])  # 1 n T T
        g = (up + SIGN[task] * grad).clamp(0, 1)
        out.append(ncc(g.transpose(0, 1), ref[0]))  # n 1 T T against 1 T T
    return torch.cat(out)


def csv_list(text: str, kind: type = str) -> list:
    """``a,b,c`` → ``[kind(a), …]``; SystemExit on an empty list or a bad item."""
    try:
        items = [kind(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"expected a comma-separated list of {kind.__name__}, got {text!r}"
                         ) from None
    if not items:
        raise SystemExit(f"expected a non-empty comma-separated list, got {text!r}")
    return items


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample", required=True, help="build / reuse the tiny sample set here")
    ap.add_argument("--arch", choices=sorted(HOST_CELLS), default="dncnn",
                    help="the tiny pipeline's host cell (measure_trigger_key_cross_key)")
    ap.add_argument("--owners", default=OWNER,
                    help="owner key names, one cell per owner × host seed")
    ap.add_argument("--host-seeds", default="0",
                    help="the owners' host seeds (config seed: init and batch order)")
    ap.add_argument("--cells", default="",
                    help="owner@seed,…: these cells instead of --owners × --host-seeds")
    ap.add_argument("--queries", default="1,4,16,64",
                    help="query budgets whose estimate is reported (trigger-sized noise each)")
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
    ap.add_argument("--eta-owner", type=float, default=None,
                    help="the owner's η on d_rel (default: the arch's tiny pipeline's, "
                         "HOST_CELLS; not calibrated here)")
    ap.add_argument("--variant", default="", help="field=value,… on both configs")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    budgets = csv_list(args.queries, int)
    if args.cells:
        plan = [(o, int(sd)) for o, _, sd in (c.rpartition("@") for c in csv_list(args.cells))
                if o and sd.lstrip("-").isdigit()]
        if len(plan) != len(csv_list(args.cells)):
            raise SystemExit(f"--cells: expected owner@seed,…, got {args.cells!r}")
    else:
        plan = [(o, sd) for sd in csv_list(args.host_seeds, int) for o in csv_list(args.owners)]
    seeds = list(dict.fromkeys(sd for _, sd in plan))
    if min(budgets) < 1 or args.use_queries < 1:
        raise SystemExit("--queries / --use-queries: positive integers")
    if args.candidates < 2 * args.top or args.top < 1:
        raise SystemExit("--candidates must be at least twice --top, --top at least 1")
    if ATTACKER_SEED in seeds:
        raise SystemExit(f"--host-seeds: {ATTACKER_SEED} is the attacker's own host seed")
    torch.set_num_threads(args.threads)
    fields = variant_fields(args.variant)
    eta_owner = HOST_CELLS[args.arch][1] if args.eta_owner is None else args.eta_owner
    cfg = {**host_config(args.arch), **fields}
    # the attacker's calibration must reach α before anything is trained
    probe = build("trigger_key", cfg).config
    try:
        require_null_size(probe.alpha, args.calib_keys, 1, args.pool, "the attacker's calibrate",
                          "--calib-keys", "--pool, or raise alpha")
    except InputError as err:
        raise SystemExit(str(err)) from None
    t0 = time.time()
    manifest = build_sample_dataset(args.sample, SampleDataConfig(
        size=128, crops_per_photo=4, n_procedural=12))
    data = task_images(manifest)

    # -- the attacker's own host and calibration pool (once, whatever the owner) ---------
    t1 = time.time()
    att = build("trigger_key", {**cfg, "seed": ATTACKER_SEED})
    att_fit = att.fit(data)
    u_att = att.unmarked
    c = att.config
    task, scale, side = c.task, c.scale, c.trigger_side
    print(f"{args.arch} cell ({c.task}, depth {c.depth}, λ {c.lam:g}), variant "
          f"{fields or 'none'}; attacker's own host U′ (seed {ATTACKER_SEED}, public data): "
          f"{att_fit['host_psnr']:.2f} dB ({time.time() - t1:.0f} s)", flush=True)
    t1 = time.time()
    pool = att.marked_pool(args.pool, seed=3) if args.pool else []
    pool_s = time.time() - t1
    print(f"attacker's calibration pool: {len(pool)} hosts ({pool_s:.0f} s)", flush=True)
    names = [n.replace("rand-", "cand-") for n in random_key_names(args.candidates, args.seed)]
    kernels = kernels_of(names)
    controls = names[:args.top]

    # -- the owners' marked hosts; per cell: estimate, rank (the attacker's side) ----------
    cells = []
    for host_seed in seeds:
        t1 = time.time()
        owner_m = build("trigger_key", {**cfg, "seed": host_seed})
        fit = owner_m.fit(data)
        fit_s = time.time() - t1
        for owner_name in (o for o, sd in plan if sd == host_seed):
            t2 = time.time()
            owner = WatermarkKey(owner_name)
            owner_m.embed_model(owner_m.unmarked, owner)
            x_own, s_own = owner_m.reference(owner)[:2]
            u_out = apply_net(owner_m.unmarked, x_own).clamp(0, 1)
            cell = {"owner": owner_name, "seed": host_seed, "x": x_own, "s": s_own,
                    "norm": float(distance(u_out, s_own)),
                    "suspect": copy.deepcopy(owner_m.host).eval(),  # the black box
                    "unmarked": owner_m.unmarked}
            print(f"\n### cell {args.arch} / owner {owner_name} / host seed {host_seed}\n"
                  f"owner: unmarked {fit['host_psnr']:.2f} dB ({fit_s:.0f} s), marked "
                  f"{owner_m.task_psnr_of(cell['suspect']):.2f} dB, d(S, S0) "
                  f"{owner_m.metrics['d_s_to_s0']:.3e} ({time.time() - t2:.0f} s)", flush=True)
            true_k = gradient_kernel(owner_name)
            g = torch.Generator().manual_seed(7)
            estimates = {}
            print("| queries | s | cos(∇̂, ∇_owner) | true alignment of ∇̂ |")
            for q in sorted(set(budgets + [args.use_queries])):
                t3 = time.time()
                z = host_input(torch.rand((q, 1, side, side), generator=g), task, scale)
                est = estimate_kernel(apply_net(cell["suspect"], z), apply_net(u_att, z), z,
                                      task)
                secs = time.time() - t3
                estimates[q] = est
                cos = float((est.flatten() @ true_k.flatten()) / (est.norm() * true_k.norm()))
                k_own = trigger(owner_name, side, c.channels)[None]
                true_al = float(ncc(verification_target(k_own, est, task, scale),
                                    verification_target(k_own, true_k, task, scale))[0])
                print(f"| {q} | {secs:.2f} | {cos:.3f} | {true_al:.3f} |", flush=True)
            # the same fit on the owner's *unmarked* host: what the estimate reads unmarked
            z = host_input(torch.rand((args.use_queries, 1, side, side), generator=g), task,
                           scale)
            est_u = estimate_kernel(apply_net(owner_m.unmarked, z), apply_net(u_att, z), z,
                                    task)
            al_u = float(ncc(verification_target(k_own, est_u, task, scale),
                             verification_target(k_own, true_k, task, scale))[0])
            print(f"control: the fit on the owner's unmarked host U: cos(∇̂, ∇_owner) "
                  f"{float((est_u.flatten() @ true_k.flatten()) / (est_u.norm() * 6 ** 0.5)):.3f}"
                  f", true alignment {al_u:.3f}", flush=True)
            t3 = time.time()
            z0 = torch.rand((1, 1, side, side), generator=g)
            score = scores_against(kernels, estimates[args.use_queries], z0, task=task,
                                   scale=scale)
            rank_s = time.time() - t3
            order = torch.argsort(score, descending=True, stable=True)
            picks = [names[int(i)] for i in order[:args.top]]
            # evaluation only: the true alignment (the owner's secret)
            true_al = torch.tensor(key_alignment(owner_name, names, side, c.channels, task,
                                                 scale, c.keyed_gradient, c.key_family))
            rho = stats.spearmanr(score.numpy(), true_al.numpy())
            pick_true = [float(true_al[int(i)]) for i in order[:args.top]]
            best_true = torch.sort(true_al, descending=True).values
            print(f"ranking {args.candidates} names on the {args.use_queries}-query estimate: "
                  f"{rank_s:.1f} s; Spearman(attacker score, true alignment) "
                  f"{rho.statistic:.3f}; attacker's top {args.top}: true alignment "
                  + ", ".join(f"{v:.3f}" for v in pick_true)
                  + " (true rank " + ", ".join(str(int((true_al > v).sum()) + 1)
                                               for v in pick_true)
                  + f"); the secret holder's top {args.top}: "
                  + ", ".join(f"{float(v):.3f}" for v in best_true[:args.top]), flush=True)
            cell.update(picks=picks, score=score, true_al=true_al, rank_s=rank_s, rows=[])
            cells.append(cell)

    # -- forge: each key's bundle once on the attacker's host, read against every cell ----
    forged = list(dict.fromkeys([*controls, *(k for cl in cells for k in cl["picks"])]))
    print(f"\nforging {len(forged)} keys ({len(controls)} controls, then the picks cell by "
          "cell); a row per key × cell as it is read:", flush=True)
    forge_s: dict[str, float] = {}
    for name in forged:
        t4 = time.time()
        key = WatermarkKey(name)
        att.embed_model(u_att, key)
        cal = att.calibrate(key, [], n_keys=args.calib_keys, pool=pool)
        own = att.verify_model(att.host, key)
        forge_s[name] = time.time() - t4
        i = names.index(name)
        for cl in cells:
            if name not in controls and name not in cl["picks"]:
                continue
            claim = att.verify_model(cl["suspect"], key)
            ctrl = att.verify_model(cl["unmarked"], key)
            rel = float(distance(apply_net(att.host, cl["x"]).clamp(0, 1), cl["s"])) / cl["norm"]
            cl["rows"].append({
                "name": name, "kind": "pick" if name in cl["picks"] else "control",
                "true": float(cl["true_al"][i]), "score": float(cl["score"][i]),
                "d_claim": claim.extra["d_rel"], "eta": claim.extra["eta"],
                "claim": claim.detected, "d_u": ctrl.extra["d_rel"], "on_u": ctrl.detected,
                "d_own": own.extra["d_rel"], "own": own.detected, "rel": rel,
                "owner_match": rel < eta_owner, "fpr": cal["fpr"], "fp": cal["fp"],
                "trials": cal["trials"], "s": forge_s[name]})
            r = cl["rows"][-1]
            print(f"  {r['kind']} {name} on {cl['owner']}@{cl['seed']}: claim d_rel "
                  f"{r['d_claim']:.3f} η_B {fmt(r['eta'])} {'YES' if r['claim'] else 'no'}; "
                  f"on U {r['d_u']:.3f} {'YES' if r['on_u'] else 'no'}; true alignment "
                  f"{r['true']:.3f}; owner reads {rel:.3f}; {forge_s[name]:.0f} s", flush=True)
    for cl in cells:
        print(f"\n### forgery, cell {args.arch} / owner {cl['owner']} / host seed {cl['seed']}\n"
              "| key | kind | true alignment | attacker score | claim: d_rel of the owner's M "
              "under B | η_B | claim verified | B's bundle on the owner's unmarked U | B on "
              "its own host | owner reads M′_B: d_rel | owner match (η "
              f"{eta_owner}) | B's held-out FPR | s |")
        for r in sorted(cl["rows"], key=lambda r: r["kind"] != "pick"):
            print(f"| {r['name']} | {r['kind']} | {r['true']:.3f} | {r['score']:.3f} | "
                  f"{r['d_claim']:.3f} | {fmt(r['eta'])} | {'YES' if r['claim'] else 'no'} | "
                  f"{r['d_u']:.3f} {'YES' if r['on_u'] else 'no'} | {r['d_own']:.3f} "
                  f"{'yes' if r['own'] else 'NO'} | {r['rel']:.3f} | "
                  f"{'YES' if r['owner_match'] else 'no'} | FPR {r['fpr']:.4f} "
                  f"({int(r['fp'])}/{int(r['trials'])}) | {r['s']:.0f} |", flush=True)
    print("\n| arch | owner | host seed | picks: claims verified | picks' bundles on U | "
          "controls: claims verified | owner matches M′_B (picks / controls) | "
          "attacker's cost: rank s + forge s (picks) |")
    for cl in cells:
        picks = [r for r in cl["rows"] if r["kind"] == "pick"]
        ctrls = [r for r in cl["rows"] if r["kind"] == "control"]
        cost = sum(r["s"] for r in picks)
        print(f"| {args.arch} | {cl['owner']} | {cl['seed']} | "
              f"{sum(r['claim'] for r in picks)}/{len(picks)} | "
              f"{sum(r['on_u'] for r in picks)}/{len(picks)} | "
              f"{sum(r['claim'] for r in ctrls)}/{len(ctrls)} | "
              f"{sum(r['owner_match'] for r in picks)}/{len(picks)} / "
              f"{sum(r['owner_match'] for r in ctrls)}/{len(ctrls)} | "
              f"{cl['rank_s']:.1f} + {cost:.0f} |", flush=True)
    print(f"one-off for the attacker: its pool {pool_s:.0f} s; total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
