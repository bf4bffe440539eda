"""Where ``pgd_signer``'s embed time goes, on the shipped bundle (issue #17, embed speed).

Usage (the model card's "Embed speed (ps6)" breakdown)::

    OMP_NUM_THREADS=1 python scripts/profile_pgd_signer_embed.py --sizes 256,1024 --repeats 2

Times, on one thread, one held-out sample-test photo per size: loading the bundle, building
the key's decoder (whitening views + ``keyed_decoder``), the payload, resizing to the working
size, the JND map, and one PGD step of ``signing.sign_working`` split into sampling the EoT
draw, the chain's forward (per call of ``EoTChain.stages``: per attack, or "warp" for the
fused crop + zoom + rotate), the decoder's forward, the backward through the
decoder alone and through the chain, and the projection; then a whole ``embed`` (the default
path, the key's decoder already cached) and the residual's upsampling. Per-step parts are the
median over ``--steps`` replayed steps; they are measured outside ``embed``, so their sum times
``pgd_steps`` is compared with the whole call in the output.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "components" / "pretrained" / "pgd_signer"


def _ms(fn, repeats: int = 1) -> tuple[float, object]:
    """Median wall ms of ``fn()`` over ``repeats`` calls, and its last result."""
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times), out


def step_parts(m, xw: torch.Tensor, target: torch.Tensor, decoder, steps: int
               ) -> tuple[dict, dict]:
    """Median and mean ms of each part of one PGD step (``signing.sign_working``'s loop
    body), each attack's forward and backward timed on its own (the chain cut into leaves)."""
    from neuralmark.components.attacks.base import select_rows
    from neuralmark.components.methods.pgd_signer import signing

    c = m.config
    chain = m.eot
    b = xw.shape[0]
    g = torch.Generator().manual_seed(c.seed)
    sign = (2 * target - 1).to(xw)
    delta = torch.zeros_like(xw)
    parts: dict[str, list[float]] = {}
    # as ``signing.sign_working``: stochastic EoT draws a subset per view, runs the sparse chain
    stochastic = 0 < c.eot_attacks_per_view < len(chain.attacks)
    draw = ({"per_view": c.eot_attacks_per_view,
             **({"shared": True} if c.eot_shared_draw else {})} if stochastic else {})
    only_on = c.eot_only_on or stochastic

    def add(name: str, t0: float) -> float:
        t1 = time.perf_counter()
        parts.setdefault(name, []).append(1000 * (t1 - t0))
        return t1

    decoder.eval()
    for _ in range(steps):
        t = time.perf_counter()
        delta.requires_grad_(True)
        xs = (xw + delta).clamp(0, 1)
        reps = xs.repeat(c.eot_samples, 1, 1, 1)
        params = chain.sample(reps.shape[0], g, **draw)
        for k, v in params.items():
            if k.endswith(".on"):
                v[:b] = 0
        t = add("sample EoT draw", t)
        links = []  # (name, leaf in, out) per attack
        y = reps
        for _, a, sub in chain.stages(params):  # fused_warp: crop, zoom, rotate as one
            leaf = y.detach().requires_grad_(True)
            rows = sub["on"].nonzero().flatten() if only_on else None
            if rows is None or len(rows) == len(leaf):
                y = a.apply(leaf, sub)
            elif len(rows):
                y = leaf.index_copy(0, rows, a.apply(leaf[rows], select_rows(sub, rows,
                                                                            len(leaf))))
            else:
                y = leaf * 1
            links.append((a.name, leaf, y))
            t = add(f"chain fwd: {a.name}", t)
        leaf = y.detach().requires_grad_(True)
        logits = decoder(leaf)
        t = add("decoder fwd (incl. /4 downsample)", t)
        hinge = F.relu(c.margin - sign.repeat(c.eot_samples, 1) * logits)
        loss = (c.clean_view_weight * hinge[:b].mean()
                + (1 - c.clean_view_weight) * hinge[b:].mean())
        (gy,) = torch.autograd.grad(loss, leaf)
        t = add("decoder bwd", t)
        for name, leaf_in, out in reversed(links):
            (gy,) = torch.autograd.grad(out, leaf_in, gy)
            t = add(f"chain bwd: {name}", t)
        (grad,) = torch.autograd.grad(reps, delta, gy)
        t = add("repeat/clamp bwd", t)
        with torch.no_grad():
            gg = grad
            gg = gg / gg.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            delta = signing.project(c, delta - 0.1 * signing.radius(c, c.psnr_target) * gg,
                                    xw, c.psnr_target)
        add("normalise + project", t)
    # a sparse draw runs an attack in some steps only: its median is then 0, its mean is the
    # per-step cost averaged over the steps; both are returned
    return ({k: statistics.median(v) for k, v in parts.items()},
            {k: statistics.fmean(v) for k, v in parts.items()})


