"""anti_forward invisibility on held-out photos: per-image PSNR and worst 32×32-block PSNR.

For each bundle (the shipped ``rs_aug`` one, optionally a ``baseline`` one) and each stamp
mode (``stamp_mode``: ``stretch``, the working-size residual stretched to the photo, the seed's
pipeline; ``tiles`` / ``conv``, the stamp made at the photo's resolution, tile by tile or by
the encoder over the whole photo at once; the scanner reads working-size tiles)
it stamps the held-out photo crops of the benchmark's sample set (test split, photo groups
only: no photo of it is in any training split) at 256² and at 512², and measures per image
PSNR, the worst 32×32-block PSNR (``components.metrics``), and the fast rule's verdicts on the
stamped and on the clean images with the bundle's own calibration. It writes a side-by-side
figure (original | stamped | amplified residual, both modes) and the card section.

Usage::

    python scripts/anti_forward_invisibility.py \\
        [--baseline /tmp/af_baseline/final] [--card components/pretrained/anti_forward]

``--card`` replaces the section between the markers in that folder's MODEL_CARD.md and
writes ``invisibility.jpg`` and ``invisibility.json`` there; without it, it prints the section.
``scripts/train_shipped_anti_forward.py --card`` calls :func:`section` too.
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

from neuralmark.components.data.manifest import (  # noqa: E402
    load_image,
    load_split,
    read_manifest,
)
from neuralmark.components.data.sample import SampleDataConfig, build_sample_dataset  # noqa: E402
from neuralmark.components.methods import load_bundle  # noqa: E402
from neuralmark.components.metrics import psnr, worst_block_psnr  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- BEGIN anti_forward invisibility -->", "<!-- END anti_forward invisibility -->"
MODES = ("stretch", "tiles", "conv")


def heldout_photos(data_root: Path, size: int, limit: int) -> tuple[torch.Tensor, list[str]]:
    """Test-split photo crops (no procedural images) of the benchmark's sample set at size²."""
    folder = "sample" if size == 256 else f"sample-{size}"  # 256: the benchmark's own folder
    root = Path(build_sample_dataset(data_root / folder,
                                     SampleDataConfig(size=size))).parent
    rows = [r for r in read_manifest(root / "manifest.csv")
            if r.split == "test" and not r.group.startswith("procedural")][:limit]
    return torch.stack([load_image(root / r.path, size) for r in rows]), [r.group for r in rows]


def measure(method, clean: torch.Tensor, block: int = 32, suite: bool = False) -> dict:
    """Per-image invisibility and the fast rule's verdicts for one bundle and one stamp mode.

    ``suite``: also the fast rule's detection and clean flags under every attack of the
    benchmark suite (``BENCHMARK_SUITE``), per label (``suite_detection`` / ``suite_fpr``).
    """
    fast = method.with_config(smoothing=False)
    with torch.no_grad():
        marked = fast.embed(clean, None, batch_size=8)
    hit = [v.detected for v in fast.verify(marked)]
    false = [v.detected for v in fast.verify(clean)]
    out = {"psnr": psnr(marked, clean).tolist(),
           "worst_block_psnr": worst_block_psnr(marked, clean, block).tolist(),
           "detected": hit, "clean_flagged": false, "marked": marked}
    if suite:
        from neuralmark.components.attacks.registry import BENCHMARK_SUITE
        from neuralmark.components.evaluation import run_suite, summarize
        from neuralmark.components.methods import WatermarkKey

        summary = summarize(run_suite(fast, clean, WatermarkKey("neuralmark-eval"),
                                      BENCHMARK_SUITE, watermarked=marked, batch_size=8))
        out["suite_detection"] = {k.split("/", 1)[1]: v for k, v in summary.items()
                                  if k.startswith("detection_rate/")}
        out["suite_fpr"] = {k.split("/", 1)[1]: v for k, v in summary.items()
                            if k.startswith("fpr/")}
    return out


