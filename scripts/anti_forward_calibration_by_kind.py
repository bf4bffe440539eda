"""anti_forward: the clean-score null by image kind, on every distinct photo installed here.

The shipped calibrations were made on the sample set's val split: 92 images, of which 72 are
crops of only 3 photos and the rest procedural textures, and the tile-grid threshold is set
by a few of those textures. This script builds the null from every photograph that ships
inside the installed packages (read from disk, never downloaded), kept apart from the
synthetic images, and calibrates the shipped weights on it per kind
(``AntiForward.calibrate(..., groups=, kinds=)``):

* ``photo``: photos no training split holds: the sample set's val photos (camera, moon,
  rocket) and the installed photos it does not use (matplotlib's grace_hopper, PyWavelets'
  ascent and aero, scikit-image's clock_motion, cell, microaneurysms, text); ``--photo-crops``
  random crops of each (one group per photo);
* ``photo_train``: crops of the photos the scanner was trained on (a biased null, shown
  apart, never pooled into ``photo``);
* ``lfw_face`` / ``lfw_background``: scikit-image's LFW subset, 100 face crops and 100
  background crops of 25² px, upsampled (one group each; the backgrounds come from
  the same LFW photos as faces may, so the two are not independent of each other);
* ``graphic``: scikit-image's drawings (color wheel, horse, logo, phantom, chessboard);
* ``procedural``: the sample set's held-out procedural textures (val + test) and fresh
  ones drawn with another seed (none of them seen in training).

Every image is ``--size``² (default 256², the deployed calibration's) and goes through
``--views`` scores (itself and full-strength chain draws). It reports, for the stretched
scan path (the shipped bundle) and the tile-grid path (``stamp_mode`` tiles and conv read
images the same way, so they share a null), each kind's threshold at ``--fpr`` and the
groups above it counted once each (``stats.clustered_rate``: the interval is over distinct
groups, not scores), and the detection of the stamped held-out photo crops (the sample set's
test photos, coffee and retina, at 256² and 512²: in no null) at each threshold. Nothing is
written to the bundle: the shipped threshold is unchanged.

``--size 512 --kinds photo --tag " 512"`` builds a photo-only null at 512² in its own card
section (a tile grid of 16 tiles averages more than one of 4: its clean scores are not the
256² ones).

Usage::

    python scripts/anti_forward_calibration_by_kind.py --card components/pretrained/anti_forward
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
import zlib
from pathlib import Path

os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from anti_forward_invisibility import heldout_photos, replace_section  # noqa: E402
from PIL import Image  # noqa: E402

from neuralmark.components.data.manifest import load_image, read_manifest  # noqa: E402
from neuralmark.components.data.sample import (  # noqa: E402
    BUNDLED_PHOTOS,
    SampleDataConfig,
    build_sample_dataset,
    procedural_image,
    random_crops,
)
from neuralmark.components.methods import load_bundle  # noqa: E402
from neuralmark.components.methods.anti_forward.parts import (  # noqa: E402
    kind_calibration,
    threshold_at,
)

ROOT = Path(__file__).resolve().parents[1]
BEGIN = "<!-- BEGIN anti_forward calibration by kind{} -->"  # {}: --tag
END = "<!-- END anti_forward calibration by kind{} -->"
CALIBRATION_DATA = SampleDataConfig(size=256, crops_per_photo=24, n_procedural=160)
#: installed photos the sample set does not use: (group, package, path in the package)
EXTRA_PHOTOS = (
    ("photo:grace_hopper", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    ("photo:ascent", "pywt", "data/ascent.npz"),
    ("photo:aero", "pywt", "data/aero.npz"),
    ("photo:clock_motion", "skimage", "data/clock_motion.png"),
    ("photo:cell", "skimage", "data/cell.png"),
    ("photo:microaneurysms", "skimage", "data/microaneurysms.png"),
    ("photo:text", "skimage", "data/text.png"),
)
GRAPHICS = ("color.png", "horse.png", "logo.png", "phantom.png", "chessboard_RGB.png")


def package_file(package: str, rel: str) -> Path | None:
    """A file inside an installed package (``None`` when the package or file is absent)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    return path if path.is_file() else None


def open_rgb(path: Path) -> Image.Image:
    """An image file or a single-array ``.npz`` (``allow_pickle=False``) as RGB PIL."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            arr = data[data.files[0]]
        return Image.fromarray(arr.astype(np.uint8)).convert("RGB")
    with Image.open(path) as im:
        return im.convert("RGB")


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 → 3×H×W float in [0, 1]."""
    return torch.from_numpy(np.array(arr)).permute(2, 0, 1).float() / 255.0  # a copy


