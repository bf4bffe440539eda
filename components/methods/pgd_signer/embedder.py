"""``pgd_signer``'s residual embedder: a small CNN that predicts the residual PGD writes, so
PGD only refines it (issue #17; opt-in, ``PGDSigner.embed(..., embedder=…)``).

The net reads the image down-sampled by the decoder's ``input_stride`` (the decoder sees, and
PGD writes, only those frequencies) and the target word (per bit a learned carrier, weighted
by the bit's sign; and FiLM: per-layer scale and shift of every hidden layer from the signs);
it outputs a residual at the same low resolution, up-sampled to the working size, scaled by
the JND map and projected into the method's budget as a PGD step is (:func:`.signing.project`).

It is trained through one key's frozen decoder under the method's EoT chain with PGD's own
hinge loss (:func:`train_embedder`), so it is as secret as the key: whoever holds it signs
for that key. Weights: ``save_embedder`` / ``load_embedder`` (safetensors, the net's shape in
the metadata).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from neuralmark.components.errors import InputError
from neuralmark.components.methods.pgd_signer import signing


class ResidualEmbedder(nn.Module):
    """(image, target word) → a raw residual in [−1, 1].

    Per bit a learned carrier (``carrier_channels`` maps at half the net's resolution); the
    word's ±1 signs weight them into one carrier field, which the convolutions modulate by
    the image (and FiLM by the word); a 1×1 skip keeps the field's linear part.

    Args:
        n_bits: bits of the word.
        size: the method's working size S (the net works at S / ``stride``).
        stride: the decoder's ``input_stride``.
        width: channels of the hidden layers.
        carrier_channels: channels of each bit's carrier.
        seed: the carriers' initial draw.
    """

    def __init__(
        self,
        n_bits: int = 32,
        size: int = 256,
        stride: int = 4,
        width: int = 32,
        carrier_channels: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if size % (2 * stride):
            raise InputError(f"working size {size} is not a multiple of 2 × the stride {stride}")
        self.shape = {
            "n_bits": n_bits,
            "size": size,
            "stride": stride,
            "width": width,
            "carrier_channels": carrier_channels,
            "seed": seed,
        }
        half = size // stride // 2
        g = torch.Generator().manual_seed(seed)
        self.carriers = nn.Parameter(
            torch.randn(n_bits, carrier_channels, half, half, generator=g) / n_bits**0.5
        )
        dilations = (1, 2, 4, 8)
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(
                    3 + carrier_channels if i == 0 else width, width, 3, padding=d, dilation=d
                )
                for i, d in enumerate(dilations)
            ]
        )
        self.films = nn.ModuleList([nn.Linear(n_bits, 2 * width) for _ in dilations])
        self.out = nn.Conv2d(width, 3, 1)
        self.skip = nn.Conv2d(carrier_channels, 3, 1)
        for film in self.films:  # start as plain convolutions (scale 1, shift 0)
            nn.init.zeros_(film.weight)
            nn.init.zeros_(film.bias)

    def forward(self, x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        """Shapes: ``x`` B×3×S×S in [0, 1], ``bits`` B×n_bits in {0, 1} → B×3×S×S in [−1, 1]."""
        s, n = self.shape["size"], self.shape["n_bits"]
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != (s, s):
            raise InputError(f"the embedder takes B×3×{s}×{s} images, got {tuple(x.shape)}")
        if bits.shape != (x.shape[0], n):
            raise InputError(
                f"the embedder takes B×{n} bits for {x.shape[0]} images, got {tuple(bits.shape)}"
            )
        low = s // self.shape["stride"]
        img = F.interpolate(
            x, size=(low, low), mode="bilinear", antialias=True, align_corners=False
        )  # b 3 l l
        img = (img - img.mean(dim=(1, 2, 3), keepdim=True)) / (
            img.std(dim=(1, 2, 3), keepdim=True) + 0.02
        )
        sign = 2 * bits.to(x) - 1  # b n
        field = torch.einsum("bn,nchw->bchw", sign, self.carriers)  # b c l/2 l/2
        field = F.interpolate(field, size=(low, low), mode="bilinear", align_corners=False)
        h = torch.cat([img, field], dim=1)  # b 3+c l l
        for conv, film in zip(self.convs, self.films, strict=True):
            scale, shift = film(sign).chunk(2, dim=1)  # b w, b w
            h = F.relu(conv(h) * (1 + scale[..., None, None]) + shift[..., None, None])
        r = torch.tanh(self.out(h) + self.skip(field))  # b 3 l l
        return F.interpolate(r, size=(s, s), mode="bilinear", align_corners=False)


def initial_residual(
    method: Any,
    embedder: ResidualEmbedder,
    xw: torch.Tensor,
    target: torch.Tensor,
    psnr: float | None = None,
) -> torch.Tensor:
    """The embedder's residual in the method's budget, as PGD shapes a step: scaled by the
    JND map, L∞-capped, L2-projected onto the ``psnr`` ball.

    Shapes: ``xw`` B×3×S×S at the working size, ``target`` B×n_bits → B×3×S×S.
    """
    c = method.config
    if embedder.shape["size"] != c.working_size or embedder.shape["n_bits"] != c.n_bits:
        raise InputError(
            f"embedder made for {embedder.shape['size']}² and "
            f"{embedder.shape['n_bits']} bits; the method signs at "
            f"{c.working_size}² with {c.n_bits} bits"
        )
    weight = signing.jnd_map(xw) if c.jnd else torch.ones_like(xw[:, :1])
    raw = embedder(xw, target) * weight * (c.linf_255 / 255)
    return signing.project(c, raw, xw, c.psnr_target if psnr is None else psnr)


def train_embedder(
    method: Any,
    key: Any,
    images: torch.Tensor,
    steps: int,
    batch_size: int = 8,
    views: int = 2,
    lr: float = 2e-3,
    width: int = 32,
    seed: int = 0,
    time_budget_s: float = 0.0,
    messages: Sequence[int] | None = None,
    log: Callable[[dict], None] | None = None,
) -> ResidualEmbedder:
    """Train an embedder for ``key`` through its frozen decoder under the method's EoT.

    Each step: ``batch_size`` photos (random horizontal flips), each with the word of a
    random message of ``key`` (``codec.encode``; one of ``messages``, default all), the
    embedder's residual in the budget (:func:`initial_residual`), ``views`` copies of each
    marked photo (the first un-attacked, the others drawn from the method's EoT chain as
    ``embed`` draws them) through the key's decoder, PGD's hinge loss
    (:func:`.signing.eot_loss`), one Adam step.

    Args:
        method: a fitted ``PGDSigner``.
        key: the owner's ``WatermarkKey``; its message is ignored (every message is drawn).
        images: N×3×S×S training photos at the working size, in [0, 1].
        steps: Adam steps (at most).
        batch_size: photos per step.
        views: views per photo (≥ 1; 1 = the un-attacked view only).
        lr: Adam's step.
        width: the embedder's hidden channels.
        seed: the embedder's init, code and draws.
        time_budget_s: stop after the step that passes this many seconds (0: run ``steps``).
        messages: the messages to train for (an owner who signs one message needs one word;
            default every message of ``message_bits``).
        log: called every 25 steps with ``{"step", "loss", "bit_accuracy", "seconds"}``.

    Returns:
        The trained ``ResidualEmbedder`` (eval mode).
    """
    from neuralmark.components.methods.base import WatermarkKey

    c = method.config
    s = c.working_size
    if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (s, s):
        raise InputError(f"training photos must be N×3×{s}×{s}, got {tuple(images.shape)}")
    if views < 1 or batch_size < 1 or steps < 1:
        raise InputError(
            f"steps, batch_size and views must be ≥ 1, got {steps}, {batch_size}, {views}"
        )
    torch.manual_seed(seed)
    net = ResidualEmbedder(c.n_bits, s, c.input_stride, width, seed=seed)
    decoder = method.decoder_for(key)
    decoder.eval()
    for p in decoder.parameters():
        p.requires_grad_(False)
    chain = method.eot
    n = len(chain.attacks)
    per_view = c.eot_attacks_per_view if 0 < c.eot_attacks_per_view < n else 0
    draw = (
        {"per_view": per_view, **({"shared": True} if c.eot_shared_draw else {})}
        if per_view
        else {}
    )
    messages = range(2**c.message_bits) if messages is None else messages
    bad = [m for m in messages if not 0 <= m < 2**c.message_bits]
    if bad or not len(messages):
        raise InputError(
            f"messages must be a non-empty subset of 0…{2**c.message_bits - 1}, "
            f"got {list(messages)}"
        )
    words = torch.from_numpy(
        np.stack([method.codec.encode(WatermarkKey(key.secret, m)) for m in messages])
    ).float()  # m n
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    start = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, len(images), (batch_size,), generator=g)
        x = images[idx]
        flip = torch.rand(batch_size, generator=g) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        target = words[torch.randint(0, len(words), (batch_size,), generator=g)]
        delta = initial_residual(method, net, x, target)
        reps = (x + delta).clamp(0, 1).repeat(views, 1, 1, 1)
        params = chain.sample(reps.shape[0], g, **draw)
        for k, v in params.items():
            if k.endswith(".on"):
                v[:batch_size] = 0
        logits = decoder(chain.apply(reps, params, only_on=True))
        loss = signing.eot_loss(c, logits, 2 * target - 1, batch_size, views)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seconds = time.perf_counter() - start
        if log and (step % 25 == 0 or step == steps - 1):
            with torch.no_grad():
                acc = ((logits[:batch_size] > 0).float() == target).float().mean()
            log(
                {
                    "step": step,
                    "loss": float(loss.detach()),
                    "bit_accuracy": float(acc),
                    "seconds": seconds,
                }
            )
        if time_budget_s and seconds > time_budget_s:
            break
    return net.eval()


def save_embedder(net: ResidualEmbedder, path: str | Path) -> None:
    """Write ``net`` as safetensors (its shape in the metadata)."""
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()},
        str(path),
        metadata={"residual_embedder": json.dumps(net.shape)},
    )


def load_embedder(path: str | Path) -> ResidualEmbedder:
    """Read a ``save_embedder`` file.

    Raises:
        InputError: the file is missing or is not an embedder's.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such embedder file")
    with safe_open(str(path), "pt") as f:
        meta = (f.metadata() or {}).get("residual_embedder")
    if meta is None:
        raise InputError(f"{path}: not a pgd_signer embedder (no 'residual_embedder' metadata)")
    net = ResidualEmbedder(**json.loads(meta))
    net.load_state_dict(load_file(str(path)))
    return net.eval()