def calibration_text(method) -> str:
    """Which views a bundle was calibrated on, its threshold and level (the table's column)."""
    cal = method.calibration
    view = "working-size views" if method.config.stamp_mode == "stretch" else "tile grids"
    thr = cal.get("threshold_statistic")
    return (f"{view}, {cal.get('n_scores', '?')} scores, thr "
            f"{'–' if thr is None else f'{thr:.2f}'} @ {method.config.fpr:g}")


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def chain_fpr(method, clean: torch.Tensor, views: int, seed: int = 5) -> tuple[int, int]:
    """(flagged, trials) of the fast rule on ``clean`` and ``views`` full-strength chain
    draws of each (the training chain, as the card's FPR trials)."""
    from neuralmark.components.attacks.stochastic import StochasticAugmentation

    fast = method.with_config(smoothing=False)
    chain = StochasticAugmentation(method.config.aug, 1.0)
    g = torch.Generator().manual_seed(seed)
    flagged = sum(v.detected for v in fast.verify(clean))
    with torch.no_grad():
        for _ in range(views):
            flagged += sum(v.detected for v in fast.verify(chain(clean, g)))
    return flagged, clean.shape[0] * (views + 1)


def figure(clean: torch.Tensor, marked: dict[str, torch.Tensor], path: Path,
           gain: float = 5.0) -> None:
    """original | stamped | 0.5 + gain·residual, one row per stamp mode, one image."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.2, 2.5 * len(marked)))
    axes = fig.subplots(len(marked), 3, squeeze=False)
    for row, (mode, m) in enumerate(marked.items()):
        r = (0.5 + gain * (m - clean)).clamp(0, 1)
        for col, (img, title) in enumerate(((clean, "original"), (m, f"stamped ({mode})"),
                                            (r, f"residual ×{gain:g} ({mode})"))):
            ax = axes[row][col]
            ax.imshow(img.permute(1, 2, 0).numpy())
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80, pil_kwargs={"quality": 85})  # JPEG: a small card figure


def fpr_images(data_root: Path) -> torch.Tensor:
    """The shipped card's 72 test images (photos + procedural) of the larger sample set."""
    config = SampleDataConfig(size=256, crops_per_photo=24, n_procedural=160)
    return load_split(build_sample_dataset(data_root / "sample-calibration", config), "test",
                      size=256)