def crops_of(image: Image.Image, group: str, n: int, size: int) -> list[torch.Tensor]:
    """``n`` random square crops (≥ 0.35 of the short side, as the sample set) at size²."""
    rng = np.random.default_rng(zlib.crc32(group.encode()))
    return [to_tensor(c) for c in random_crops(image, n, size, 0.35, rng)]


def null_images(args: argparse.Namespace) -> tuple[torch.Tensor, list[str], list[str], dict]:
    """(N×3×S×S clean images, N groups, N kinds, inventory of what was found); S: --size."""
    size, wanted = args.size, set(args.kinds.split(",")) if args.kinds else None
    images: list[torch.Tensor] = []
    groups: list[str] = []
    kinds: list[str] = []
    inventory: dict[str, list[str]] = {"missing": [], "dropped_flat": []}

    def add(x: torch.Tensor, group: str, kind: str) -> None:
        if wanted is not None and kind not in wanted:
            return
        if float(x.max() - x.min()) < 1 / 255:  # unreadable: verify never flags it
            inventory["dropped_flat"].append(group)
            return
        images.append(x)
        groups.append(group)
        kinds.append(kind)

    root = Path(build_sample_dataset(args.calibration_root, CALIBRATION_DATA)).parent
    rows = read_manifest(root / "manifest.csv")
    for split, kind, n in (("val", "photo", args.photo_crops),
                           ("train", "photo_train", args.train_crops)):
        taken: dict[str, int] = {}
        for r in rows:
            if r.split == split and not r.group.startswith("procedural"):
                if taken.get(r.group, 0) < n:
                    taken[r.group] = taken.get(r.group, 0) + 1
                    add(load_image(root / r.path, size), r.group, kind)
    used = {p.group for p in BUNDLED_PHOTOS}
    for group, package, rel in EXTRA_PHOTOS:
        path = package_file(package, rel)
        if path is None or group in used:
            inventory["missing"].append(f"{package}/{rel}")
            continue
        for x in crops_of(open_rgb(path), group, args.photo_crops, size):
            add(x, group, "photo")
    lfw = package_file("skimage", "data/lfw_subset.npy")
    if lfw is None:
        inventory["missing"].append("skimage/data/lfw_subset.npy")
    else:
        faces = torch.from_numpy(np.load(lfw, allow_pickle=False)).float()  # 200 25 25
        big = F.interpolate(faces[:, None], size=(size, size), mode="bilinear",
                            align_corners=False).clamp(0, 1).expand(-1, 3, -1, -1)
        for i, x in enumerate(big):
            add(x.contiguous(), f"lfw:{i:03d}", "lfw_face" if i < 100 else "lfw_background")
    for name in GRAPHICS:
        path = package_file("skimage", f"data/{name}")
        if path is None:
            inventory["missing"].append(f"skimage/data/{name}")
            continue
        group = f"graphic:{Path(name).stem}"
        for x in crops_of(open_rgb(path), group, args.graphic_crops, size):
            add(x, group, "graphic")
    for r in rows:
        if r.split in ("val", "test") and r.group.startswith("procedural"):
            add(load_image(root / r.path, size), r.group, "procedural")
    for i in range(args.fresh_procedural if wanted is None or "procedural" in wanted else 0):
        add(to_tensor(procedural_image(args.procedural_seed, i, size)[1]),
            f"procedural-seed{args.procedural_seed}:{i:04d}", "procedural")
    for kind in sorted(set(kinds)):
        inventory[kind] = sorted({g for g, k in zip(groups, kinds, strict=True) if k == kind})
    return torch.stack(images), groups, kinds, inventory


