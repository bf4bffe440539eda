"""Cross-key false matches of trigger_key: does a host marked only with ANOTHER key verify the
owner's key? (issue #13, tk8)

The tiny DnCNN cell of ``diagnose_trigger_key_overwrite.py`` (5×16 grey DnCNN, 300 host
steps, 200 embedding steps at λ 1e-2; data: the tiny pipeline's sample set, ``--sample DIR``):
the host U is trained and the owner's key ``neuralmark-eval`` embedded (its stored S). Then
``--n`` other keys, with names drawn at random from a seeded generator (``rand-<63-bit int>``,
not selected by anything), are each embedded into the *unmarked* U with the public recipe
(``evaluation.overwriting_attacker``: the plain embedding, no look-ahead, its ``stop_mse``
rule, the embedding's batches) and each result is read under the *owner's* key:
``d_rel = d(net(K), S) / d(U(K), S)``, the verified statistic. A false match is
``d_rel < --eta`` (default 0.8116, the tk6 tiny pipeline's η for this host and mark; the
script does not calibrate). Beside it: the key's filter alignment ``NCC(G_i(K), G(K))`` (the
``--survey`` statistic of the diagnosis script, no training) and the key's own d_rel on K_i.

At the end: k/N with the exact (Clopper–Pearson) 95 % interval, the d_rel quantiles, and the
Spearman correlation of alignment with d_rel (is alignment a predictor?). One row per key is
printed as it finishes, so a cut-short run still reports. Findings: the trigger_key
MODEL_CARD, section "Cross-key false matches".

``--family band`` (tk9) runs the same with the opt-in ``band`` key family for the owner and
every other key (``TriggerKeyConfig.key_family``); each row then also gives the distance of
the key's frequency to the owner's, min over ±ω of |ω_i − ω_own| (cycles/px), and the end
its Spearman correlation with d_rel. ``--eta`` must then be that family's η (the default is
the filter family's). Findings: the MODEL_CARD, session tk9. ``--family midband`` (tk10): the
alignment is computed with each key's 7×7 Gabor (``trigger.midband_kernel``).

``--variant field=value,…`` (tk14) sets ``TriggerKeyConfig`` fields for the owner and every
other key alike (the public recipe of that variant, e.g. ``contrastive_negatives=4``).

``--arch red`` / ``--arch vdsr`` (tk11) run the same on the other two tiny pipeline hosts,
each with its pipeline cell (``HOST_CELLS``: the tiny profile's depth and the run config's
task and λ; RED 6×16 denoise σ 25/255 at λ 1e-2, ``configs/trigger_key_red.yaml``; VDSR 5×16
×2 at λ 1e-3, ``configs/trigger_key_sr.yaml``) and, unless ``--eta`` is given, that
pipeline's measured η (RED 0.8464, VDSR 0.575: the MODEL_CARD's pool-8 runs). Findings: the
MODEL_CARD, session tk11.

    python scripts/measure_trigger_key_cross_key.py --sample /tmp/sample --n 60
        [--arch dncnn|red|vdsr] [--keys attacker-180 attacker-73] [--family band|midband --eta ETA]
"""

from __future__ import annotations

import argparse
import math
import os
import time

os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402
from scipy import stats  # noqa: E402

from neuralmark.components.data.sample import SampleDataConfig, build_sample_dataset  # noqa: E402
from neuralmark.components.methods.base import WatermarkKey  # noqa: E402
from neuralmark.components.methods.registry import build  # noqa: E402
from neuralmark.components.methods.trigger_key.calibration import key_alignment  # noqa: E402
from neuralmark.components.methods.trigger_key.embedding import embed_into_host  # noqa: E402
from neuralmark.components.methods.trigger_key.evaluation import overwriting_attacker  # noqa: E402
from neuralmark.components.methods.trigger_key.study import task_images  # noqa: E402
from neuralmark.components.methods.trigger_key.trigger import (  # noqa: E402
    band_frequency,
    distance,
)
from neuralmark.components.nets.image_nets import apply_net  # noqa: E402

#: the tiny pipeline's cell per host: the method config beside the host steps, and the
#: pipeline's measured η on d_rel for the owner ``neuralmark-eval`` (the script does not
#: calibrate). DnCNN: tk6 (configs/trigger_key.yaml); RED: tk4's pool-8 run
#: (configs/trigger_key_red.yaml); VDSR ×2: the pool-8 run (configs/trigger_key_sr.yaml).
HOST_CELLS: dict[str, tuple[dict[str, object], float]] = {
    "dncnn": ({"arch": "dncnn", "task": "denoise", "depth": 5, "lam": 1e-2}, 0.8116),
    "red": ({"arch": "red", "task": "denoise", "depth": 6, "lam": 1e-2}, 0.8464),
    "vdsr": ({"arch": "vdsr", "task": "sr", "scale": 2, "depth": 5, "lam": 1e-3}, 0.575),
}


