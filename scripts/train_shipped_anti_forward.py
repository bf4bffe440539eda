"""Train the anti_forward (DeepRAFT ``rs_aug``) model shipped in ``components/pretrained``.

Recipe: the ``rs_aug`` variant (augmentation chain + Gaussian noise σ = 0.5,
the stamp constrained to a high-passed, evenly spread, texture-masked shape)
on the larger sample set's train split (424 images) at working size 128,
single thread, bounded in wall time (``--minutes``); calibrated on the val
split at the end of ``fit``, again by ``--recalibrate`` (92 images, with the
shipped number of noise draws). ``--card`` then measures the bundle on the
held-out test split (256×256) and writes ``MODEL_CARD.md``, with the invisibility
section of ``scripts/anti_forward_invisibility.py`` (per-image PSNR and worst 32×32-block
PSNR at 256² and 512², the stamp stretched and tiled, and the side-by-side figure).

Usage::

    python scripts/train_shipped_anti_forward.py --out outputs/anti_forward_ckpt
    python scripts/train_shipped_anti_forward.py --recalibrate --calibration-scores 4000 \
        --set score_noise_samples=4 --set fpr=0.0005 --out outputs/anti_forward_ckpt
    # the scanner alone, fine-tuned on whole 256² tile grids as deployed (stamp_mode tiles)
    python scripts/train_shipped_anti_forward.py --out outputs/af_grid --init \
        components/pretrained/anti_forward --train-view grids --set stamp_mode=tiles \
        --set train_scanner_only=true ...
    python scripts/train_shipped_anti_forward.py --card --strengths 0.1,0.08,0.06 \
        --notes scripts/anti_forward_card_notes.md --out outputs/anti_forward_ckpt \
        [--baseline outputs/anti_forward_baseline/final]
    cp outputs/anti_forward_ckpt/final/* components/pretrained/anti_forward/
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402

from neuralmark.components.benchmark.cards import keep_section  # noqa: E402
from neuralmark.components.data.manifest import load_split  # noqa: E402
from neuralmark.components.data.sample import SampleDataConfig, build_sample_dataset  # noqa: E402
from neuralmark.components.methods import build, load_bundle  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: the shipped recipe (CPU-sized; configs/profiles/full.yaml has the paper's sizes)
RECIPE = {
    "variant": "rs_aug", "working_size": 128, "encoder_width": 16, "scanner_width": 24,
    "strength": 0.1, "steps": 4000, "batch_size": 16, "lr": 1e-3,
    "warmup_start": 300, "aug_start": 600, "aug_end": 2000, "sigma": 0.5, "sigma_warmup": 300,
    "image_loss_ramp": 1000, "mse_weight": 20.0, "ssim_weight": 1.0,
    "residual_highpass": 3.0, "residual_window": 15, "residual_masking": 0.5,
    "n0": 32, "n": 256, "certify_alpha": 1e-3, "score_noise_samples": 8,
    "fpr": 1e-3, "calibration_scores": 1100, "log_every": 20, "figure_every": 250,
}
#: the default sample set (``--train-data recipe``: the previous shipped model trained on it)
DATA = SampleDataConfig()
#: the larger sample set (same photo split, more crops and synthetic images): training
#: (``--train-data large``, the default) and calibration (``--recalibrate``: its val split
#: minus every image of DATA's train and test splits)
CALIBRATION_DATA = SampleDataConfig(size=256, crops_per_photo=24, n_procedural=160)


#: The card's line on the seed's APGD figure (af10 read the seed's evaluate_rs.py): not a
#: detection rate of a decision rule, so not comparable with the table above it.
SEED_APGD_NOTE = (
    "The seed reports 71% for its smoothed scanner under APGD at 8/255. That figure is a "
    "soft vote share, not a detection rate: the mean, over images and 1000 noise draws, of "
    "single noisy forwards voting \"stamped\" (no majority, no abstention, no confidence "
    "bound, no calibrated threshold), after a transfer attack on the noise-free detector "
    "(AutoAttack apgd-ce), on one batch. The columns above are decisions: the certified "
    "majority (smoothed) and the calibrated rule (`verify`). Session af10 below measures "
    "all three judges on the same attacked images.")


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = build_sample_dataset(*_train_data(args, args.train_data))
    recipe = {**RECIPE, **({"strength": args.strength} if args.strength else {}),
              **({"steps": args.steps} if args.steps else {}), **dict(args.set)}
    size = recipe["working_size"]  # --set working_size=256 loads the data at 256 too
    config = {**recipe, "max_train_seconds": args.minutes * 60}
    if args.init:  # fine-tune: the bundle's weights, this run's recipe
        method = load_bundle(args.init).with_config(**config)
        method.calibration = {}
    else:
        method = build("anti_forward", config)
    if args.train_view == "tiles":  # the photos' own pixels, as stamp_mode "tiles" reads them
        data = {split: method.tiles(load_split(manifest, split, size=data_size(args)))
                for split in ("train", "val")}
    elif args.train_view == "grids":  # whole photos, read as tile grids (stamp_mode tiles/conv)
        if method.config.stamp_mode == "stretch":
            raise SystemExit("--train-view grids needs --set stamp_mode=tiles (or conv)")
        data = {split: load_split(manifest, split, size=data_size(args))
                for split in ("train", "val")}
    else:
        data = {"train": load_split(manifest, "train", size=size),
                "val": load_split(manifest, "val", size=size)}
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
    method.calibration["train_data"] = args.train_data
    method.calibration["calibration_images"] = int(data["val"].shape[0])
    method.calibration["train_view"] = args.train_view
    if args.init:
        method.calibration["init"] = str(args.init)
    method.calibration["wall_seconds"] = round(time.time() - start, 1)
    method.calibration["threads"] = args.threads
    method.to_bundle(args.out / "final")
    (args.out / "final_metrics.json").write_text(json.dumps(final, indent=2))
    print(f"saved {args.out / 'final'} after {time.time() - start:.0f} s", flush=True)


def data_size(args: argparse.Namespace) -> int:
    """Side of the training set's images (the sample set's own, before any resize)."""
    return (DATA if args.train_data == "recipe" else CALIBRATION_DATA).size


def _train_data(args: argparse.Namespace, which: str) -> tuple[Path, SampleDataConfig]:
    """(root, config) of the sample set a bundle was trained on: ``recipe`` or ``large``."""
    return ((args.data_root, DATA) if which == "recipe"
            else (args.calibration_root, CALIBRATION_DATA))


def _setting(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def require_threshold(cal: dict, fpr: float, bundle: Path) -> None:
    """Refuse a calibration that cannot reach ``fpr`` (too few clean scores: no threshold)
    before it replaces ``bundle``'s, naming how many scores it needs (af9 found
    ``--recalibrate`` wrote such a bundle, then crashed printing its threshold)."""
    if cal.get("threshold_statistic") is None:
        raise SystemExit(f"recalibrate: {cal['n_scores']} clean scores cannot reach fpr = "
                         f"{fpr:g} (p is at least 1/(N+1)); pass --calibration-scores of at "
                         f"least {math.ceil(1 / fpr)} (or --set fpr=...). {bundle} is unchanged.")


def recalibrate(args: argparse.Namespace) -> None:
    """Re-calibrate ``<out>/final`` on many distinct held-out images (in place).

    Measured on the previous shipped scanner: calibrated on DATA's 22 val
    images it flagged 19 of 1512 chain views of clean test images at a claimed
    1e-3; on the 92 images here (2000 scores) 0 of 1512, at the price of
    detection (TPR on plain stamped test images 1.0 → 0.78). ``--set``
    changes config fields first (e.g. ``fpr``, ``score_noise_samples``).
    """
    from neuralmark.components.data.manifest import load_image, read_manifest

    torch.set_num_threads(args.threads)
    bundle = args.out / "final"
    method = load_bundle(bundle)
    old = dict(method.calibration)  # training facts to carry over
    method = method.with_config(calibration_scores=args.calibration_scores, **dict(args.set))
    recipe_rows = read_manifest(build_sample_dataset(args.data_root, DATA))
    seen = {r.sha256 for r in recipe_rows if r.split in ("train", "test")}
    root = Path(build_sample_dataset(args.calibration_root, CALIBRATION_DATA)).parent
    rows = [r for r in read_manifest(root / "manifest.csv")
            if r.split == "val" and r.sha256 not in seen]
    # stretch: the working-size view; tiles / conv: the images at their own size (their grid)
    size = (method.config.working_size if method.config.stamp_mode == "stretch"
            else CALIBRATION_DATA.size)
    clean = torch.stack([load_image(root / r.path, size) for r in rows])
    start = time.time()
    cal = method.calibrate(clean, torch.Generator().manual_seed(9),
                           source=f"val split of {CALIBRATION_DATA.model_dump_json()} minus "
                                  "the recipe's train/test images",
                           groups=[r.group for r in rows],
                           kinds=["procedural" if r.group.startswith("procedural") else "photo"
                                  for r in rows])
    for key in ("train_images", "train_data", "wall_seconds", "threads", "fit_seconds",
                "fit_steps", "train_view", "init"):
        if key in old:
            cal[key] = old[key]
    cal["calibration_images"] = len(rows)
    cal["calibration_groups"] = len({r.group for r in rows})
    cal["calibration_seconds"] = round(time.time() - start, 1)
    require_threshold(cal, method.config.fpr, bundle)  # before the bundle is touched
    method.to_bundle(bundle)
    print(f"recalibrated on {len(rows)} images ({cal['calibration_groups']} groups), "
          f"{cal['n_scores']} scores, threshold {cal['threshold_statistic']:.3f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "anti_forward_ckpt")
    ap.add_argument("--minutes", type=float, default=75.0, help="training wall-time bound")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--strength", type=float, default=None,
                    help="largest per-pixel change of the stamp (default: the recipe's)")
    ap.add_argument("--steps", type=int, default=None, help="planned steps (default: recipe)")
    ap.add_argument("--set", action="append", default=[], type=_setting, metavar="KEY=VALUE",
                    help="override a recipe field (JSON value), e.g. --set lowfreq_weight=10")
    ap.add_argument("--init", type=Path, default=None,
                    help="fine-tune this bundle's weights (e.g. components/pretrained/"
                         "anti_forward) instead of training from scratch")
    ap.add_argument("--train-view", choices=["squash", "tiles", "grids"], default="squash",
                    help="squash: each image resized to the working size (the seed's view); "
                         "tiles: the images at their own size cut into working-size tiles "
                         "(what stamp_mode 'tiles' stamps and scans); grids: the images at "
                         "their own size, stamped and scanned whole as tile grids (the "
                         "deployed scan path of stamp_mode tiles / conv)")
    ap.add_argument("--train-data", choices=["recipe", "large"], default="large",
                    help="recipe: DATA's train/val splits; large: CALIBRATION_DATA's (424 train, "
                         "96 val images; the same photo split, so DATA's test images stay out)")
    ap.add_argument("--data-root", type=Path, default=ROOT / "data" / "sample")
    ap.add_argument("--card", action="store_true", help="measure the bundle, write the card")
    ap.add_argument("--recalibrate", action="store_true",
                    help="re-calibrate the bundle on many distinct held-out images")
    ap.add_argument("--calibration-root", type=Path, default=ROOT / "data" / "sample-calibration")
    ap.add_argument("--calibration-scores", type=int, default=2000)
    ap.add_argument("--fpr-views", type=int, default=60, help="chain draws per clean image")
    ap.add_argument("--tpr-views", type=int, default=4, help="chain draws per stamped image")
    ap.add_argument("--smoothed-images", type=int, default=24,
                    help="test images measured with the (slow) smoothed rule")
    ap.add_argument("--smoothed-fpr-views", type=int, default=10,
                    help="chain draws per clean image for the smoothed rule")
    ap.add_argument("--adv-images", type=int, default=12, help="images per adversarial side")
    ap.add_argument("--adv-steps", type=int, default=20)
    ap.add_argument("--adv-queries", type=int, default=100)
    ap.add_argument("--adv-eot", type=int, default=4)
    ap.add_argument("--strengths", type=lambda t: [float(v) for v in t.split(",")],
                    default=[], help="comma-separated stamping strengths to sweep in the card")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="a baseline-variant bundle measured beside this one for invisibility")
    ap.add_argument("--invisibility-photos", type=int, default=12,
                    help="held-out photos per size (256², 512²) in the invisibility table")
    ap.add_argument("--notes", type=Path, default=None,
                    help="markdown appended to the card (known limitations, measured)")
    args = ap.parse_args()
    if args.recalibrate:
        recalibrate(args)
    elif args.card:
        write_card(args)
    else:
        train(args)


def _ms(fn, reps: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1000


def measure_rule(method, clean: torch.Tensor, marked: torch.Tensor, key, views: int,
                 tpr_views: int, seed: int) -> dict:
    """Detection and false positives of one decision rule on held-out images.

    Clean trials: every suite attack on every clean image plus ``views`` draws of
    the full-strength training chain per image; stamped: the suite, plus
    ``tpr_views`` chain draws per image.
    """
    from neuralmark.components.attacks.registry import BENCHMARK_SUITE
    from neuralmark.components.attacks.stochastic import StochasticAugmentation
    from neuralmark.components.evaluation import run_suite, summarize
    from neuralmark.components.stats import clopper_pearson

    n = clean.shape[0]
    rows = run_suite(method, clean, key, BENCHMARK_SUITE, watermarked=marked, batch_size=16,
                     seed=0)
    summary = summarize(rows)
    labels = [r["label"] for r in rows if r["metric"] == "detection_rate"]
    suite_fp = sum(round(summary[f"fpr/{lab}"] * n) for lab in labels)
    chain = StochasticAugmentation(method.config.aug, 1.0)
    g = torch.Generator().manual_seed(seed)
    chain_fp = chain_tp = 0
    radii = []
    with torch.no_grad():
        for _ in range(views):
            chain_fp += sum(v.detected for v in method.verify(chain(clean, g)))
        for _ in range(tpr_views):
            chain_tp += sum(v.detected for v in method.verify(chain(marked, g)))
        for v in method.verify(marked):
            if v.certified_radius is not None and v.detected:
                radii.append(v.certified_radius)
    fp, trials = suite_fp + chain_fp, n * len(labels) + views * n
    lo, hi = clopper_pearson(fp, trials)
    return {"summary": summary, "labels": labels, "n": n, "suite_fp": suite_fp,
            "suite_trials": n * len(labels), "chain_fp": chain_fp, "chain_trials": views * n,
            "fp": fp, "trials": trials, "fpr": fp / trials, "fpr_ci": [lo, hi],
            "chain_tp": chain_tp, "chain_tpr": chain_tp / max(1, tpr_views * n),
            "tpr_views": tpr_views, "radii": sorted(radii)}


def strength_sweep(fast, clean: torch.Tensor, key, strengths: list[float],
                   tpr_views: int, seed: int) -> list[dict]:
    """Invisibility against detection when only the stamping strength changes (the
    scanner and its calibration stay): the deploy-time knob, measured with the fast rule."""
    from neuralmark.components.evaluation import embed_all

    rows = []
    for strength in strengths:
        m = fast.with_config(strength=strength)
        with torch.no_grad():
            marked = embed_all(m, clean, key, 16)
        measured = measure_rule(m, clean, marked, key, 0, tpr_views, seed)  # no clean views
        summary = measured["summary"]
        rates = [v for k, v in summary.items() if k.startswith("detection_rate/")]
        rows.append({"strength": strength, "psnr": summary["psnr"], "ssim": summary["ssim"],
                     "none": summary["detection_rate/none"], "suite": sum(rates) / len(rates),
                     "chain": measured["chain_tpr"], **stamp_shape(clean, marked)})
        print("strength", rows[-1], flush=True)
    return rows


def stamp_shape(clean: torch.Tensor, marked: torch.Tensor) -> dict[str, float]:
    """Where the stamp's energy is (PSNR cannot tell a band from grain).

    ``lowfreq``: share of the residual's energy left after a Gaussian blur of σ = 3 px at
    256² (smooth bands and casts are near 1, fine grain near 0); ``top10``: share of the
    energy in the 10% of 16×16 blocks that hold the most (0.1 for an even stamp).
    """
    import kornia

    r = (marked - clean).double()
    energy = r.pow(2).sum(dim=(1, 2, 3))
    low = kornia.filters.gaussian_blur2d(r, (19, 19), (3.0, 3.0), border_type="reflect")
    blocks = torch.nn.functional.avg_pool2d(r.pow(2).sum(dim=1, keepdim=True), 16).flatten(1)
    top = blocks.sort(dim=1, descending=True).values[:, :max(1, blocks.shape[1] // 10)]
    return {"lowfreq": float((low.pow(2).sum(dim=(1, 2, 3)) / energy).mean()),
            "top10": float((top.sum(dim=1) / blocks.sum(dim=1)).mean())}


def _rule_lines(title: str, m: dict) -> list[str]:
    s = m["summary"]
    radius = (f"median {m['radii'][len(m['radii']) // 2]:.3f} over {len(m['radii'])} detected "
              "stamped images" if m["radii"] else "n/a (no certificate)")
    return [
        f"### {title}: {m['n']} held-out test images at 256×256",
        f"- FPR on clean images: {m['fp']}/{m['trials']} = {m['fpr']:.2e} (95% Clopper–Pearson "
        f"CI {m['fpr_ci'][0]:.2e}–{m['fpr_ci'][1]:.2e}); trials = every suite attack on every "
        f"clean test image ({m['suite_fp']}/{m['suite_trials']}) + draws of the training chain "
        f"({m['chain_fp']}/{m['chain_trials']}).",
        f"- TPR on stamped images through {m['tpr_views']} draws of the training chain each: "
        f"{m['chain_tp']}/{m['tpr_views'] * m['n']} = {m['chain_tpr']:.3f}",
        f"- Certified L2 radius (working size, images in [0, 1]): {radius}",
        f"- Mean detection rate over the suite's attacks: {s['detection_rate_mean_attacked']:.3f}",
        ""]


def write_card(args: argparse.Namespace) -> None:
    """Measure ``<out>/final`` on the held-out test split and write its MODEL_CARD.md."""
    from neuralmark.components.adversarial_evaluation import adversarial_rows
    from neuralmark.components.evaluation import embed_all, summarize
    from neuralmark.components.methods import WatermarkKey

    torch.set_num_threads(args.threads)
    bundle = args.out / "final"
    method = load_bundle(bundle)
    c = method.config
    fast = method.with_config(smoothing=False)
    state = method.calibration
    root, data_config = _train_data(args, state.get("train_data", "recipe"))
    manifest = build_sample_dataset(root, data_config)
    clean = load_split(manifest, "test", size=256)                      # n 3 256 256
    n = clean.shape[0]
    key = WatermarkKey("neuralmark-eval")
    with torch.no_grad():
        embed_ms = _ms(lambda: embed_all(method, clean, key, 16)) / n
        marked = embed_all(method, clean, key, 16)
        scan_ms = _ms(lambda: fast.verify(clean)) / n
        k = min(n, args.smoothed_images)
        verify_marked_ms = _ms(lambda: method.verify(marked[:k])) / k
        verify_clean_ms = _ms(lambda: method.verify(clean[:k])) / k
    shape = stamp_shape(clean, marked)
    print(f"stamp {embed_ms:.1f} ms, scan {scan_ms:.1f} ms, smoothed verify "
          f"{verify_marked_ms:.0f}/{verify_clean_ms:.0f} ms", flush=True)
    fast_m = measure_rule(fast, clean, marked, key, args.fpr_views, args.tpr_views, 123)
    print("fast rule measured", flush=True)
    smooth_m = measure_rule(method, clean[:k], marked[:k], key, args.smoothed_fpr_views,
                            args.tpr_views, 321)
    print("smoothed rule measured", flush=True)
    a = min(n, args.adv_images)
    adv = summarize(adversarial_rows(
        method, marked[:a], clean[:a], steps=args.adv_steps, queries=args.adv_queries,
        eot_iter=args.adv_eot, smoothing_n=c.n, also_verify=True, batch_size=a, seed=0))
    print("adversarial measured", flush=True)
    final = json.loads((args.out / "final_metrics.json").read_text())
    fs, ss = fast_m["summary"], smooth_m["summary"]
    lines = [
        "# anti_forward — shipped DeepRAFT scanner (rs_aug)",
        "",
        "Anti-forwarding stamp (seed 004, DeepRAFT): an encoder adds an invisible stamp, a "
        "scanner CNN detects it; trained jointly under the stochastic augmentation chain and "
        "Gaussian noise σ = 0.5, certified by randomized smoothing at scan time "
        "(see `components/methods/anti_forward/`). Written by "
        "`scripts/train_shipped_anti_forward.py --card`; every number below was measured by it.",
        "",
        "## Training",
        f"- Data: a sample dataset (`{data_config.model_dump_json()}`): crops of "
        f"photographs bundled with scikit-image / scikit-learn + procedural images; "
        f"{state.get('train_images')} train images at {c.working_size}², measured on the {n} "
        f"test images (splits by photo: no photo is in two splits). Calibrated on "
        f"{state.get('calibration_images')} images ({state.get('calibration_groups', '?')} "
        f"photos / synthetic images; source: {state.get('source')}).",
        f"- Recipe: `scripts/train_shipped_anti_forward.py` (variant `{c.variant}`); "
        f"{state.get('fit_steps')} steps of batch {c.batch_size} (of {c.steps} planned: the run "
        f"is bounded in wall time), {state.get('wall_seconds')} s wall on a shared 2-core CPU, "
        f"{state.get('threads')} torch thread. Augmentation curriculum from step {c.aug_start} "
        f"to {c.aug_end} (reached strength {final.get('aug_strength', float('nan')):.2f}); "
        f"σ warm-up {c.sigma_warmup} steps and image-loss ramp {c.image_loss_ramp} steps, both "
        f"after {c.warmup_start} steps of detection alone.",
        f"- Stamp shape: high-pass σ {c.residual_highpass:g} px, even energy over "
        f"{c.residual_window} px windows, texture masking {c.residual_masking:g} (0 = off; "
        "see the method's docstring).",
        f"- Image loss: {c.mse_weight:g}·MSE (texture masking {c.texture_masking:g}) + "
        f"{c.ssim_weight:g}·(1 − SSIM) + {c.lowfreq_weight:g}·low-frequency residual energy "
        f"(blur σ {c.lowfreq_sigma:g} px): non-learned, no VGG/LPIPS weights here.",
        f"- Nets: encoder width {c.encoder_width}, scanner width {c.scanner_width}, working "
        f"size {c.working_size}, strength {c.strength}; weights "
        f"{(bundle / 'weights.safetensors').stat().st_size / 2**20:.1f} MiB.",
        f"- Calibration: {state.get('n_scores')} clean scores (val images + views through the "
        f"full-strength chain). Fast rule: scan statistic threshold "
        f"{state.get('threshold_statistic'):.3f} at fpr = {c.fpr:g} (`--recalibrate`). "
        f"Smoothed rule: that test, then Cohen certification (n0 = {c.n0}, n = {c.n}, "
        f"certify_alpha = {c.certify_alpha:g}) of the images that pass it.",
        f"- At the end of training (val split, {c.working_size}²): PSNR "
        f"{final['val_psnr']:.2f} dB, TPR plain {final['val_tpr_plain']:.3f}, TPR through the "
        f"chain {final['val_tpr_augmented']:.3f}.",
        "",
        "## Measured on held-out sample-test images (`--card`)",
        f"- PSNR {fs['psnr']:.2f} dB, SSIM {fs['ssim']:.4f} ({n} images at 256×256)",
        f"- Where the stamp is: {shape['lowfreq']:.0%} of its energy survives a σ = 3 px blur "
        f"(smooth bands and casts: near 100%), and the 10% of 16×16 blocks holding the most "
        f"hold {shape['top10']:.0%} of it (10% for an even stamp).",
        f"- Speed (CPU, {args.threads} thread, shared machine): stamp {embed_ms:.1f} ms/image, "
        f"scan (fast rule) {scan_ms:.1f} ms/image; smoothed verify {verify_marked_ms:.0f} "
        f"ms/image on stamped and {verify_clean_ms:.0f} ms/image on clean images "
        f"(certification, {c.n0} + {c.n} scanner passes, runs only on images that pass the "
        f"statistic test). "
        f"`scripts/benchmark_anti_forward.py` has batch and size figures.",
        "",
    ]
    lines += _rule_lines("Fast rule (`neuralmark scan --no-smoothing`: the service hot path)",
                         fast_m)
    lines += _rule_lines("Smoothed rule (the bundle's default: certified)", smooth_m)
    lines += [f"| attack | detection, fast ({n} img) | FPR, fast | detection, smoothed ({k} img) "
              "| FPR, smoothed |", "|---|---|---|---|---|"]
    for lab in fast_m["labels"]:
        lines.append(f"| {lab} | {fs[f'detection_rate/{lab}']:.3f} | {fs[f'fpr/{lab}']:.3f} | "
                     f"{ss[f'detection_rate/{lab}']:.3f} | {ss[f'fpr/{lab}']:.3f} |")
    if args.strengths:
        sweep = strength_sweep(fast, clean, key, args.strengths, args.tpr_views, 77)
        lines += ["", "### Stamping strength (the deploy knob; same scanner and calibration, "
                  f"fast rule, {n} test images)", "",
                  "| strength | PSNR (dB) | SSIM | energy after σ 3 px blur | detected, "
                  "unattacked | mean over the suite | through the chain |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['strength']:g}{' (bundle)' if r['strength'] == c.strength else ''} "
                  f"| {r['psnr']:.2f} | {r['ssim']:.4f} | {r['lowfreq']:.0%} | {r['none']:.3f} "
                  f"| {r['suite']:.3f} | {r['chain']:.3f} |" for r in sweep]
    lines += ["", "Seed (400², 200 000 steps, GPU): PSNR 32.84 dB for the robust scanner, "
              "detection 100% / 99.98%. Numbers above are as measured on this CPU budget.", ""]

    def pct(metric: str) -> str:
        v = adv.get(metric)
        return "–" if v is None else f"{round(v * a)}/{a}"

    lines += [
        "## Adversarial robustness",
        f"{a} stamped + {a} clean test images, ε = 8/255 L∞; APGD {args.adv_steps} steps on "
        f"the plain scanner, Square {args.adv_queries} queries on the smoothed score, "
        f"APGD-EoT {args.adv_steps} steps × {args.adv_eot} noise draws (the adaptive attack). "
        f"Judged by the smoothed classifier (Cohen, n = {c.n}) and by `verify` (the bundle's "
        "deployed rule).",
        "",
        "| attack | stamped still detected (smoothed / verify) | clean forged to "
        "\"stamped\" (smoothed / verify) |", "|---|---|---|",
        f"| none | {pct('detection_rate_unattacked/none')} / "
        f"{pct('detection_rate_unattacked_verify/none')} | "
        f"{pct('false_positive_rate_unattacked/none')} / "
        f"{pct('false_positive_rate_unattacked_verify/none')} |",
    ]
    for lab, name in (("apgd_linf_8", "APGD (white box, plain scanner)"),
                      ("square_linf_8", "Square (black box)"),
                      ("apgd_eot_linf_8", "APGD-EoT (adaptive, through the noise)")):
        lines.append(
            f"| {name} | {pct(f'detection_rate_adversarial/{lab}')} / "
            f"{pct(f'detection_rate_adversarial_verify/{lab}')} | "
            f"{pct(f'false_positive_rate_adversarial/{lab}')} / "
            f"{pct(f'false_positive_rate_adversarial_verify/{lab}')} |")
    lines += ["", SEED_APGD_NOTE, ""]
    # per-image PSNR / worst 32² block at 256² and 512², stretched and tiled stamps
    from anti_forward_invisibility import section

    lines += section({"rs_aug": bundle} | ({"baseline": args.baseline} if args.baseline
                                           else {}),
                     args.data_root.parent, args.invisibility_photos, bundle) + [""]
    if args.notes and args.notes.exists():
        lines += [args.notes.read_text().rstrip(), ""]
    card = bundle / "MODEL_CARD.md"
    previous = card.read_text() if card.is_file() else ""
    # the sections other scripts generate (the benchmark's, APGD by mode, calibration by
    # kind) are not this script's: carry them over
    card.write_text(keep_section(previous, "\n".join(lines)))
    (args.out / "card_summary.json").write_text(json.dumps(
        {"fast": {k2: v for k2, v in fast_m.items() if k2 != "summary"} | {"summary": fs},
         "smoothed": {k2: v for k2, v in smooth_m.items() if k2 != "summary"} | {"summary": ss},
         "adversarial": adv, "stamp_ms": embed_ms, "scan_ms": scan_ms,
         "verify_smoothed_ms": [verify_marked_ms, verify_clean_ms]}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