def profile_size(m, key, decoder, x: torch.Tensor, steps: int, repeats: int) -> dict:
    """The breakdown for one image ``x`` (1×3×H×W)."""
    from neuralmark.components.methods.pgd_signer import signing

    row: dict = {}
    row["payload encode"], bits = _ms(lambda: torch.from_numpy(m.codec.encode(key)).float())
    row["resize to working size"], xw = _ms(lambda: m._to_working(x), 3)
    row["jnd map"], _ = _ms(lambda: signing.jnd_map(xw), 3)
    parts, means = step_parts(m, xw, bits.unsqueeze(0), decoder, steps)
    row["per PGD step"] = parts
    row["per PGD step, total"] = sum(parts.values())
    row["per PGD step, mean over steps"] = means
    row["per PGD step, mean total"] = sum(means.values())
    row["pgd_steps x per step"] = sum(means.values()) * m.config.pgd_steps
    delta = torch.zeros_like(xw)
    row["upsample residual"], _ = _ms(lambda: F.interpolate(
        delta, size=x.shape[-2:], mode="bilinear", align_corners=False), 3)
    row["whole embed (key cached)"], _ = _ms(lambda: m.embed(x, key), repeats)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="256,1024")
    ap.add_argument("--steps", type=int, default=8, help="replayed PGD steps per size")
    ap.add_argument("--repeats", type=int, default=1, help="whole embeds per size")
    ap.add_argument("--set", action="append", default=[],
                    help="config override FIELD=JSON (e.g. eot_only_on=true, "
                         "eot.jpeg_impl='\"blockdct\"')")
    ap.add_argument("--out", type=Path, default=Path("/tmp/pgd_signer_embed_profile.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    from pgd_signer_embed_levers import configured  # the sibling script (scripts/ on sys.path)

    from neuralmark.components.data.manifest import load_split
    from neuralmark.components.data.sample import SampleDataConfig, build_sample_dataset
    from neuralmark.components.methods.base import WatermarkKey
    from neuralmark.components.methods.pgd_signer import PGDSigner

    out: dict = {}
    overrides = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    t_load, m = _ms(lambda: PGDSigner.from_bundle(BUNDLE))
    m = configured(m, overrides)
    key = WatermarkKey("victim-secret", 7)
    t_views, _ = _ms(m.whitening_views)
    t_keyed, decoder = _ms(lambda: m.decoder_for(key))
    out["per call (once)"] = {"load bundle": t_load, "whitening views": t_views,
                              "keyed decoder (stem/head draw + whitening)": t_keyed}
    manifest = build_sample_dataset(ROOT / "data" / "sample", SampleDataConfig())
    for size in [int(s) for s in args.sizes.split(",")]:
        x = load_split(manifest, "test", size=size, limit=1)
        out[f"{size}x{size}"] = profile_size(m, key, decoder, x, args.steps, args.repeats)
        print(json.dumps({f"{size}x{size}": out[f"{size}x{size}"]}, indent=1), flush=True)
    print(json.dumps(out["per call (once)"], indent=1))
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
