"""V′'s learning curve on visible_gan's markings: removal gain vs training steps.

The evaluation's removal attacker V′ (``evaluation.dataset_utility``: V's architecture,
``removal_lr``, the same initial weights and batches for every stamper) starts near the
identity and only later learns to remove a mark; faint marks keep it there longer. This
trains one V′ per stamper (static, opacity, displacement, DeepStamp) on the tiny profile's
data (the ten procedural classes at 32², 1400 train / 300 test) and prints, for each
checkpoint, the held-out PSNR gain and the share of the mark's squared error left, so
``removal_steps`` can be set past the plateau for every marking.

With ``--train OUT`` it first trains a W the way the tiny pipeline does (the tiny profile's
``visible_gan.method`` config, ``--set key=value`` overrides, e.g.
``--set lambda_visibility=0``; the seed's table skipped) on the same data, saves it to OUT
and measures that W: the comparison of W's objectives.

Usage::

    OMP_NUM_THREADS=1 python scripts/visible_gan_removal_curve.py \\
        [--bundle components/pretrained/visible_gan | --train runs/w_tiny [--set k=v ...]] \\
        [--steps 300,600,1200,2400] [--json runs/curve.json]
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

from neuralmark.components.data.labelled import (  # noqa: E402
    ProceduralClassesConfig,
    build_procedural_classes,
    training_data,
)
from neuralmark.components.methods.base import resize_square  # noqa: E402
from neuralmark.components.methods.visible_gan.evaluation import (  # noqa: E402
    STAMPERS,
    contrast,
    removal_curve,
    removal_curve_markdown,
    stamp_all,
)
from neuralmark.components.methods.visible_gan.method import VisibleGan  # noqa: E402
from neuralmark.runtime.settings import load_profile, parse_overrides  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "components/pretrained/visible_gan",
                    help="a visible_gan bundle (its W stamps the DeepStamp column; its "
                         "config gives V′'s width, batch size and learning rate)")
    ap.add_argument("--train", type=Path, default=None,
                    help="train a W with the tiny profile's config first, save it here, "
                         "and measure it (instead of --bundle)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for --train (JSON values), repeatable")
    ap.add_argument("--steps", default="300,600,1200,2400",
                    help="comma-separated V′ step counts to judge at")
    ap.add_argument("--stampers", default=",".join(STAMPERS))
    ap.add_argument("--data-root", type=Path, default=ROOT / "data" / "classes-tiny")
    ap.add_argument("--images-per-class", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()
    try:
        checkpoints = sorted({int(s) for s in args.steps.split(",") if s.strip()})
    except ValueError as e:
        raise SystemExit(f"--steps must be comma-separated integers, got {args.steps!r}") from e
    stampers = [s.strip() for s in args.stampers.split(",") if s.strip()]
    torch.set_num_threads(args.threads)
    start = time.time()
    if args.train is None:
        method = VisibleGan.from_bundle(args.bundle)
        size = method.config.working_size
    else:
        recipe = {**load_profile("tiny")["visible_gan"]["method"], "utility_steps": 0,
                  "removal_steps": 0, "removal_curve_steps": [],
                  **parse_overrides(args.set)}
        method = VisibleGan(VisibleGan.Config.model_validate(recipe))
        size = method.config.working_size
    manifest = build_procedural_classes(
        args.data_root, ProceduralClassesConfig(size=size,
                                                images_per_class=args.images_per_class))
    data = training_data(manifest, size=size)
    if args.train is not None:
        final = method.fit(data)
        method.to("cpu").to_bundle(args.train)
        print(f"trained W ({time.time() - start:.0f} s): "
              + ", ".join(f"{k} {v:.4f}" for k, v in final.items() if k.startswith("loss_")))
        args.bundle = args.train
    x_tr = resize_square(data["train"], size).clamp(0, 1)
    x_te = resize_square(data["test"], size).clamp(0, 1)
    support = (method.canvas(1, size, size)[:, 3:] > 0.5).float()
    all_stampers = method.stampers()
    contrasts = {n: float(contrast(stamp_all(all_stampers[n], x_te,
                                             torch.Generator().manual_seed(1)),
                                   x_te, support).mean()) for n in stampers}
    rows = removal_curve(method, x_tr, x_te, checkpoints, torch.Generator().manual_seed(0),
                         torch.device("cpu"), stampers,
                         on_row=lambda r: print(f"{r['stamper']} {r['steps']}: gain "
                                                f"{r['removal_gain']:+.2f} dB, left "
                                                f"{r['removal_left']:.3f} "
                                                f"({time.time() - start:.0f} s)", flush=True))
    c = method.config
    print(f"bundle {args.bundle}; V′ width {c.v_width}, batch {c.batch_size}, "
          f"lr {c.removal_lr:g}; {x_tr.shape[0]} train / {x_te.shape[0]} held-out images at "
          f"{size}²; {time.time() - start:.0f} s")
    print("cells: PSNR gain on held-out images (share of the mark's squared error left)")
    print(removal_curve_markdown(rows, contrasts))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"bundle": str(args.bundle), "contrast": contrasts,
                                         "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