def section(bundles: dict[str, Path], data_root: Path, limit: int, out: Path | None,
            fpr_views: int = 10, calibrated: dict[tuple[str, str], Path] | None = None,
            extra: dict[str, Path] | None = None, carried: dict[str, dict] | None = None,
            suite: bool = False) -> list[str]:
    """Measure every bundle × mode × size; the card lines (figure/json into ``out``).

    Args:
        bundles: name → bundle, measured in every stamp mode.
        calibrated: (name, mode) → the same weights calibrated for that mode
            (``train_shipped_anti_forward.py --recalibrate --set stamp_mode=MODE``), used
            for that mode's rows instead of ``bundles[name]``.
        extra: name → bundle measured in its own stamp mode only (e.g. a scanner trained
            on tile grids).
        carried: rows of an earlier run (``invisibility.json`` records, keyed
            ``name/mode/size``, and ``chain_fpr/name/mode``) shown beside the measured
            ones and marked as such (a bundle this run does not have).
        suite: also measure the fast rule over the benchmark suite (slow).
    """
    results, lines, names, fprs, cals = {}, [], {}, {}, {}
    photos = {size: heldout_photos(data_root, size, limit) for size in (256, 512)}
    fpr_clean = fpr_images(data_root) if fpr_views else None
    start = time.time()
    runs = [(name, mode, (calibrated or {}).get((name, mode), path))
            for name, path in bundles.items() for mode in MODES]
    runs += [(name, load_bundle(path).config.stamp_mode, path)
             for name, path in (extra or {}).items()]
    for name, mode, path in runs:
        m = load_bundle(path).with_config(stamp_mode=mode)
        cals[(name, mode)] = calibration_text(load_bundle(path))
        if fpr_clean is not None:
            fprs[(name, mode)] = chain_fpr(m, fpr_clean, fpr_views)
            print(name, mode, "chain FPR", fprs[(name, mode)], flush=True)
        for size, (clean, groups) in photos.items():
            r = measure(m, clean, suite=suite)
            names[size] = groups
            results[(name, mode, size)] = r
            print(name, mode, size, f"psnr {sum(r['psnr']) / len(r['psnr']):.2f}",
                  f"worst block {min(r['worst_block_psnr']):.2f}",
                  f"detected {sum(r['detected'])}/{len(r['detected'])}",
                  f"clean flagged {sum(r['clean_flagged'])}",
                  f"suite {r.get('suite_detection')}", flush=True)
    for key, record in (carried or {}).items():
        if key.startswith("chain_fpr/"):
            fprs[tuple(key.split("/")[1:3])] = tuple(record)
            continue
        name, mode, size = key.split("/")
        results[(name, mode, int(size))] = dict(record)
        cals[(name, mode)] = "earlier run (carried over, not re-measured)"
    if out is not None and "rs_aug" in bundles:
        clean = photos[512][0]
        worst = min(range(clean.shape[0]),
                    key=lambda i: results[("rs_aug", "stretch", 512)]["worst_block_psnr"][i])
        figure(clean[worst], {f"{name} {mode}": results[(name, mode, 512)]["marked"][worst]
                              for name, mode, _ in runs}, out / "invisibility.jpg")
        (out / "invisibility.json").write_text(json.dumps(
            {f"{k[0]}/{k[1]}/{k[2]}": {f: v for f, v in r.items() if f != "marked"}
             for k, r in results.items()} | {"photos": {str(s): names[s] for s in names}}
            | {f"chain_fpr/{k[0]}/{k[1]}": list(v) for k, v in fprs.items()}
            | {f"calibration/{k[0]}/{k[1]}": v for k, v in cals.items()},
            indent=1))
    n = {size: photos[size][0].shape[0] for size in photos}
    lines += [
        BEGIN, "## Invisibility on held-out photos (`scripts/anti_forward_invisibility.py`)", "",
        f"Held-out photo crops of the benchmark's sample set (`SampleDataConfig(size=S)`, test "
        f"split, photo groups only: {n[256]} at 256², {n[512]} at 512²; the 512² set crops "
        "the same photos, some crops upscaled). Per image: PSNR and the worst 32×32-block "
        "PSNR (`components.metrics.worst_block_psnr`); detection and clean flags by the fast "
        "rule with the calibration named in the row (working-size views: the bundle's own; "
        "tile grids: the same weights re-calibrated on the 92 val images read as 256² tile "
        "grids, `--recalibrate --set stamp_mode=tiles`). "
        "`stretch`: the 128² residual stretched to the photo (the bundle's default); "
        "`tiles` / `conv` (`stamp_mode`): the stamp made at the photo's resolution, on each "
        "128² tile with the bundle's `tile_margin` px of the photo around it, blended across "
        "the borders / by the encoder over the whole photo at once; the scanner averages "
        "its logits over the 128² tiles (`scripts/anti_forward_tile_seams.py` compares tile "
        "margins, with a tiles calibration). "
        f"{time.time() - start:.0f} s on the shared 2-core CPU.", "",
        "| bundle | stamp | size | calibration | PSNR mean (min) dB | worst 32² block: mean "
        "(min) dB | stamped detected | clean flagged | suite: mean detected (clean flagged) |",
        "|---|---|---|---|---|---|---|---|---|"]
    for (name, mode, size), r in results.items():
        p, w = r["psnr"], r["worst_block_psnr"]
        det, fpr = r.get("suite_detection"), r.get("suite_fpr")
        attacked = [k for k in (det or {}) if k != "none"]
        suite_cell = (f"{_mean(det[k] for k in attacked):.3f} "
                      f"({round(sum(fpr.values()) * len(p))}/{len(p) * len(fpr)})"
                      if det else "–")
        lines.append(f"| {name} | {mode} | {size}² | {cals[(name, mode)]} | "
                     f"{sum(p) / len(p):.2f} ({min(p):.2f}) | "
                     f"{sum(w) / len(w):.2f} ({min(w):.2f}) | {sum(r['detected'])}/{len(p)} | "
                     f"{sum(r['clean_flagged'])}/{len(p)} | {suite_cell} |")
    if suite:
        lines += ["", "Suite: the fast rule on the same photos under every attack of the "
                  "benchmark suite (`BENCHMARK_SUITE`: "
                  f"{', '.join(k for k in next(iter(results.values()))['suite_detection'])}"
                  "); mean detection over the attacked labels, clean flags over all labels."]
    if fprs and fpr_clean is not None:
        lines += ["", f"Clean images flagged by the fast rule (the card's {fpr_clean.shape[0]} "
                  f"test images at 256², each as is and through {fpr_views} draws of the "
                  "full-strength training chain): " + "; ".join(
                      f"{name} {mode} {fp}/{trials}" for (name, mode), (fp, trials)
                      in fprs.items()) + "."]
    lines += ["", "Per image (PSNR / worst block, dB):", "",
              "| bundle | stamp | size | " + " | ".join(f"img {i}" for i in range(max(n.values())))
              + " |", "|---|---|---|" + "---|" * max(n.values())]
    for (name, mode, size), r in results.items():
        cells = [f"{p:.1f} / {w:.1f}" for p, w in zip(r["psnr"], r["worst_block_psnr"],
                                                        strict=True)]
        cells += [""] * (max(n.values()) - len(cells))
        lines.append(f"| {name} | {mode} | {size}² | " + " | ".join(cells) + " |")
    if out is not None and "rs_aug" in bundles:
        lines += ["", "![original, stamped, residual ×5, one row per measured bundle and "
                  "stamp mode (" + ", ".join(f"{n} {m}" for n, m, _ in runs) + "); the 512² "
                  "photo whose worst block is lowest, stretched](invisibility.jpg)"]
    lines += [END]
    return lines


