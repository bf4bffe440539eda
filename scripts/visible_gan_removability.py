"""How much of a visible_gan bundle's marks a simple attacker can invert, with no network.

For the bundle's W and the seed's three baselines on the tiny profile's procedural classes
(1400 train / 300 test images at 32²): ``removability.local_linear_left`` (the share of
each mark's squared error the best per-pixel linear filter on the 3×3 neighbourhood,
fitted on the train split, leaves on the test split), W's ``image_dependent_share``, and
where the two sit in the mark's square (correlation over its pixels of W's per-image
variation with the linear inverse's leftover error). Seconds on a CPU.

Usage::

    OMP_NUM_THREADS=1 python scripts/visible_gan_removability.py \\
        [--bundle components/pretrained/visible_gan] [--json runs/removability.json]
"""

from __future__ import annotations

import argparse
import json
import os
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
from neuralmark.components.methods.visible_gan.evaluation import stamp_all  # noqa: E402
from neuralmark.components.methods.visible_gan.mark import box_mask  # noqa: E402
from neuralmark.components.methods.visible_gan.method import VisibleGan  # noqa: E402
from neuralmark.components.methods.visible_gan.removability import (  # noqa: E402
    image_dependent_share,
    linear_inverse,
    local_linear_left,
    variation_map,
)

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "components/pretrained/visible_gan")
    ap.add_argument("--data-root", type=Path, default=ROOT / "data" / "classes-tiny")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    method = VisibleGan.from_bundle(args.bundle)
    size, scale = method.config.working_size, method.config.mark_scale
    manifest = build_procedural_classes(args.data_root, ProceduralClassesConfig(
        size=size, images_per_class=200))
    data = training_data(manifest, size=size)
    x_tr = resize_square(data["train"], size).clamp(0, 1)
    x_te = resize_square(data["test"], size).clamp(0, 1)
    g = torch.Generator().manual_seed(0)
    marked = {n: (stamp_all(st, x_tr, g), stamp_all(st, x_te, g))
              for n, st in method.stampers().items()}
    out: dict = {"bundle": str(args.bundle), "local_linear_left": {}}
    for name, (tr, te) in marked.items():
        out["local_linear_left"][name] = local_linear_left(
            {"clean": x_tr, "marked": tr}, {"clean": x_te, "marked": te}, scale)
    box = box_mask(size, size, scale)
    out["image_dependent_share"] = image_dependent_share(marked["static"][1],
                                                         marked["deepstamp"][1], box)
    # where W varies per image against where the linear inverse fails, over the square
    inside = box.flatten().bool()
    varies = variation_map(marked["static"][1], marked["deepstamp"][1]).flatten()[inside]
    restored = linear_inverse({"clean": x_tr, "marked": marked["deepstamp"][0]},
                              marked["deepstamp"][1], scale)
    fails = ((restored - x_te) ** 2).sum(1).mean(0).flatten()[inside]
    out["corr_variation_vs_linear_left"] = float(torch.corrcoef(torch.stack([varies,
                                                                             fails]))[0, 1])
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