def _fmt(v: float | None, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _rate(entry: dict | None) -> str:
    if entry is None:
        return "– (too few scores for this level)"
    return (f"{entry['scores_above']} scores; {entry['flagged']}/{entry['clusters']} groups, "
            f"≤ {entry['upper_one_sided']:.3f}")


def kind_bundle(shipped, scores_json: Path, path: str, kind: str, fpr: float,
                out: Path) -> None:
    """Write the shipped weights in ``path``'s stamp mode, calibrated on one kind's null.

    From a ``--scores-json`` of an earlier run: the kind's per-image scores become the
    calibration (as ``calibrate`` would record them), for the APGD script's ``verify``.
    """
    raw = json.loads(scores_json.read_text())[path]
    rows = [s for s, k in zip(raw["scores"], raw["kinds"], strict=True) if k == kind]
    if not rows:
        raise SystemExit(f"no {kind!r} images in {scores_json} ({path})")
    values = sorted(v for s in rows for v in s)
    threshold = threshold_at(values, fpr)
    m = shipped.with_config(stamp_mode=path, fpr=fpr)
    m.calibration = {
        "clean_statistics": values, "n_scores": len(values), "n_images": len(rows),
        "views_per_image": len(rows[0]), "fpr_target": fpr, "threshold_statistic": threshold,
        "source": f"{kind} null of scripts/anti_forward_calibration_by_kind.py ({scores_json})",
        "n_groups": len({g for g, k in zip(raw["groups"], raw["kinds"], strict=True)
                         if k == kind})}
    m.to_bundle(out)
    print(f"wrote {out}: {kind} null, {len(values)} scores of {len(rows)} images, "
          f"threshold {threshold} at {fpr:g}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind-bundle", nargs=3, metavar=("PATH", "KIND", "OUT"), default=None,
                    help="only write the shipped weights in scan path PATH calibrated on "
                         "KIND's scores of --scores-json (an earlier run's) to OUT")
    ap.add_argument("--bundle", type=Path, default=ROOT / "components/pretrained/anti_forward")
    ap.add_argument("--data-root", type=Path, default=ROOT / "data")
    ap.add_argument("--calibration-root", type=Path, default=ROOT / "data" / "sample-calibration")
    ap.add_argument("--fpr", type=float, default=1e-3)
    ap.add_argument("--views", type=int, default=8, help="scores per image (itself + chain)")
    ap.add_argument("--photo-crops", type=int, default=16, help="crops per unseen photo")
    ap.add_argument("--train-crops", type=int, default=4, help="crops per training photo")
    ap.add_argument("--graphic-crops", type=int, default=4)
    ap.add_argument("--fresh-procedural", type=int, default=112,
                    help="procedural images drawn with --procedural-seed (never trained on)")
    ap.add_argument("--procedural-seed", type=int, default=1)
    ap.add_argument("--limit", type=int, default=12, help="stamped held-out photos per size")
    ap.add_argument("--paths", default="stretch,tiles",
                    help="scan paths: stretch (the bundle's), tiles (tiles and conv)")
    ap.add_argument("--scores-json", type=Path, default=None, help="per-image scores here")
    ap.add_argument("--card", type=Path, default=None)
    ap.add_argument("--size", type=int, default=256, help="side of every null image")
    ap.add_argument("--kinds", default="", help="comma-separated kinds to keep (default: all)")
    ap.add_argument("--tag", default="", help="suffix of the card markers and the JSON name")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.kind_bundle:
        path, kind, out = args.kind_bundle
        kind_bundle(load_bundle(args.bundle), args.scores_json, path, kind, args.fpr, Path(out))
        return
    start = time.time()
    clean, groups, kinds, inventory = null_images(args)
    print(f"null: {clean.shape[0]} images, {len(set(groups))} groups; "
          + ", ".join(f"{k}: {kinds.count(k)} images / {len(inventory[k])} groups"
                      for k in sorted(set(kinds))), flush=True)
    shipped = load_bundle(args.bundle)
    held = {size: heldout_photos(args.data_root, size, args.limit) for size in (256, 512)}
    record: dict = {"inventory": inventory, "fpr": args.fpr, "views": args.views,
                    "paths": {}, "detection": []}
    raw: dict = {}
    for path in args.paths.split(","):
        t0 = time.time()
        m = shipped.with_config(stamp_mode=path, fpr=args.fpr, smoothing=False,
                                calibration_scores=clean.shape[0] * args.views)
        cal = m.calibrate(clean, torch.Generator().manual_seed(9),
                          source="installed photos, LFW crops, graphics, procedural (af8)",
                          groups=groups, kinds=kinds)
        by_kind = cal["by_kind"]
        shipped_thr = shipped.calibration.get("threshold_statistic")
        at_shipped = (kind_calibration(cal["image_statistics"], groups, kinds, args.fpr,
                                       shipped_thr) if path == "stretch" else None)
        record["paths"][path] = {"by_kind": by_kind, "seconds": round(time.time() - t0, 1),
                                 "shipped_threshold": shipped_thr if path == "stretch" else None,
                                 "at_shipped": at_shipped}
        raw[path] = {"scores": cal["image_statistics"], "groups": groups, "kinds": kinds}
        print(f"{path}: calibrated in {time.time() - t0:.0f} s; " + "; ".join(
            f"{k} thr {_fmt(v['threshold_statistic'])} max {v['max_statistic']:.2f}"
            for k, v in by_kind.items()), flush=True)
        thresholds = {f"{k} @ {args.fpr:g}": v["threshold_statistic"] for k, v in by_kind.items()}
        if path == "stretch":
            thresholds[f"shipped ({shipped.config.fpr:g})"] = shipped_thr
        for mode in ((path,) if path == "stretch" else ("tiles", "conv")):
            mm = m.with_config(stamp_mode=mode)
            for size, (photos, names) in held.items():
                with torch.no_grad():
                    stamped = mm.scan_statistic(mm.embed(photos, None, batch_size=8)).tolist()
                    plain = mm.scan_statistic(photos).tolist()
                row = {"mode": mode, "size": size, "groups": sorted(set(names)),
                       "stamped": stamped, "clean": plain, "at": {}}
                for name, thr in thresholds.items():
                    row["at"][name] = (None if thr is None else
                                       {"threshold": thr,
                                        "stamped": sum(s > thr for s in stamped),
                                        "clean": sum(s > thr for s in plain)})
                record["detection"].append(row)
                print(f"  {mode} {size}²: stamped {min(stamped):.2f}..{max(stamped):.2f}, "
                      f"clean {min(plain):.2f}..{max(plain):.2f}", flush=True)
    record["seconds"] = round(time.time() - start, 1)
    if args.scores_json:
        args.scores_json.write_text(json.dumps(raw))
    lines = section(record, args)
    if args.card:
        suffix = "_" + "_".join(args.tag.split()) if args.tag.strip() else ""
        (args.card / f"calibration_by_kind{suffix}.json").write_text(
            json.dumps(record, indent=1))
        replace_section(args.card / "MODEL_CARD.md", lines, BEGIN.format(args.tag),
                        END.format(args.tag))
    print("\n".join(lines))


def section(record: dict, args: argparse.Namespace) -> list[str]:
    """The card section (between the markers) from the run's record."""
    inv = record["inventory"]
    kinds = [k for k in next(iter(record["paths"].values()))["by_kind"] if k != "all"]
    fpr = record["fpr"]
    lines = [BEGIN.format(args.tag),
             "### Null and thresholds by kind (`scripts/anti_forward_calibration_by_kind.py`)",
             "",
             f"Every image at {args.size}², {record['views']} scores each (itself + "
             f"full-strength chain draws), level {fpr:g}, {record['seconds']:.0f} s on the "
             "shared 2-core CPU (1 torch thread). Groups = distinct sources: "
             + "; ".join(f"{k}: {len(inv[k])}" for k in kinds)
             + (f"; not installed: {', '.join(inv['missing'])}" if inv["missing"] else "")
             + (f"; dropped as flat (unreadable): {', '.join(inv['dropped_flat'])}"
                if inv["dropped_flat"] else "") + ".",
             "",
             "Own threshold: the kind's own scores at the level (`None` when they are too "
             "few to reach it). Groups above a threshold are counted once each "
             "(`stats.clustered_rate`); the bound is the one-sided 95% Clopper–Pearson bound "
             "on the share of groups with any score above, which bounds the per-image "
             "false-positive rate by the number of distinct groups, not of scores.",
             "",
             "| scan path | kind | images | groups | scores | max clean score | own threshold | "
             "above own: scores; groups, 95% bound | above the pooled threshold: scores; "
             "groups, 95% bound |",
             "|---|---|---|---|---|---|---|---|---|"]
    for path, rec in record["paths"].items():
        for kind, e in rec["by_kind"].items():
            lines.append(f"| {path} | {kind} | {e['n_images']} | {e['n_groups']} | "
                         f"{e['n_scores']} | {e['max_statistic']:.2f} | "
                         f"{_fmt(e['threshold_statistic'])} | {_rate(e['at_own'])} | "
                         f"{_rate(e['at_deployed'])} |")
        if rec.get("at_shipped"):
            thr = rec["shipped_threshold"]
            lines.append(f"| {path}, at the shipped threshold {thr:.2f} | all | – | – | – | – | "
                         f"– | – | {_rate(rec['at_shipped']['all']['at_deployed'])} |")
            for kind in kinds:
                lines.append(f"| {path}, at the shipped threshold {thr:.2f} | {kind} | – | – | "
                             f"– | – | – | – | {_rate(rec['at_shipped'][kind]['at_deployed'])} |")
    lines += ["", "Stamped held-out photo crops (the sample set's test photos "
              f"{', '.join(record['detection'][0]['groups'])}: in no null), detected at each "
              "threshold (stamped above it / clean copies above it):", ""]
    names = sorted({n for row in record["detection"] for n in row["at"]})
    lines += ["| stamp mode | size | stamped score min / median / max | " + " | ".join(names)
              + " |", "|---|---|---|" + "---|" * len(names)]
    for row in record["detection"]:
        s = sorted(row["stamped"])
        cells = []
        for n in names:
            a = row["at"].get(n)
            cells.append("n/a" if n not in row["at"] else "–" if a is None else
                         f"{a['stamped']}/{len(s)} ({a['clean']}/{len(row['clean'])})")
        lines.append(f"| {row['mode']} | {row['size']}² | {s[0]:.2f} / {s[len(s) // 2]:.2f} / "
                     f"{s[-1]:.2f} | " + " | ".join(cells) + " |")
    lines += ["", "Threshold columns: `<kind> @ level` from the path's own null "
              "(stretch rows use the stretch null; tiles and conv rows the tile-grid null); "
              "`n/a`: that threshold belongs to the other path.", END.format(args.tag)]
    return lines


if __name__ == "__main__":
    main()