def replace_section(card: Path, lines: list[str], begin: str = BEGIN, end: str = END) -> None:
    """Put ``lines`` (which start with ``begin`` and end with ``end``) between those markers
    of ``card`` (appended when it has none)."""
    if lines[0] != begin or lines[-1] != end:
        raise ValueError("the section must start and end with the markers it replaces")
    text = card.read_text()
    block = "\n".join(lines)
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    card.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "components/pretrained/anti_forward")
    ap.add_argument("--baseline", type=Path, default=None, help="a baseline-variant bundle")
    ap.add_argument("--calibrated", action="append", default=[], metavar="MODE=PATH",
                    help="the --bundle's weights calibrated for stamp_mode MODE (its rows use "
                         "it), e.g. tiles=outputs/af_ship_tiles/final")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=PATH",
                    help="another bundle, measured in its own stamp_mode only")
    ap.add_argument("--carry", action="append", default=[], metavar="NAME/MODE",
                    help="keep these rows of the card's invisibility.json (a bundle this run "
                         "does not have), marked as carried over, e.g. baseline/stretch")
    ap.add_argument("--suite", action="store_true",
                    help="also the fast rule over the benchmark suite per row (slow)")
    ap.add_argument("--data-root", type=Path, default=ROOT / "data")
    ap.add_argument("--limit", type=int, default=12, help="photos per size")
    ap.add_argument("--card", type=Path, default=None, help="card folder to write into")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fpr-views", type=int, default=10,
                    help="chain draws per clean image for the FPR line (0: skip it)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bundles = {"rs_aug": args.bundle} | ({"baseline": args.baseline} if args.baseline else {})
    calibrated = {("rs_aug", mode): Path(path) for mode, _, path in
                  (t.partition("=") for t in args.calibrated)}
    extra = {name: Path(path) for name, _, path in (t.partition("=") for t in args.extra)}
    carried = {}
    if args.carry:
        if args.card is None:
            raise SystemExit("--carry needs --card (rows come from its invisibility.json)")
        previous = json.loads((args.card / "invisibility.json").read_text())
        for prefix in args.carry:
            found = {k: v for k, v in previous.items()
                     if k.startswith(prefix + "/") or k == f"chain_fpr/{prefix}"}
            if not found:
                raise SystemExit(f"--carry {prefix}: no such rows in the card's "
                                 "invisibility.json")
            carried |= found
    lines = section(bundles, args.data_root, args.limit, args.card, args.fpr_views,
                    calibrated, extra, carried, args.suite)
    if args.card:
        replace_section(args.card / "MODEL_CARD.md", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
