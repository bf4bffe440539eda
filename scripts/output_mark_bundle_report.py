"""What one output_mark bundle does on the profile's derain test pairs (issue #19 diagnostics).

Without training anything: Table 1 (B′ PSNR, marked outputs read, clean A / B /
targets flagged) on the test pairs, which test photos the clean false positives come
from, the calibrated null's own false-positive rate, and how well the mark reads when
the service runs at other sizes than the working size (H runs at the working size,
its residual is upsampled; R reads a downsampled copy), and which share of clean
images from scikit-image files no split uses (``clean_variety.unseen_photos``: cell,
clock, colour wheel, microaneurysms, phantom, text, horse, chessboard, faces) R flags,
as they are and as M's outputs, at the working size and at the data size::

    python scripts/output_mark_bundle_report.py --bundle components/pretrained/output_mark \
        --key neuralmark-demo --sizes 32 64 128 --unseen --out runs/om-bundle.json
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
from pathlib import Path

import torch

from neuralmark.components.data import pairs
from neuralmark.components.data.clean_variety import unseen_photos
from neuralmark.components.data.pairs import build_pairs, load_split
from neuralmark.components.methods.base import WatermarkKey, resize_square
from neuralmark.components.methods.output_mark.evaluation import quality
from neuralmark.components.methods.output_mark.loops import refresh_extractor_bn
from neuralmark.components.methods.output_mark.training import (
    clean_variety_images,
    training_pairs,
)
from neuralmark.components.metrics import normalized_correlation, psnr
from neuralmark.components.reproducibility import pinned
from neuralmark.runtime.output_mark_study import bundle_and_key, derain_study


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--key", default=None,
                   help="default: the config's logo_secret, if the bundle was trained for it")
    p.add_argument("--profile", default="tiny")
    p.add_argument("--sizes", type=int, nargs="*", default=[])
    p.add_argument("--unseen", action="store_true",
                   help="false positives on never-seen scikit-image photos (clean_variety)")
    p.add_argument("--bn", action="store_true",
                   help="R's BatchNorm: Table 1 with R on batch statistics and with its "
                        "statistics recomputed on the stage-1 batches (om15)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    m, key = bundle_and_key(args.bundle, args.key)
    study = derain_study(args.profile)
    settings, manifest = study.settings, study.manifest
    a, gt = m.working_pairs(study.test, "test pairs")
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
    if args.bn:
        out["bn"] = bn_report(m, study, a, gt)
    if args.unseen:
        out["unseen"] = unseen_report(m, key, sorted({m.config.working_size,
                                                      settings.data.size}))
    text = json.dumps(out, indent=1)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


def bn_report(m, study, a: torch.Tensor, gt: torch.Tensor) -> dict:
    """R's BatchNorm statistics on this bundle (issue #19, om15), the bundle untouched.

    ``batch_statistics``: a copy of R in train mode on one batch of the test B′ and M's
    clean test outputs B, half and half (the read and clean-B rate; as
    ``output_mark_stage1_diagnosis.batch_statistics_read``). ``refreshed``: Table 1 of a copy
    whose R statistics are recomputed (``loops.refresh_extractor_bn``) on stage-1 batches of
    the H/R part (B′ and mixed clean rows, the clean variety when the config has it). The
    shipped R is a stage-2 R, whose batches also hold the stage-2 surrogates' outputs; those
    are not retrained here, so this is the stage-1 composition.
    """
    r = copy.deepcopy(m.R).train()
    marked, clean = m.marked_outputs(a), m.model_outputs(a)
    with torch.no_grad():
        ncs = normalized_correlation(r(torch.cat([marked, clean])), m.logo.cpu()[None])
    n = marked.shape[0]
    batch = {"sr_marked": float(m.hit_mask(ncs[:n], marked).float().mean()),
             "fpr_clean_B": float(m.hit_mask(ncs[n:], clean).float().mean())}
    fresh = copy.deepcopy(m)
    fresh.set_groups(study.groups)
    with pinned(fresh.config.seed, 1):
        tp = training_pairs(fresh, study.train,
                            clean=clean_variety_images(fresh.config, str(study.manifest)))
        b = fresh.model_outputs(tp.a)
        refresh_extractor_bn(fresh, tp.a[tp.hr], b[tp.hr], tp.gt[tp.hr],
                             clean_bank=tp.clean_bank)
        refreshed = quality(fresh, a, gt)
    return {"batch_statistics": batch, "refreshed": refreshed}


def unseen_report(m, key: WatermarkKey, sizes: list[int]) -> dict:
    """Share of never-seen clean photos (and of M's outputs on them) R flags, per size."""
    report = {}
    for size in sizes:
        x, sources = unseen_photos(size)
        with torch.no_grad():
            outs = m.M(x).clamp(0, 1)
        row: dict = {"n": int(x.shape[0])}
        for name, images in (("photos", x), ("model_outputs", outs)):
            hits = m.hits(images, key)[1]
            row[f"fpr_{name}"] = float(hits.float().mean())
            flagged = collections.Counter(s for s, h in zip(sources, hits.tolist(), strict=True)
                                          if h)
            row[f"flagged_{name}_by_source"] = dict(flagged)
        report[str(size)] = row
    return report


if __name__ == "__main__":
    raise SystemExit(main())
