"""What one output_mark bundle does on the profile's derain test pairs (issue #19 diagnostics).

Without training anything: Table 1 (B′ PSNR, marked outputs read, clean A / B /
targets flagged) on the test pairs, which test photos the clean false positives come
from, the calibrated null's own false-positive rate, and how well the mark reads when
the service runs at other sizes than the working size (H runs at the working size,
its residual is upsampled; R reads a downsampled copy)::

    python scripts/output_mark_bundle_report.py --bundle components/pretrained/output_mark \
        --key neuralmark-demo --sizes 32 48 64 --out runs/om-bundle.json
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import torch

from neuralmark.components.data import pairs
from neuralmark.components.data.pairs import build_pairs, load_split
from neuralmark.components.methods import load_bundle
from neuralmark.components.methods.base import WatermarkKey, resize_square
from neuralmark.components.methods.output_mark.evaluation import quality
from neuralmark.components.metrics import psnr
from neuralmark.runtime.settings import CODE_ROOT, resolve


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--key", default=None, help="default: the config's logo_secret")
    p.add_argument("--profile", default="tiny")
    p.add_argument("--sizes", type=int, nargs="*", default=[])
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    m = load_bundle(args.bundle)
    key = WatermarkKey(args.key or m.config.logo_secret)
    settings = resolve("output_mark", args.profile, data={"version_with_dvc": False})
    manifest = Path(settings.data.build(CODE_ROOT))
    _, _, test = pairs.synthesised_pairs(manifest, "derain", settings.data.size)
    a, gt = m.working_pairs(test, "test pairs")
    out: dict = {"bundle": str(args.bundle), "key": key.secret, "n_test": int(a.shape[0]),
                 "table1": quality(m, a, gt), "null_fpr": m.per_image_fpr(),
                 "null_n": len(m.null_scores)}
    groups = [g for s in ("val", "test") for g in pairs.split_groups(manifest, s)]
    hits_b = m.hits(m.model_outputs(a), key)[1].tolist()
    if len(groups) == len(hits_b):
        flagged = collections.Counter(g for g, h in zip(groups, hits_b, strict=True) if h)
        out["clean_B_flagged_by_photo"] = {g: f"{flagged[g]}/{groups.count(g)}"
                                           for g in dict.fromkeys(groups)}
    sizes = {}
    for size in args.sizes:  # the service at another size than the working size
        rainy = torch.cat([build_pairs(load_split(manifest, s, size=size), "derain", 1 + i)[0]
                           for i, s in enumerate(("val", "test"))])
        with torch.no_grad():
            marked = m.marked_model()(rainy)
            plain = m.M(rainy).clamp(0, 1)
        marked_q = (marked * 255).round() / 255  # as saved to an 8-bit file
        sizes[str(size)] = {"psnr_marked": float(psnr(marked, plain).mean()),
                            "sr_marked_8bit": float(m.hits(marked_q, key)[1].float().mean()),
                            "fpr_plain": float(m.hits(plain, key)[1].float().mean()),
                            "psnr_marked_at_working_size": float(psnr(
                                resize_square(marked, m.config.working_size),
                                resize_square(plain, m.config.working_size)).mean())}
    out["sizes"] = sizes
    text = json.dumps(out, indent=1)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