def host_config(arch: str, family: str = "filter", depth: int | None = None) -> dict:
    """The ``trigger_key`` config of the tiny pipeline's ``arch`` cell (300 host steps,
    200 embedding steps, no visualizer, no λ = 0 reference); ``depth`` overrides the cell's."""
    if arch not in HOST_CELLS:
        raise ValueError(f"unknown host {arch!r}: one of {', '.join(HOST_CELLS)}")
    cell = dict(HOST_CELLS[arch][0])
    if depth is not None:
        cell["depth"] = depth
    return {"channels": 1, **cell, "host_steps": 300, "embed_steps": 200,
            "visualizer_steps": 0, "lambda0_reference": False, "key_family": family}


def variant_fields(text: str) -> dict[str, object]:
    """``field=value,…`` → ``{field: int, float or text}`` (``TriggerKeyConfig`` validates);
    ``SystemExit`` naming an item without ``=``."""
    out: dict[str, object] = {}
    for item in filter(None, text.split(",")):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise SystemExit(f"--variant: expected field=value, got {item!r}")
        for kind in (int, float, str):
            try:
                out[name.strip()] = kind(value.strip())
                break
            except ValueError:
                continue
    return out


def alignment(c, owner: str, name: str) -> float:
    """NCC(G_name(K), G_owner(K)) on the owner's K (the ``--survey`` statistic of the
    diagnosis script) for the config ``c``'s task and key family: the library's
    ``calibration.key_alignment`` (tk13: the ``aligned`` calibration pool ranks keys by it)."""
    return key_alignment(owner, [name], c.trigger_side, c.channels, c.task, c.scale,
                         c.keyed_gradient, c.key_family)[0]


def random_key_names(n: int, seed: int) -> list[str]:
    """``n`` key names from a seeded generator: unselected, reproducible."""
    g = torch.Generator().manual_seed(seed)
    return [f"rand-{int(v)}" for v in torch.randint(0, 2**62, (n,), generator=g)]


