"""Benchmark a pgd_signer bundle on held-out photos at 256×256; prints figures.

Measures PSNR / SSIM, bit accuracy and detection rate under the benchmark
attack suite (jpeg 90/75/50, resize 0.5, crop 0.9, rotate 5°, blur σ=1, noise
0.02, brightness 1.3, contrast 1.3, combo), embed and verify milliseconds per
image, and the false-positive rate on clean images against many random keys
(Clopper–Pearson 95% interval). Nothing here is tuned: it reports what it
measures. ``--json PATH`` also writes the figures (used for the model card).

Usage: ``python scripts/benchmark_pgd_signer.py [--bundle DIR] [--images N]``
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402

from neuralmark.components.attacks.registry import BENCHMARK_SUITE  # noqa: E402
from neuralmark.components.data.manifest import load_split  # noqa: E402
from neuralmark.components.data.sample import SampleDataConfig, build_sample_dataset  # noqa: E402
from neuralmark.components.evaluation import calibrate_fpr, run_suite, summarize  # noqa: E402
from neuralmark.components.methods import WatermarkKey, load_bundle  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "components/pretrained/pgd_signer")
    ap.add_argument("--images", type=int, default=15, help="held-out test images (256×256)")
    ap.add_argument("--fpr-keys", type=int, default=300000, help="random keys per clean image")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--tradeoff-images", type=int, default=6)
    ap.add_argument("--tradeoff", default="34,37,40,43",
                    help="PSNR budgets (dB) for the robustness/imperceptibility table; '' skips")
    ap.add_argument("--model-card", type=Path, default=None,
                    help="write MODEL_CARD.md with the measured figures here")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    method = load_bundle(args.bundle)
    manifest = build_sample_dataset(ROOT / "data" / "sample", SampleDataConfig())
    clean = load_split(manifest, "test", size=256, limit=args.images)
    n = clean.shape[0]
    key = WatermarkKey("benchmark-secret", 7)
    claimed = WatermarkKey("benchmark-secret", 7)

    t0 = time.perf_counter()
    marked = torch.cat([method.embed(clean[i:i + 1], key) for i in range(n)])
    embed_ms = (time.perf_counter() - t0) / n * 1000
    method.verify(marked[:2], claimed)  # warm-up
    t0 = time.perf_counter()
    method.verify(marked, claimed)
    verify_ms = (time.perf_counter() - t0) / n * 1000
    t0 = time.perf_counter()
    for i in range(n):
        method.verify(marked[i:i + 1], claimed)
    verify_ms_b1 = (time.perf_counter() - t0) / n * 1000

    rows = run_suite(method, clean, claimed, BENCHMARK_SUITE, watermarked=marked)
    summary = summarize(rows)
    unknown = summarize(run_suite(method, clean, WatermarkKey("benchmark-secret"),
                                  BENCHMARK_SUITE, watermarked=marked))
    # verify-time re-synchronisation search (Bonferroni-corrected), same marked images
    searcher = method.with_config(sync_search=True)
    searched = summarize(run_suite(searcher, clean, claimed, BENCHMARK_SUITE,
                                   watermarked=marked))
    fpr_search = _fpr_fast(searcher, clean, max(1, args.fpr_keys // 4), claimed=True)
    fpr = calibrate_fpr(method, clean, n_keys=args.fpr_keys)
    fpr_unknown = _fpr_fast(method, clean, args.fpr_keys // 100)

    print(f"pgd_signer bundle: {args.bundle}  ({n} held-out images, 256×256, CPU threads "
          f"{torch.get_num_threads()})")
    print(f"PSNR {summary['psnr']:.2f} dB   SSIM {summary['ssim']:.4f}")
    print(f"embed {embed_ms:.0f} ms/image   verify {verify_ms:.1f} ms/image (batch {n}), "
          f"{verify_ms_b1:.1f} ms/image (batch 1)")
    print(f"{'attack':<16}{'bit acc':>9}{'TPR claimed':>13}{'TPR unknown':>13}"
          f"{'acc search':>12}{'TPR search':>12}")
    labels = sorted({r['label'] for r in rows})
    for lab in labels:
        print(f"{lab:<16}{summary.get(f'bit_accuracy/{lab}', float('nan')):>9.3f}"
              f"{summary.get(f'detection_rate/{lab}', float('nan')):>13.3f}"
              f"{unknown.get(f'detection_rate/{lab}', float('nan')):>13.3f}"
              f"{searched.get(f'bit_accuracy/{lab}', float('nan')):>12.3f}"
              f"{searched.get(f'detection_rate/{lab}', float('nan')):>12.3f}")
    print(f"FPR with search (claimed): {fpr_search['fpr']:.2e} "
          f"[{fpr_search['ci_low']:.2e}, {fpr_search['ci_high']:.2e}] "
          f"over {fpr_search['trials']} trials")
    print(f"mean bit accuracy over attacks: {summary['bit_accuracy_mean_attacked']:.3f}")
    print(f"FPR (claimed message, alpha={method.detection_alpha:g}): {fpr['fpr']:.2e} "
          f"[{fpr['ci_low']:.2e}, {fpr['ci_high']:.2e}] over {fpr['trials']} image×key trials")
    print(f"FPR (unknown message): {fpr_unknown['fpr']:.2e} "
          f"[{fpr_unknown['ci_low']:.2e}, {fpr_unknown['ci_high']:.2e}] "
          f"over {fpr_unknown['trials']} trials")
    tradeoff = []
    for budget in [float(b) for b in args.tradeoff.split(",") if b.strip()]:
        tradeoff.append(budget_row(method, clean[: args.tradeoff_images], claimed, budget))
        t = tradeoff[-1]
        if len(tradeoff) == 1:
            print(f"{'budget':>8}{'PSNR':>8}{'clean acc':>11}{'mean acc attacked':>19}"
                  f"{'TPR attacked':>14}")
        print(f"{budget:>8.1f}{t['psnr']:>8.2f}{t['bit_accuracy/none']:>11.3f}"
              f"{t['bit_accuracy_mean_attacked']:>19.3f}{t['detection_rate_mean_attacked']:>14.3f}")
    if args.json:
        out = {"tradeoff": tradeoff, "images": n, "size": 256, "embed_ms": embed_ms,
               "verify_ms_batch": verify_ms,
               "verify_ms_b1": verify_ms_b1, "summary_claimed": summary,
               "summary_unknown_message": unknown, "fpr_claimed": fpr,
               "fpr_unknown_message": fpr_unknown}
        args.json.write_text(json.dumps(out, indent=2, default=float))
    if args.model_card:
        write_model_card(args.model_card, method, summary, unknown, fpr, fpr_unknown,
                         embed_ms, verify_ms, verify_ms_b1, n, tradeoff, searched, fpr_search)


def write_model_card(path: Path, method, summary: dict, unknown: dict, fpr: dict,
                     fpr_unknown: dict, embed_ms: float, verify_ms: float,
                     verify_ms_b1: float, n: int, tradeoff: list[dict], searched: dict,
                     fpr_search: dict) -> None:
    """MODEL_CARD.md: data, training, and the figures measured above."""
    c = method.config
    cal = getattr(method, "calibration", {})
    lines = [
        "# pgd_signer — shipped decoder",
        "",
        "NeuralHash-style signer (seed 000): a SqueezeNet-like decoder CNN maps an image to "
        f"{c.n_bits} bits; signing is PGD under EoT against it (see "
        "`components/methods/pgd_signer.py`).",
        "",
        "## Training",
        "- Data: the sample dataset (`neuralmark data sample`): crops of photographs bundled "
        "with scikit-image / scikit-learn + procedural images, train split only.",
        f"- Recipe: `scripts/train_shipped_pgd_signer.py`; EM rounds: "
        f"{cal.get('em_rounds', '?')}; wall time {cal.get('train_seconds', '?')} s on a "
        "2-core CPU. " + (f"Whitening: {cal['whitening']}." if "whitening" in cal else ""),
        "- Why no EM rounds: measured here, our EM-updated decoders signed worse than the "
        "whitened fresh decoder (0.85 vs 0.97 clean bit accuracy after 60 PGD steps at "
        "40 dB); on a CPU budget the M-step hedges (logits shrink) instead of learning "
        "robust features. The pipeline still trains by EM (the seed's method) and logs "
        "the per-round robustness curves.",
        "- The M-step's \"unsigned\" term: the literal reading (push clean logits to 0, "
        "`clean_loss=\"zero\"`) shrank the logits round after round until PGD could no "
        "longer sign (clean bit accuracy 0.93 → 0.67 over 40 rounds); the default "
        "`unit_variance` holds them at zero mean and unit spread.",
        f"- Decoder width {c.width}, working size {c.working_size}, input stride "
        f"{c.input_stride} (the decoder reads {c.working_size // c.input_stride}² px); "
        f"signing budget PSNR {c.psnr_target} dB (L2 ball) and L∞ {c.linf_255}/255, "
        f"{c.pgd_steps} PGD steps × {c.eot_samples} EoT samples.",
        "",
        f"## Measured on {n} held-out sample-test images at 256×256 "
        "(`scripts/benchmark_pgd_signer.py`)",
        f"- PSNR {summary['psnr']:.2f} dB, SSIM {summary['ssim']:.4f}",
        f"- embed {embed_ms:.0f} ms/image, verify {verify_ms:.1f} ms/image (batch), "
        f"{verify_ms_b1:.1f} ms/image (batch 1), CPU",
        f"- FPR claimed message at alpha={c.alpha:g}: {fpr['fpr']:.2e} "
        f"(95% CI {fpr['ci_low']:.2e}–{fpr['ci_high']:.2e}, {fpr['trials']} trials); "
        f"unknown message: {fpr_unknown['fpr']:.2e} "
        f"(95% CI {fpr_unknown['ci_low']:.2e}–{fpr_unknown['ci_high']:.2e})",
        "",
        f"- with `verify --search` (16 views, p × 16): FPR {fpr_search['fpr']:.2e} "
        f"(95% CI {fpr_search['ci_low']:.2e}–{fpr_search['ci_high']:.2e}, "
        f"{fpr_search['trials']} trials)",
        "",
        "| attack | bit accuracy | TPR (claimed) | TPR (unknown msg) | bit acc, search "
        "| TPR, search |",
        "|---|---|---|---|---|---|",
    ]
    labels = sorted(k.split("/", 1)[1] for k in summary if k.startswith("bit_accuracy/"))
    for lab in labels:
        lines.append(f"| {lab} | {summary[f'bit_accuracy/{lab}']:.3f} | "
                     f"{summary.get(f'detection_rate/{lab}', float('nan')):.3f} | "
                     f"{unknown.get(f'detection_rate/{lab}', float('nan')):.3f} | "
                     f"{searched.get(f'bit_accuracy/{lab}', float('nan')):.3f} | "
                     f"{searched.get(f'detection_rate/{lab}', float('nan')):.3f} |")
    lines += ["", f"Mean bit accuracy over attacks: {summary['bit_accuracy_mean_attacked']:.3f}.",
              "", "Robustness/imperceptibility trade-off (same decoder, other budgets via "
              "`embed --psnr`; first images of the held-out set):", "",
              "| budget dB | PSNR | clean bit acc | mean bit acc attacked | TPR attacked |",
              "|---|---|---|---|---|"]
    for t in tradeoff:
        lines.append(f"| {t['budget_psnr']:.0f} | {t['psnr']:.2f} | {t['bit_accuracy/none']:.3f} "
                     f"| {t['bit_accuracy_mean_attacked']:.3f} | "
                     f"{t['detection_rate_mean_attacked']:.3f} |")
    lines += [
              "", "Targets for this model (issue #3): PSNR ≥ 40 dB, mean bit accuracy ≥ 0.95, "
              "FPR ≤ 1e-6, verify ≤ 30 ms per 256² image. Numbers above are as measured, "
              "not tuned.", ""]
    path.write_text("\n".join(lines))


def budget_row(method, clean: torch.Tensor, key: WatermarkKey, psnr: float) -> dict:
    """Same decoder, another signing budget: the seed's robustness/imperceptibility trade-off."""
    other = method.with_config(psnr_target=psnr)
    return {"budget_psnr": psnr, **summarize(run_suite(other, clean, key, BENCHMARK_SUITE))}


def _fpr_fast(method, clean: torch.Tensor, n_keys: int, claimed: bool = False) -> dict:
    """FPR through the method's fast path (unknown-message test unless ``claimed``)."""
    from neuralmark.components.stats import clopper_pearson

    p = method.null_p_values(clean, n_keys, torch.Generator().manual_seed(1), claimed=claimed)
    det = int((p <= method.detection_alpha).sum())
    lo, hi = clopper_pearson(det, p.numel())
    return {"fpr": det / p.numel(), "ci_low": lo, "ci_high": hi, "trials": p.numel()}


if __name__ == "__main__":
    main()
