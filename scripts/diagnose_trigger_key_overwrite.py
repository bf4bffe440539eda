"""Where does trigger_key's mark go when a second key is embedded? (issue #13, tk7)

The tiny DnCNN cell of ``measure_trigger_key_finetune_aware.py`` (5×16 grey DnCNN, 300 host
steps, 200 embedding steps at λ 1e-2; data: the tiny pipeline's sample set, ``--sample DIR``):
the owner's key is embedded, then three runs start from the marked host M *and* from the
unmarked host U, each on the owner's task pairs with the same batches (the embedding's
generator) and BatchNorm frozen, as the library's overwriting attacker
(``evaluation.overwriting_attacker``: the public recipe, its ``stop_mse`` rule):

* ``overwrite`` — ℓ_d + λ·ℓ_w′ of the attacker's key (the attack the gate floors);
* ``plain`` — ℓ_d alone for the same number of steps (λ = 0: drift of a fine-tuned host);
* ``overwrite_0.1`` — the attacker's λ × 0.1.

Every ``check_every`` steps (the config's, 25) it prints, for the owner's trigger K and
stored S: ``d_rel_M`` = d(run(K), S) / d(U(K), S) (the verified statistic, U fixed),
``d_rel_own`` = d(run(K), S) / d(start(K), S) (for runs from U: does the normaliser itself
move?), the cosines of the change run(K) − start(K) with S0′ − S (the attacker's target minus
the owner's S), with U(K) − S (back toward the unmarked response) and, at the end, with the
λ = 0 run's change (a generic fine-tuning response), the attacker's own ℓ_w′ per pixel and
the task PSNR. Cosines are on the clamped [0, 1] outputs, as d is. At the end of each run:
NCC (centred) of run(K) with S0′, S0, S and G′(K) — the attacker's keyed map applied to the
*owner's* trigger, what a host answers to any noise trigger once it has learnt G′ as a local
filter —, the attacker's own d_rel on K′, and the test PSNR. ``--seed-gradient`` runs the
ablation with the seed's fixed ∂x + ∂y for every key (G′ = G). Findings: the trigger_key
MODEL_CARD, session tk7.

    python scripts/diagnose_trigger_key_overwrite.py --sample /tmp/sample [--seed-gradient]
        [--attacker attacker-73] [--survey-only]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from neuralmark.components.data.sample import SampleDataConfig, build_sample_dataset  # noqa: E402
from neuralmark.components.methods.base import WatermarkKey  # noqa: E402
from neuralmark.components.methods.registry import build  # noqa: E402
from neuralmark.components.methods.trigger_key.embedding import embed_into_host  # noqa: E402
from neuralmark.components.methods.trigger_key.evaluation import (  # noqa: E402
    ATTACKER_SECRET,
    overwriting_attacker,
)
from neuralmark.components.methods.trigger_key.study import task_images  # noqa: E402
from neuralmark.components.methods.trigger_key.trigger import (  # noqa: E402
    distance,
    gradient_kernel,
    ncc,
    verification_target,
)
from neuralmark.components.nets.image_nets import apply_net  # noqa: E402


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of two flattened tensors (nan when either is zero)."""
    a, b = a.flatten().double(), b.flatten().double()
    n = a.norm() * b.norm()
    return float(a @ b / n) if n > 0 else float("nan")


