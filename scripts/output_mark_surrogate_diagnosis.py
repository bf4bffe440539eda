"""Why a surrogate escapes an output_mark bundle: is the mark in its outputs, and does R read it?

For each attacker surrogate (arch, loss L2, seeds, steps) trained on the bundle's
(held-out A, B′) exactly as a matrix cell is, and its twin trained with the same seed on
the clean outputs B of the same inputs, on the test inputs:

* ``sr`` / ``nc``: what R reads on the surrogate's outputs B″ (the matrix cell);
* ``psnr_vs_marked``: fidelity, B″ against the service's B′ (is SM a copy of the service?);
  ``psnr_vs_b`` / ``psnr_vs_target``: B″ against M's clean outputs / the clean targets (the
  task); ``psnr_clean_twin_vs_b``: the clean twin against B (dB);
* ``copy_gain``: ‖B″ − B″_clean‖ / ‖B′ − B‖ (how much of the mark's energy it copied) and
  ``copy_cos``: cosine of B″ − B″_clean with B′ − B per image (whether it is the mark);
  ``copy_along``: ⟨copy, δ⟩ / ‖δ‖² per image, the share of the mark it reproduces;
* ``sr_copy_on_b``: R on B + (B″ − B″_clean), the copied residual on M's clean outputs (the
  mark as copied, without the surrogate's own artefacts);
* ``band_gain``: the copy's energy ratio in three radial frequency bands (low / mid / high);
* ``sr_scaled``: R on B + α(B′ − B), the mark amplitude R needs (no surrogate);
* ``cos_between_seeds``: cosine of two instances' copied residuals (same arch, other seed);
* ``ladder``: per arch and budget, the means over the attacker seeds, the theft bar
  (:func:`theft_bar`) and the pooled flag counts over all seeds' outputs with their exact
  95% Clopper–Pearson intervals (``components.stats.pooled_flags``): ``flagged`` for the surrogates,
  ``flagged_clean_twin`` for their clean twins (innocent models: the twins' flags are false
  positives).

``--steps`` is a ladder of the attacker's budgets: each surrogate is trained once to the
largest and read at every budget on the way (``attack_cell_ladder``: the same outputs as a
run of that length).

    OMP_NUM_THREADS=1 python scripts/output_mark_surrogate_diagnosis.py \
        --bundle components/pretrained/output_mark --key neuralmark-demo --out runs/diag.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from neuralmark.components.methods.output_mark.losses import radial_bands
from neuralmark.components.methods.output_mark.matrix import (  # the om10 theft bar
    CONVERGED_GAIN_DB,
    TASK_MARGIN_DB,
    attack_pairs,
    cell_ladder_outputs,
    clean_attack_pairs,
)
from neuralmark.components.methods.output_mark.seeds import attacker_settings
from neuralmark.components.metrics import psnr
from neuralmark.components.stats import pooled_flags
from neuralmark.runtime.output_mark_study import bundle_and_key, derain_study


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1)


def band_energy(r: torch.Tensor) -> torch.Tensor:
    """N×3 energies of N×3×S×S residuals in three radial frequency bands (low, mid, high)."""
    spec = torch.fft.fft2(r).abs().pow(2).sum(1)  # N×S×S
    bands = radial_bands(r.shape[-1])
    return torch.stack([(spec * m.to(spec.device)).sum((-2, -1)) for m in bands], 1)




def theft_bar(ladder: list[dict], service_task_psnr: float) -> None:
    """Mark each rung of one arch's ``ladder`` (ascending steps, seed means) in place:
    ``converged`` (the next doubling adds < CONVERGED_GAIN_DB of fidelity to B′; None
    where the ladder has no rung at 2k), ``useful`` (task PSNR ≥ the service's −
    TASK_MARGIN_DB) and ``theft`` (both)."""
    by_steps = {r["steps"]: r for r in ladder}
    for r in ladder:
        nxt = by_steps.get(2 * r["steps"])
        r["converged"] = (None if nxt is None else
                          nxt["psnr_vs_marked"] - r["psnr_vs_marked"] < CONVERGED_GAIN_DB)
        r["useful"] = r["psnr_vs_target"] >= service_task_psnr - TASK_MARGIN_DB
        r["theft"] = bool(r["converged"]) and r["useful"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--key", default=None)
    p.add_argument("--profile", default="tiny")
    p.add_argument("--archs", nargs="+", default=["cnet", "unet", "res9"])
    p.add_argument("--seeds", type=int, nargs="+", default=[101, 102, 103])
    p.add_argument("--steps", type=int, nargs="+", default=[0],
                   help="attacker budgets, one run read at each (0: the bundle's schedule)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    m, key = bundle_and_key(args.bundle, args.key)
    study = derain_study(args.profile)
    m.set_groups(study.groups)
    a_att, marked_att = attack_pairs(m, study.train)
    _, clean_att = clean_attack_pairs(m, study.train)  # the twins' targets: M's outputs
    a, gt = m.working_pairs(study.test, "test pairs")
    with torch.no_grad():
        b = m.model_outputs(a)
        marked = m.marked_outputs(a)
        mark = marked - b
    out: dict = {"bundle": str(args.bundle), "stage2_archs": list(m.config.stage2_arch_list),
                 "stage2_surrogate": m.config.surrogate.model_dump(mode="json"),
                 "n_test": int(a.shape[0]), "n_attacker_pairs": int(a_att.shape[0]),
                 "mark_rms": float(mark.pow(2).mean().sqrt()),
                 "psnr_model_vs_target": float(psnr(b, gt).mean()),
                 "psnr_service_vs_target": float(psnr(marked, gt).mean()),
                 "mark_band_share": (band_energy(mark).sum(0)
                                     / band_energy(mark).sum()).tolist(),
                 "sr_scaled": {}, "cells": []}
    for alpha in (0.25, 0.5, 0.75, 1.0):
        out["sr_scaled"][str(alpha)] = float(m.hits((b + alpha * mark).clamp(0, 1), key)[1]
                                             .float().mean())
    mark_bands = band_energy(mark).sum(0)
    mark_sq = _flat(mark).pow(2).sum(1)
    for arch in args.archs:
        copies: dict[int, list[torch.Tensor]] = {}
        for seed in args.seeds:
            s = attacker_settings(m.config, {"seed": seed})
            budgets = [k or s.steps for k in args.steps]
            marked_outs = cell_ladder_outputs(marked_att, a_att, a, arch, "l2", s, budgets)
            clean_outs = cell_ladder_outputs(clean_att, a_att, a, arch, "l2", s, budgets)
            for steps in sorted(marked_outs):
                marked_out, clean_out = marked_outs[steps], clean_outs[steps]
                copy = marked_out - clean_out
                copies.setdefault(steps, []).append(copy)
                nc, hit = m.hits(marked_out, key)
                nc_c, hit_c = m.hits(clean_out, key)
                _, hit_copy = m.hits((b + copy).clamp(0, 1), key)
                gain = _flat(copy).norm(dim=1) / _flat(mark).norm(dim=1)
                cos = torch.nn.functional.cosine_similarity(_flat(copy), _flat(mark), dim=1)
                along = (_flat(copy) * _flat(mark)).sum(1) / mark_sq
                row = {"arch": arch, "steps": steps, "seed": seed,
                       "sr": float(hit.float().mean()), "nc": float(nc.mean()),
                       "n_outputs": int(hit.numel()), "n_flagged": int(hit.sum()),
                       "n_flagged_clean_twin": int(hit_c.sum()),
                       "psnr_vs_marked": float(psnr(marked_out, marked).mean()),
                       "psnr_vs_b": float(psnr(marked_out, b).mean()),
                       "psnr_vs_target": float(psnr(marked_out, gt).mean()),
                       "psnr_clean_twin_vs_b": float(psnr(clean_out, b).mean()),
                       "sr_clean_twin": float(hit_c.float().mean()),
                       "nc_clean_twin": float(nc_c.mean()),
                       "copy_gain": float(gain.mean()), "copy_cos": float(cos.mean()),
                       "copy_along": float(along.mean()),
                       "sr_copy_on_b": float(hit_copy.float().mean()),
                       "band_gain": (band_energy(copy).sum(0) / mark_bands).sqrt().tolist()}
                out["cells"].append(row)
                print(json.dumps(row), flush=True)
        ladder = []
        for steps, cs in sorted(copies.items()):
            rows = [r for r in out["cells"] if r["arch"] == arch and r["steps"] == steps]
            ladder.append({"arch": arch, "steps": steps, **{
                k: sum(r[k] for r in rows) / len(rows)
                for k in ("sr", "nc", "psnr_vs_marked", "psnr_vs_b", "psnr_vs_target",
                          "psnr_clean_twin_vs_b", "sr_clean_twin", "copy_along",
                          "sr_copy_on_b")},
                "flagged": pooled_flags(rows, "n_flagged"),
                "flagged_clean_twin": pooled_flags(rows, "n_flagged_clean_twin")})
            if len(cs) > 1:
                cos_pairs = [float(torch.nn.functional.cosine_similarity(
                    _flat(cs[i]), _flat(cs[j]), dim=1).mean())
                    for i in range(len(cs)) for j in range(i + 1, len(cs))]
                out.setdefault("cos_between_seeds", {})[f"{arch}@{steps}"] = cos_pairs
        theft_bar(ladder, out["psnr_service_vs_target"])
        out.setdefault("ladder", []).extend(ladder)
        for r in ladder:
            print(f"{arch} {r['steps']:>6} steps: R reads {100 * r['sr']:5.1f}%  fidelity "
                  f"{r['psnr_vs_marked']:.2f} dB  task {r['psnr_vs_target']:.2f} dB "
                  f"(service {out['psnr_service_vs_target']:.2f})  along δ "
                  f"{r['copy_along']:.3f}  converged {r['converged']}  theft {r['theft']}  "
                  f"clean twins flagged {r['flagged_clean_twin']['k']}/"
                  f"{r['flagged_clean_twin']['n']}",
                  flush=True)
    text = json.dumps(out, indent=1)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
