"""Per-round diagnostics of ``pgd_signer``'s EM training (issue #17: EM collapse).

Runs ``fit`` on crops of scikit-image's photographs with the tiny profile's decoder
(width 32, 128² working size, decoder input 64²) and, after every EM round, measures under
one fixed probe key's decoder (what ``embed`` / ``verify`` use):

- ``sign_acc``: bit accuracy of ``embed`` read back unattacked (the signing step);
- ``att_acc``: the same marks read after one draw of the EoT chain (attacked);
- ``words``: distinct 32-bit words over the clean eval images (collapse: 1);
- ``pen``: the M-step's clean penalty, ``bce`` its message loss (from the fit metrics);
- ``dead``: share of the last feature layer's channels that are zero on every clean image.

Usage: ``python scripts/pgd_signer_em_collapse.py --rounds 6 [--set lr=1e-4 ...]``
(one torch thread; prints one line per round).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from neuralmark.components.methods import WatermarkKey, build

TINY = {"working_size": 128, "width": 32, "input_stride": 2, "psnr_target": 38.5,
        "margin": 0.5, "clean_view_weight": 0.9, "batch_size": 8, "sign_steps_train": 10,
        "m_steps": 10, "pgd_steps": 20, "eot_samples": 2, "curve_images": 2,
        "buffer_size": 64, "whitening_images": 32}


def photos(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """``n`` random ``size``² crops of scikit-image's colour photographs (N×3×S×S)."""
    from skimage import data

    names = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
             "immunohistochemistry", "motorcycle_left", "retina", "colorwheel"]
    imgs = []
    for name in names:
        try:
            im = getattr(data, name)()
        except Exception:  # noqa: BLE001 - an image the installed skimage lacks is skipped
            continue
        if im.ndim == 3 and im.shape[2] >= 3:
            imgs.append(torch.from_numpy(np.ascontiguousarray(im[..., :3])).permute(2, 0, 1))
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        im = imgs[i % len(imgs)]
        h, w = im.shape[-2:]
        c = int(torch.randint(min(h, w) // 3, min(h, w) + 1, (1,), generator=g))
        y = int(torch.randint(0, h - c + 1, (1,), generator=g))
        x = int(torch.randint(0, w - c + 1, (1,), generator=g))
        crop = im[:, y:y + c, x:x + c].float().unsqueeze(0) / 255
        out.append(torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear",
                                                   antialias=True, align_corners=False))
    return torch.cat(out).clamp(0, 1)


@torch.no_grad()
def _dead_share(decoder: torch.nn.Module, x: torch.Tensor) -> float:
    xi = torch.nn.functional.interpolate(x, scale_factor=1 / decoder.input_stride,
                                         mode="bilinear", antialias=True) \
        if decoder.input_stride > 1 else x
    mean = xi.mean(dim=(1, 2, 3), keepdim=True)
    std = xi.std(dim=(1, 2, 3), keepdim=True)
    fmap = decoder.features((xi - mean) / (std + 0.02))
    return float((fmap.amax(dim=(0, 2, 3)) <= 0).float().mean())


def probe(m, evalset: torch.Tensor, key: WatermarkKey) -> dict[str, float]:
    """Signing / attacked bit accuracy, distinct clean words, dead channels under ``key``."""
    m._keyed.clear()  # the shared layers moved: rebuild the key's decoder
    dec = m.decoder_for(key)
    target = torch.from_numpy(m.codec.encode(key)).float()
    marked = m.embed(evalset, key)
    with torch.no_grad():
        sign_acc = float(((m.logits(marked, dec) > 0).float() == target).float().mean())
        g = torch.Generator().manual_seed(1)
        att = m.eot(m._to_working(marked), g)
        att_acc = float(((dec(att) > 0).float() == target).float().mean())
        words = len({tuple(r) for r in m.decode_bits(evalset, decoder=dec).tolist()})
    return {"sign_acc": sign_acc, "att_acc": att_acc, "words": float(words),
            "dead": _dead_share(dec, m._to_working(evalset))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--train", type=int, default=48)
    ap.add_argument("--eval", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default="", help="build / reuse the tiny profile's sample "
                    "set here (128², 4 crops per photo, 12 procedural) and use its train / "
                    "test splits; default: crops of scikit-image photographs")
    ap.add_argument("--set", action="append", default=[], help="config field=value (JSON value)")
    args = ap.parse_args()
    import json

    torch.set_num_threads(1)
    over = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    cfg = {**TINY, "rounds": args.rounds, "seed": args.seed, **over}
    m = build("pgd_signer", cfg)
    if args.data:
        from neuralmark.components.data.manifest import load_split
        from neuralmark.components.data.sample import SampleDataConfig, build_sample_dataset

        manifest = build_sample_dataset(args.data, SampleDataConfig(
            size=128, crops_per_photo=4, n_procedural=12))
        train = load_split(manifest, "train", limit=args.train)
        evalset = load_split(manifest, "test", limit=args.eval)
    else:
        train = photos(args.train, 128, seed=args.seed)
        evalset = photos(args.eval, 128, seed=1000 + args.seed)
    key = WatermarkKey("probe", 0)
    # round -1: the whitened fresh decoder (what 0 EM rounds ships)
    m.set_whitening_set(m._to_working(train))
    p0 = probe(m, evalset, key)
    print(f"config overrides: {over}", flush=True)
    print(f"round -1 {' '.join(f'{k} {v:.3f}' for k, v in p0.items())}", flush=True)
    t0 = time.time()

    class Probe:
        def on_metrics(self, rnd: int, metrics: dict[str, float]) -> None:
            p = probe(m, evalset, key)
            m.decoder.train(False)
            print(f"round {rnd} {' '.join(f'{k} {v:.3f}' for k, v in p.items())} "
                  f"pen {metrics['m_clean_penalty']:.3f} bce {metrics['m_bce']:.3f} "
                  f"m_acc_att {metrics['m_bit_acc_attacked']:.3f} e_acc {metrics['e_bit_acc']:.3f} "
                  f"t {time.time() - t0:.0f}s", flush=True)

    m.fit({"train": train, "val": evalset[:2]}, [Probe()])


if __name__ == "__main__":
    main()
