"""Train the anti_forward (DeepRAFT ``rs_aug``) model shipped in ``components/pretrained``.

Recipe: the ``rs_aug`` variant (augmentation chain + Gaussian noise σ = 0.5)
on the sample dataset's train split at working size 128, single thread,
bounded in wall time (``--minutes``); calibrated on the val split at the end
of ``fit``. ``--card`` then measures the bundle on the held-out test split
(256×256) and writes ``MODEL_CARD.md``.

Usage::

    python scripts/train_shipped_anti_forward.py --out outputs/anti_forward_ckpt
    python scripts/train_shipped_anti_forward.py --card --out outputs/anti_forward_ckpt
    cp outputs/anti_forward_ckpt/final/* components/pretrained/anti_forward/
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

from components.data.manifest import load_split  # noqa: E402
from components.data.sample import SampleDataConfig, build_sample_dataset  # noqa: E402
from components.methods import build, load_bundle  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: the shipped recipe (CPU-sized; configs/profiles/full.yaml has the paper's sizes)
RECIPE = {
    "variant": "rs_aug", "working_size": 128, "encoder_width": 16, "scanner_width": 24,
    "strength": 0.1, "steps": 2000, "batch_size": 16, "lr": 1e-3,
    "aug_start": 200, "aug_end": 1200, "sigma": 0.5, "sigma_warmup": 200,
    "image_loss_ramp": 800, "mse_weight": 20.0, "ssim_weight": 1.0,
    "n0": 32, "n": 256, "alpha": 1e-3, "score_noise_samples": 8,
    "fpr": 1e-3, "calibration_scores": 1100, "log_every": 20, "figure_every": 250,
}


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = build_sample_dataset(args.data_root, SampleDataConfig())
    size = RECIPE["working_size"]
    data = {"train": load_split(manifest, "train", size=size),
            "val": load_split(manifest, "val", size=size)}
    recipe = {**RECIPE, **({"strength": args.strength} if args.strength else {})}
    method = build("anti_forward", {**recipe, "max_train_seconds": args.minutes * 60})
    log = args.out / "train_log.jsonl"
    log.unlink(missing_ok=True)

    class Log:
        def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
            with log.open("a") as fh:
                fh.write(json.dumps({"step": step, **metrics}) + "\n")
            print(step, {k: round(v, 4) for k, v in metrics.items()}, flush=True)

        def on_figure(self, step: int, name: str, figure) -> None:
            figure.savefig(args.out / f"{name}_{step:05d}.png", dpi=80)
            import matplotlib.pyplot as plt

            plt.close(figure)

    start = time.time()
    final = method.fit(data, [Log()])
    method.calibration["train_images"] = int(data["train"].shape[0])
    method.calibration["calibration_images"] = int(data["val"].shape[0])
    method.calibration["wall_seconds"] = round(time.time() - start, 1)
    method.calibration["threads"] = args.threads
    method.to_bundle(args.out / "final")
    (args.out / "final_metrics.json").write_text(json.dumps(final, indent=2))
    print(f"saved {args.out / 'final'} after {time.time() - start:.0f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "anti_forward_ckpt")
    ap.add_argument("--minutes", type=float, default=40.0, help="training wall-time bound")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--strength", type=float, default=None,
                    help="largest per-pixel change of the stamp (default: the recipe's)")
    ap.add_argument("--data-root", type=Path, default=ROOT / "data" / "sample")
    ap.add_argument("--card", action="store_true", help="measure the bundle, write the card")
    ap.add_argument("--fpr-views", type=int, default=60, help="chain draws per clean image")
    ap.add_argument("--tpr-views", type=int, default=4, help="chain draws per stamped image")
    args = ap.parse_args()
    if args.card:
        write_card(args)
    else:
        train(args)


def _ms(fn, reps: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1000


def write_card(args: argparse.Namespace) -> None:
    """Measure ``<out>/final`` on the held-out test split and write its MODEL_CARD.md."""
    from components.attacks.registry import BENCHMARK_SUITE
    from components.attacks.stochastic import StochasticAugmentation
    from components.evaluation import embed_all, run_suite, summarize
    from components.methods import WatermarkKey
    from components.stats import clopper_pearson

    torch.set_num_threads(args.threads)
    bundle = args.out / "final"
    method = load_bundle(bundle)
    c = method.config
    manifest = build_sample_dataset(args.data_root, SampleDataConfig())
    clean = load_split(manifest, "test", size=256)                      # n 3 256 256
    n = clean.shape[0]
    key = WatermarkKey("neuralmark-eval")
    with torch.no_grad():
        embed_ms = _ms(lambda: embed_all(method, clean, key, 16)) / n
        marked = embed_all(method, clean, key, 16)
        scan_ms = _ms(lambda: method.scan_statistic(clean)) / n
        verify_marked_ms = _ms(lambda: method.verify(marked)) / n
        verify_clean_ms = _ms(lambda: method.verify(clean)) / n
    rows = run_suite(method, clean, key, BENCHMARK_SUITE, watermarked=marked, batch_size=16,
                     seed=0)
    summary = summarize(rows)
    labels = [r["label"] for r in rows if r["metric"] == "detection_rate"]
    # clean trials: every suite attack on every clean test image (from the suite rows)
    # plus `views` draws of the full-strength training chain per image
    fp = sum(round(summary[f"fpr/{lab}"] * n) for lab in labels)
    trials = n * len(labels)
    chain = StochasticAugmentation(c.aug, 1.0)
    g = torch.Generator().manual_seed(123)
    views = args.fpr_views
    chain_fp = chain_tp = 0
    radii = []
    with torch.no_grad():
        for _ in range(views):
            vc = method.verify(chain(clean, g))
            chain_fp += sum(v.detected for v in vc)
        for _ in range(args.tpr_views):
            vm = method.verify(chain(marked, g))
            chain_tp += sum(v.detected for v in vm)
        for v in method.verify(marked):
            if v.certified_radius is not None and v.detected:
                radii.append(v.certified_radius)
    fp_all, trials_all = fp + chain_fp, trials + views * n
    lo, hi = clopper_pearson(fp_all, trials_all)
    state = method.calibration
    final = json.loads((args.out / "final_metrics.json").read_text())
    lines = [
        "# anti_forward — shipped DeepRAFT scanner (rs_aug)",
        "",
        "Anti-forwarding stamp (seed 004, DeepRAFT): an encoder adds an invisible stamp, a "
        "scanner CNN detects it; trained jointly under the stochastic augmentation chain and "
        "Gaussian noise σ = 0.5, certified by randomized smoothing at scan time "
        "(see `components/methods/anti_forward.py`).",
        "",
        "## Training",
        f"- Data: the sample dataset (`neuralmark data sample`): crops of photographs bundled "
        f"with scikit-image / scikit-learn + procedural images; {state.get('train_images')} "
        f"train images at {c.working_size}², calibration on the {state.get('calibration_images')}"
        f" val images.",
        f"- Recipe: `scripts/train_shipped_anti_forward.py` (variant `{c.variant}`); "
        f"{state.get('fit_steps')} steps of batch {c.batch_size} (of {c.steps} planned: the run "
        f"is bounded in wall time), {state.get('wall_seconds')} s wall on a shared 2-core CPU, "
        f"{state.get('threads')} torch thread. Augmentation curriculum from step {c.aug_start} "
        f"to {c.aug_end} (reached strength {final.get('aug_strength', float('nan')):.2f}); "
        f"σ warm-up {c.sigma_warmup} steps; image-loss ramp {c.image_loss_ramp} steps.",
        f"- Nets: encoder width {c.encoder_width}, scanner width {c.scanner_width}, working "
        f"size {c.working_size}, strength {c.strength}; weights "
        f"{(bundle / 'weights.safetensors').stat().st_size / 2**20:.1f} MiB.",
        f"- Calibration: {state.get('n_scores')} clean scan statistics (val images + views "
        f"through the full-strength chain); detected iff empirical p ≤ fpr = {c.fpr:g} "
        f"(threshold statistic {state.get('threshold_statistic'):.3f}), then smoothed "
        f"certification with n0 = {c.n0}, n = {c.n}, alpha = {c.alpha:g}.",
        f"- At the end of training (val split, {c.working_size}²): PSNR "
        f"{final['val_psnr']:.2f} dB, TPR plain {final['val_tpr_plain']:.3f}, TPR through the "
        f"chain {final['val_tpr_augmented']:.3f}.",
        "",
        f"## Measured on {n} held-out sample-test images at 256×256 (`--card`)",
        f"- PSNR {summary['psnr']:.2f} dB, SSIM {summary['ssim']:.4f}",
        f"- FPR on clean images: {fp_all}/{trials_all} = {fp_all / trials_all:.2e} "
        f"(95% Clopper–Pearson CI {lo:.2e}–{hi:.2e}); trials = every suite attack on every "
        f"clean test image ({fp}/{trials}) + {views} draws of the training chain per image "
        f"({chain_fp}/{views * n}).",
        f"- TPR on stamped images through {args.tpr_views} draws of the training chain: "
        f"{chain_tp}/{args.tpr_views * n} = {chain_tp / (args.tpr_views * n):.3f}",
        f"- Certified L2 radius (at {c.working_size}², images in [0, 1]) of detected stamped "
        f"images: median "
        + (f"{sorted(radii)[len(radii) // 2]:.3f} over {len(radii)} images" if radii else
           "n/a (none detected)"),
        f"- Speed (CPU, {args.threads} thread, shared machine): stamp {embed_ms:.1f} ms/image, "
        f"scan statistic {scan_ms:.1f} ms/image, verify {verify_marked_ms:.1f} ms/image on "
        f"stamped images (with certification) and {verify_clean_ms:.1f} ms/image on clean ones.",
        "",
        "| attack | detection rate (stamped) | FPR (clean, same attack) |",
        "|---|---|---|",
    ]
    for lab in labels:
        lines.append(f"| {lab} | {summary[f'detection_rate/{lab}']:.3f} | "
                     f"{summary[f'fpr/{lab}']:.3f} |")
    lines += ["", f"Mean detection rate over attacks: "
              f"{summary['detection_rate_mean_attacked']:.3f}.", "",
              "Seed (400², 200 000 steps, GPU): PSNR 32.84 dB for the robust scanner, detection "
              "100% / 99.98%. Numbers above are as measured on this CPU budget, not tuned.", ""]
    (bundle / "MODEL_CARD.md").write_text("\n".join(lines))
    (args.out / "card_summary.json").write_text(json.dumps(
        {**summary, "fpr_clean": fp_all / trials_all, "fpr_ci": [lo, hi],
         "fpr_trials": trials_all, "chain_tpr": chain_tp / (args.tpr_views * n)}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
