"""Figure and number for the W residual of a visible_gan bundle: where W changes the mark.

Stamps the bundled scikit-image photos (astronaut, coffee, chelsea, rocket; 256², the
centred square) with the bundle's W and with the static blend of the same mark, and draws
``|DeepStamp − static|`` (magnified) beside the stamped photo. Prints, as JSON, the mean
absolute residual on the mark itself (alpha > 0.02), on the rest of the mark's square, and
on the square's outermost 2-px band (where the faint box showed: W painting the whole
square gives that band a step against the untouched image around it).

Usage::

    python scripts/visible_gan_residual_figure.py BUNDLE_DIR OUT.png [--title TEXT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from neuralmark.components.methods import load_bundle
from neuralmark.components.methods.visible_gan.mark import box_mask, place_mark

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
SIZE = 256
GAIN = 8.0  # residual magnification in the figure


def photos() -> torch.Tensor:
    """The four skimage photos, centred square resized to 256²: 4×3×256×256."""
    from skimage import data

    out = []
    for name in PHOTOS:
        arr = getattr(data, name)()
        h, w = arr.shape[:2]
        s = min(h, w)
        arr = arr[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].float() / 255
        out.append(F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True,
                                 align_corners=False))
    return torch.cat(out).clamp(0, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--title", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    method = load_bundle(args.bundle)
    x = photos()
    marked = method.embed(x)
    static = method.stampers()["static"](x, torch.Generator().manual_seed(0))
    residual = (marked - static).abs().amax(dim=1, keepdim=True)               # b 1 h w
    c = method.config
    alpha = place_mark(method.rgba.detach().cpu(), SIZE, SIZE, c.mark_scale)[:, 3:]
    on_mark = (alpha > 0.02).float()
    box = box_mask(SIZE, SIZE, c.mark_scale)
    rest = (box - on_mark).clamp(0, 1)
    inner = -F.max_pool2d(-box, 5, 1, 2)                                   # box eroded 2 px
    band = (box - inner).clamp(0, 1)

    def zone(mask: torch.Tensor) -> float:
        return float((residual * mask).sum() / (mask.sum() * residual.shape[0]))

    numbers = {"bundle": str(args.bundle), "mean_abs_residual_on_mark": zone(on_mark),
               "mean_abs_residual_rest_of_square": zone(rest),
               "mean_abs_residual_square_edge_2px": zone(band)}
    print(json.dumps(numbers))
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.0 * len(PHOTOS), 4.2))
    axes = fig.subplots(2, len(PHOTOS), squeeze=False)
    for j in range(len(PHOTOS)):
        axes[0][j].imshow(marked[j].permute(1, 2, 0).numpy())
        axes[1][j].imshow((GAIN * residual[j, 0]).clamp(0, 1).numpy(), cmap="magma",
                          vmin=0, vmax=1)
        axes[0][j].axis("off")
        axes[1][j].axis("off")
    axes[0][0].set_title("DeepStamp", fontsize=8, loc="left")
    axes[1][0].set_title(f"|DeepStamp − static| ×{GAIN:g}", fontsize=8, loc="left")
    if args.title:
        fig.suptitle(args.title, fontsize=9)
    fig.tight_layout()
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=60)
    buf.seek(0)
    with Image.open(buf) as im:  # a 64-colour palette keeps the card's figure small
        im.convert("RGB").quantize(64).save(args.out, optimize=True)


if __name__ == "__main__":
    sys.exit(main())
