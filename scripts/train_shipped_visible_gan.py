"""Build the DeepStamp bundle that ships in ``components/pretrained/visible_gan``.

Trains ``visible_gan`` on what the repository has offline: the sample set (crops of the
photos bundled with scikit-image / scikit-learn + procedural images, built by
``neuralmark.components.data.sample``) at CIFAR's 32², with the label-free rotation task for
F. Then measures the bundle on the held-out test split (disjoint photos) and on fresh
procedural images: detection of marked images, false positives on clean ones (with the
Clopper–Pearson interval), detection after JPEG / resize / blur, PSNR of marked vs clean,
and the seed's table (``fit_report``). Writes the bundle, ``metrics.json`` and the measured
part of ``MODEL_CARD.md`` into ``--out``.

Usage::

    python scripts/train_shipped_visible_gan.py --out outputs/visible_gan
    cp outputs/visible_gan/{config.json,weights.safetensors,state.json,MODEL_CARD.md} \\
        components/pretrained/visible_gan/
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

from neuralmark.components.attacks.registry import build_attack  # noqa: E402
from neuralmark.components.data.manifest import (  # noqa: E402
    load_image,
    load_split,
    read_manifest,
)
from neuralmark.components.data.sample import SampleDataConfig, build_sample_dataset  # noqa: E402
from neuralmark.components.methods import build  # noqa: E402
from neuralmark.components.methods.visible_gan.evaluation import (  # noqa: E402
    seed_table_markdown,
    visible_rows,
)
from neuralmark.components.methods.visible_gan.method import default_null_images  # noqa: E402
from neuralmark.components.metrics import psnr, ssim  # noqa: E402
from neuralmark.components.stats import clopper_pearson  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = SampleDataConfig(size=128, crops_per_photo=40, n_procedural=24)
RECIPE = {"working_size": 32, "detect_size": 64, "mark_resolution": 64, "w_width": 32,
          "v_width": 32, "d_width": 32, "classifier": "resnet_small", "classifier_width": 16,
          "task": "rotation", "classifier_steps": 600, "steps": 1000, "batch_size": 64,
          "lr": 2e-4, "classifier_lr": 2e-3, "utility_steps": 400, "removal_steps": 300,
          "calibration_scores": 2000, "fpr": 1e-3, "log_every": 100}
ATTACKS = [("jpeg", 75), ("jpeg", 50), ("resize", 0.5), ("blur", 1.0)]


def photos(manifest: Path, split: str) -> torch.Tensor:
    """The photo crops of one split at 32² (procedural images left out): N×3×32×32."""
    rows = [r for r in read_manifest(manifest)
            if r.split == split and not r.source.startswith("procedural")]
    return torch.stack([load_image(manifest.parent / r.path, 32) for r in rows])


def detection_rate(method, images: torch.Tensor) -> float:
    return sum(v.detected for v in method.verify(images)) / images.shape[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "visible_gan")
    ap.add_argument("--data-root", type=Path, default=ROOT / "data" / "sample-vg")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=RECIPE["steps"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    manifest = build_sample_dataset(args.data_root, DATA)
    # F's rotation task on photo crops only (a procedural texture has no upright); the
    # detector's null on every held-out image (photos and procedural) at the native 128²
    data = {"train": photos(manifest, "train"), "val": photos(manifest, "val"),
            "calibration": load_split(manifest, "val")}
    test = load_split(manifest, "test")
    method = build("visible_gan", {**RECIPE, "steps": args.steps})

    class Log:
        def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
            print(step, {k: round(v, 4) for k, v in metrics.items()}, flush=True)

    final = method.fit(data, [Log()])
    fit_seconds = time.time() - start
    method.to("cpu").to_bundle(args.out)

    # -- measurements on images the model never saw --------------------------------------
    fresh = default_null_images(128, count=64, seed=2024)[:32]  # procedural only (seed 2024)
    clean = torch.cat([test, fresh])
    marked = method.embed(clean)
    verdicts_clean = method.verify(clean)
    false_pos = sum(v.detected for v in verdicts_clean)
    lo, hi = clopper_pearson(false_pos, len(verdicts_clean))
    g = torch.Generator().manual_seed(0)
    attacked = {}
    for name, strength in ATTACKS:
        images = build_attack(name, strength)(marked, g).clamp(0, 1)
        attacked[f"{name}_{strength}"] = detection_rate(method, images)
    rows = visible_rows(method, test)
    metrics = {
        "fit_seconds": round(fit_seconds, 1), "final_training": final,
        "train_images": int(data["train"].shape[0]), "val_images": int(data["val"].shape[0]),
        "test_images": int(test.shape[0]), "fresh_procedural_images": int(fresh.shape[0]),
        "detection_rate_clean_marked": detection_rate(method, marked),
        "false_positives": int(false_pos), "clean_trials": len(verdicts_clean),
        "fpr_ci95": [lo, hi], "detection_rate_attacked": attacked,
        "psnr_marked_vs_clean": float(psnr(marked, clean).mean()),
        "ssim_marked_vs_clean": float(ssim(marked, clean).mean()),
        "ncc_clean_median": float(torch.tensor([v.score for v in verdicts_clean]).median()),
        "ncc_marked_median": float(torch.tensor([v.score for v in method.verify(marked)])
                                   .median()),
        "calibration": {k: v for k, v in method.calibration.items() if k != "clean_statistics"},
        "fit_report": method.fit_report,
        "test_rows": [{k: r[k] for k in ("label", "metric", "value")} for r in rows],
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (args.out / "seed_table.md").write_text(seed_table_markdown(method.fit_report))
    print(json.dumps({k: v for k, v in metrics.items() if k not in ("test_rows", "fit_report")},
                     indent=1))
    print(seed_table_markdown(method.fit_report))
    print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