def band_distance(a: str, b: str) -> float:
    """Distance of two keys' ``band`` frequencies, min over ±ω (a real K has both)."""
    (ay, ax), (by, bx) = band_frequency(a), band_frequency(b)
    return min(math.hypot(ay - s * by, ax - s * bx) for s in (1.0, -1.0))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample", required=True, help="build / reuse the tiny sample set here")
    ap.add_argument("--n", type=int, default=60, help="number of other keys embedded")
    ap.add_argument("--seed", type=int, default=13, help="seed of the key names")
    ap.add_argument("--keys", nargs="+", default=None,
                    help="embed these named keys instead of --n random ones (a check, e.g. "
                         "the diagnosis' attacker-180)")
    ap.add_argument("--arch", choices=tuple(HOST_CELLS), default="dncnn",
                    help="the tiny pipeline host (tk11: red, vdsr ×2; default the DnCNN)")
    ap.add_argument("--eta", type=float, default=None,
                    help="the pipeline's η on d_rel for this host and mark (default: the "
                         "host cell's measured η, HOST_CELLS)")
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="embed no further key once this much wall time has passed; the "
                         "summary is then over the keys done (tk11: N as large as time allows)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--depth", type=int, default=None, help="default: the host cell's")
    ap.add_argument("--family", choices=("filter", "band", "midband"), default="filter",
                    help="the key family of the owner and of every other key (tk9)")
    ap.add_argument("--variant", default="",
                    help="field=value,… of TriggerKeyConfig for the owner and every other key "
                         "(tk14: e.g. contrastive_negatives=4); --eta must then be its η")
    args = ap.parse_args(argv)
    if args.n < 1:
        raise SystemExit(f"--n must be at least 1, got {args.n}")
    if args.max_seconds is not None and args.max_seconds <= 0:
        raise SystemExit(f"--max-seconds must be positive, got {args.max_seconds}")
    if args.eta is None:
        args.eta = HOST_CELLS[args.arch][1]
    torch.set_num_threads(args.threads)
    t0 = time.time()
    fields = variant_fields(args.variant)
    host = build("trigger_key", {**host_config(args.arch, args.family, args.depth), **fields})
    c = host.config
    manifest = build_sample_dataset(args.sample, SampleDataConfig(
        size=128, crops_per_photo=4, n_procedural=12))
    fit = host.fit(task_images(manifest))
    owner = WatermarkKey("neuralmark-eval")
    host.embed_model(host.unmarked, owner)
    (x, y), _ = host.require_pairs()
    x_own, s = host.reference(owner)[:2]
    u_out = apply_net(host.unmarked, x_own).clamp(0, 1)
    norm = float(distance(u_out, s))
    m_rel = float(distance(apply_net(host.host, x_own).clamp(0, 1), s)) / norm
    print(f"host: noisy {fit['input_psnr']:.2f} dB, unmarked {fit['host_psnr']:.2f} dB, marked "
          f"{host.task_psnr_of(host.host):.2f} dB, owner's d_rel on M {m_rel:.3f}, "
          f"η {args.eta}, host {c.arch}×{c.depth} {c.task} λ {c.lam}, key family "
          f"{args.family} ({time.time() - t0:.0f} s)", flush=True)
    attacker = overwriting_attacker(host)
    rows = []
    band = args.family == "band"
    print("| i | key | NCC(G_i(K), G(K)) | " + ("|Δω| | " if band else "")
          + "steps | d_rel owner's K | own d_rel on K_i | match |", flush=True)
    names = args.keys or random_key_names(args.n, args.seed)
    for i, name in enumerate(names):
        if args.max_seconds is not None and time.time() - t0 > args.max_seconds:
            print(f"--max-seconds {args.max_seconds:g} reached: {i} of {len(names)} keys done",
                  flush=True)
            break
        key = WatermarkKey(name)
        align = alignment(c, owner.secret, name)
        x_k, s0_k = attacker.key_material(key)
        loss, done = attacker.mark_loss(key)
        net, info = embed_into_host(host.unmarked, x, y, loss, c.lam, c.embed_steps, c.lr,
                                    c.batch_size, c.seed + 7, host.run_device(), done,
                                    c.check_every, (), desc=f"cross-{i}")
        net = net.cpu().eval()
        rel = float(distance(apply_net(net, x_own).clamp(0, 1), s)) / norm
        own = (float(distance(apply_net(net, x_k).clamp(0, 1), s0_k))
               / float(distance(apply_net(host.unmarked, x_k).clamp(0, 1), s0_k)))
        dw = band_distance(name, owner.secret) if band else math.nan
        rows.append((align, rel, dw))
        print(f"| {i} | {name} | {align:.3f} | " + (f"{dw:.3f} | " if band else "")
              + f"{int(info['steps'])} | {rel:.3f} | {own:.3f} | "
              f"{'YES' if rel < args.eta else 'no'} |", flush=True)
    n = len(rows)
    if n == 0:
        raise SystemExit("no key was embedded within --max-seconds: nothing to summarise")
    aligns = torch.tensor([a for a, _, _ in rows], dtype=torch.float64)
    rels = torch.tensor([r for _, r, _ in rows], dtype=torch.float64)
    k = int((rels < args.eta).sum())
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    q = torch.quantile(rels, torch.tensor([0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0],
                                          dtype=torch.float64))
    rho = stats.spearmanr(aligns.numpy(), rels.numpy())
    print(f"false matches under the owner's key: {k}/{n} = {100 * k / n:.1f} % "
          f"(exact 95 % CI {100 * ci.low:.2f}–{100 * ci.high:.2f} %)")
    print("d_rel quantiles min/5/25/50/75/95/max: " + " / ".join(f"{float(v):.3f}" for v in q))
    print(f"alignment: median {float(aligns.median()):.3f}, range {float(aligns.min()):.3f} to "
          f"{float(aligns.max()):.3f}; Spearman(alignment, d_rel) {rho.statistic:.3f} "
          f"(p {rho.pvalue:.2g})")
    if band:
        dws = torch.tensor([w for _, _, w in rows], dtype=torch.float64)
        rho_w = stats.spearmanr(dws.numpy(), rels.numpy())
        print(f"|Δω| to the owner's band: median {float(dws.median()):.3f}; "
              f"Spearman(|Δω|, d_rel) {rho_w.statistic:.3f} (p {rho_w.pvalue:.2g})")
        for lo, hi in ((0.0, 0.05), (0.05, 0.1), (0.1, 0.2), (0.2, 1.0)):
            sel = (dws >= lo) & (dws < hi)
            if sel.any():
                print(f"  |Δω| in [{lo}, {hi}): {int(sel.sum())} keys, d_rel median "
                      f"{float(rels[sel].median()):.3f}, min {float(rels[sel].min()):.3f}, "
                      f"matches {int((rels[sel] < args.eta).sum())}")
    for lo, hi in ((-1.0, 0.0), (0.0, 0.3), (0.3, 1.01)):
        sel = (aligns >= lo) & (aligns < hi)
        if sel.any():
            print(f"  alignment in [{lo}, {hi}): {int(sel.sum())} keys, d_rel median "
                  f"{float(rels[sel].median()):.3f}, min {float(rels[sel].min()):.3f}, "
                  f"matches {int((rels[sel] < args.eta).sum())}")
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