class Probe:
    """A callback that reads the net being trained at every check (see the module docstring).

    The net is caught through the mark loss (``embed_into_host`` calls it with the net at
    every step, also at λ = 0); at a check its BatchNorm layers are frozen, so a forward pass
    equals the eval-mode one.
    """

    def __init__(self, mark_loss, x_owner, s, u_out, start_out, target_dir, revert_dir):
        self.mark_loss, self.x, self.s = mark_loss, x_owner, s
        self.u_out, self.start_out = u_out, start_out
        self.target_dir, self.revert_dir = target_dir, revert_dir
        self.net: nn.Module | None = None
        self.rows: list[dict[str, float]] = []

    def loss(self, net: nn.Module) -> torch.Tensor:
        self.net = net
        return self.mark_loss(net)

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        if self.net is None:
            return
        with torch.no_grad():
            out = self.net(self.x).clamp(0, 1)
        d = float(distance(out, self.s))
        d_start = float(distance(self.start_out, self.s))  # 0 for a run from M itself
        change = out - self.start_out
        self.rows.append({
            "step": step, "d_rel_M": d / float(distance(self.u_out, self.s)),
            "d_rel_own": d / d_start if d_start > 0 else float("nan"),
            "cos_attacker": cosine(change, self.target_dir),
            "cos_revert": cosine(change, self.revert_dir),
            "l_w_att_px": next((v for k, v in metrics.items() if k.endswith("_l_w")),
                               float("nan")) / self.x.numel(),
            "psnr_train": next((v for k, v in metrics.items() if k.endswith("_psnr")),
                               float("nan")), "out": out.clone()})

    def on_figure(self, *args) -> None:  # the Callbacks protocol; no figures here
        return None

    def on_progress(self, *args) -> None:
        return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample", required=True, help="build / reuse the tiny sample set here")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--attacker", default=ATTACKER_SECRET,
                    help="the attacker's key (default: the library's overwriting attacker's)")
    ap.add_argument("--survey", type=int, default=200,
                    help="keys attacker-0 … attacker-(N−1) whose NCC(G_i(K), G(K)) is listed "
                         "(no training; 0: none)")
    ap.add_argument("--survey-only", action="store_true", help="list the survey and stop")
    ap.add_argument("--seed-gradient", action="store_true",
                    help="the seed's fixed ∂x + ∂y for every key (keyed_gradient off, an "
                         "ablation): the attacker's G′ is then the owner's G")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    host = build("trigger_key", {"channels": 1, "arch": "dncnn", "depth": args.depth,
                                 "host_steps": 300, "embed_steps": 200, "visualizer_steps": 0,
                                 "lambda0_reference": False,
                                 "keyed_gradient": not args.seed_gradient})
    c = host.config
    if args.survey:
        # how the owner's G(K) and other keys' maps applied to K correlate: no training
        x_k, g_k = host.key_material(WatermarkKey("neuralmark-eval"))
        v = sorted((float(ncc(verification_target(x_k, gradient_kernel(
            f"attacker-{i}", c.keyed_gradient), c.task, c.scale), g_k)), i)
            for i in range(args.survey))
        vals = torch.tensor([a for a, _ in v])
        print(f"NCC(G_i(K), G(K)) over {args.survey} keys attacker-i: median "
              f"{float(vals.median()):.3f}, < 0: {int((vals < 0).sum())}, < −0.3: "
              f"{int((vals < -0.3).sum())}, min {v[0][0]:.3f} (attacker-{v[0][1]}), max "
              f"{v[-1][0]:.3f} (attacker-{v[-1][1]}), median key attacker-{v[len(v) // 2][1]}",
              flush=True)
        if args.survey_only:
            return
    manifest = build_sample_dataset(args.sample, SampleDataConfig(
        size=128, crops_per_photo=4, n_procedural=12))
    fit = host.fit(task_images(manifest))
    owner = WatermarkKey("neuralmark-eval")
    m = host
    m.embed_model(host.unmarked, owner)
    print(f"host: noisy {fit['input_psnr']:.2f} dB, unmarked {fit['host_psnr']:.2f} dB, marked "
          f"{m.task_psnr_of(m.host):.2f} dB, embed steps {m.metrics['embed_steps']:.0f} "
          f"({time.time() - t0:.0f} s)", flush=True)
    (x, y), _ = m.require_pairs()
    x_own, s = m.reference(owner)[:2]
    attacker = overwriting_attacker(m)
    att_key = WatermarkKey(args.attacker)
    x_att, s0_att = attacker.key_material(att_key)
    att_loss, att_done = attacker.mark_loss(att_key)
    u_out = apply_net(m.unmarked, x_own).clamp(0, 1)
    m_out = apply_net(m.host, x_own).clamp(0, 1)
    u_att = apply_net(m.unmarked, x_att).clamp(0, 1)
    s0_own = m.key_material(owner)[1]
    # the attacker's map G′ (its keyed gradient) applied to the owner's trigger: the
    # response a host gives to any noise trigger if it learnt G′ as a local filter
    g_att_k = verification_target(x_own, gradient_kernel(args.attacker, c.keyed_gradient),
                                  c.task, c.scale)
    for name, out in (("U", u_out), ("M", m_out)):
        print(f"{name}(K): NCC with S {float(ncc(out, s)):.3f}, S0 {float(ncc(out, s0_own)):.3f}, "
              f"S0′ {float(ncc(out, s0_att)):.3f}; mean/std {float(out.mean()):.3f}/"
              f"{float(out.std()):.3f}", flush=True)
    print(f"S mean/std {float(s.mean()):.3f}/{float(s.std()):.3f}; S0 {float(s0_own.mean()):.3f}/"
          f"{float(s0_own.std()):.3f}; S0′ {float(s0_att.mean()):.3f}/{float(s0_att.std()):.3f}; "
          f"NCC(S0, S0′) {float(ncc(s0_own, s0_att)):.3f}; "
          f"NCC(G′(K), S) {float(ncc(g_att_k, s)):.3f}; "
          f"G′(K) std {float(g_att_k.std()):.3f}; d(S, S0)/d(U(K), S) "
          f"{float(distance(s, s0_own)) / float(distance(u_out, s)):.3f}", flush=True)
    print(f"d(U(K), S) {float(distance(u_out, s)):.4e}  d(M(K), S) "
          f"{float(distance(m_out, s)):.4e}  d(S0', S) {float(distance(s0_att, s)):.4e}  "
          f"cos(S0'-S, U(K)-S) {cosine(s0_att - s, u_out - s):.3f}", flush=True)
    print("| start | run | step | d_rel_M | d_rel_own | cos(Δ, S0′−S) | cos(Δ, U(K)−S) | "
          "ℓ_w′/px | train PSNR |", flush=True)
    summary = []
    for start_name, start in (("marked", m.host), ("unmarked", m.unmarked)):
        start_out = apply_net(start, x_own).clamp(0, 1)
        plain_change = None
        steps_over = c.embed_steps
        for run, lam, done in (("overwrite", c.lam, att_done), ("plain", 0.0, None),
                               ("overwrite_0.1", c.lam * 0.1, att_done)):
            probe = Probe(att_loss, x_own, s, u_out, start_out, s0_att - s, u_out - s)
            steps = steps_over if run == "plain" else c.embed_steps
            t1 = time.time()
            net, info = embed_into_host(start, x, y, probe.loss, lam, steps, c.lr,
                                        c.batch_size, c.seed + 7, m.run_device(), done,
                                        c.check_every, [probe], desc=run)
            net = net.cpu().eval()
            if run == "overwrite":
                steps_over = int(info["steps"])
            for r in probe.rows:
                print(f"| {start_name} | {run} | {r['step']} | {r['d_rel_M']:.3f} | "
                      f"{r['d_rel_own']:.3f} | {r['cos_attacker']:.3f} | "
                      f"{r['cos_revert']:.3f} | {r['l_w_att_px']:.2e} | "
                      f"{r['psnr_train']:.2f} |", flush=True)
            out = apply_net(net, x_own).clamp(0, 1)
            change = out - start_out
            if run == "plain":
                plain_change = change
            out_att = apply_net(net, x_att).clamp(0, 1)
            extra = (f"NCC(run(K), S0′) {float(ncc(out, s0_att)):.3f}, NCC(run(K), S0) "
                     f"{float(ncc(out, s0_own)):.3f}, NCC(run(K), S) {float(ncc(out, s)):.3f}, "
                     f"NCC(run(K), G′(K)) {float(ncc(out, g_att_k)):.3f}, run(K) mean/std "
                     f"{float(out.mean()):.3f}/{float(out.std()):.3f}, attacker's d_rel on K′ "
                     f"{float(distance(out_att, s0_att)) / float(distance(u_att, s0_att)):.3f}")
            summary.append((start_name, run, int(info["steps"]), out, change,
                            m.task_psnr_of(net), time.time() - t1, extra))
        for name, run, steps, out, change, psnr, secs, extra in summary[-3:]:
            ms = float(distance(out, s))
            print(f"end {name}/{run}: steps {steps}, d_rel_M {ms / float(distance(u_out, s)):.3f}, "
                  f"cos(Δ, Δ_plain) {cosine(change, plain_change):.3f}, "
                  f"|Δ| {float(change.norm()):.3f} (|S−U(K)| {float((s - u_out).norm()):.3f}), "
                  f"test PSNR {psnr:.2f} dB ({secs:.0f} s)\n    {extra}", flush=True)
    # the same run from M and from U: how far apart do the two hosts answer K?
    norm = float(distance(u_out, s))
    ow = {r[0]: r[3] for r in summary if r[1] == "overwrite"}
    pl = {r[0]: r[3] for r in summary if r[1] == "plain"}
    print(f"d(OW_M(K), OW_U(K)) / d(U(K), S) "
          f"{float(distance(ow['marked'], ow['unmarked'])) / norm:.3f}; "
          f"d(P_M(K), P_U(K)) / d(U(K), S) "
          f"{float(distance(pl['marked'], pl['unmarked'])) / norm:.3f}; "
          f"d(G′(K), S) / d(U(K), S) {float(distance(g_att_k, s)) / norm:.3f}")
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
