"""``pgd_signer``'s per-owner decoder: the secret is more than a payload mask (issue #17).

With one public decoder, anyone holding a photo marked under a victim's key reads its raw
bits and writes them into any other photo by PGD against the same decoder (the copy
attack: 5 of 5 photos forged with the shipped bundle). Here the decoder that verifies a
key is *derived from the key*: the first ``keyed_layers`` feature modules (the stem conv
and, with 2+, the following fire modules), the read-out head and the feature whitening are
drawn from ``key_seed(secret, DOMAIN)``; only the rest of the feature stack ships.

Why these parts: every feature the keyed decoder computes passes through the keyed stem,
so no feature of it is computable from the package and shipped files (a keyed *linear*
head over public features would fall to a feature mean-shift attack: estimate the mean
feature shift of the victim's marked photos with the public backbone and push a target
along it). The whitening is re-fitted per key on the bundle's public whitening set (clean
photos at the decoder's input resolution), so every keyed decoder is as signable as the
shipped one was: the shipped decoder was itself a whitened fresh network (0 EM rounds).

Verification under a key never runs another key's decoder, so ``verify`` hands nobody a
gradient oracle for someone else's key.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from neuralmark.components.attacks.differentiable import EoTChain
from neuralmark.components.nets.squeeze_decoder import SqueezeDecoder
from neuralmark.components.payload import key_seed

DOMAIN = "pgd_signer/decoder/v1"


class WhiteningSet(nn.Module):
    """The public clean photos a keyed decoder's whitening is fitted on, as EoT views.

    Stored in the bundle as uint8 ``N·views×3×s×s`` (``s`` = the decoder's input size, the
    working size over the input stride): about 1.5 MB, no pickles. The views are drawn
    once, when the set is made, so building a key's decoder is one forward pass over them at
    the decoder's input size (the EoT chain at the working size cost ~15 s per key on this CPU).
    """

    def __init__(self, n: int = 0, size: int = 64) -> None:
        super().__init__()
        self.register_buffer("images", torch.zeros(n, 3, size, size, dtype=torch.uint8))

    @torch.no_grad()
    def set(self, images: torch.Tensor, size: int, eot: EoTChain, views: int,
            generator: torch.Generator) -> None:
        """Store ``views`` EoT views of ``images`` (N×3×H×W in [0,1], at the working size)
        resized to ``size``² (anti-aliased)."""
        drawn = torch.cat([eot(images, generator) for _ in range(views)])
        small = F.interpolate(drawn.float(), size=(size, size), mode="bilinear",
                              antialias=True, align_corners=False)
        self.images = (small.clamp(0, 1) * 255).round().to(torch.uint8)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        # the stored set's N is the bundle's, not this module's default
        key = prefix + "images"
        if key in state_dict:
            self.images = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def as_float(self, working_size: int) -> torch.Tensor:
        """The set at ``working_size``² in [0,1] (N×3×S×S)."""
        x = self.images.float() / 255
        return F.interpolate(x, size=(working_size, working_size), mode="bilinear",
                             align_corners=False)

    @torch.no_grad()
    def decoder_input(self, working_size: int, input_stride: int) -> torch.Tensor:
        """The set as the decoder's input (N×3×s×s, s = ``working_size // input_stride``):
        ``as_float(working_size)`` down-sampled as ``SqueezeDecoder.pooled`` does, so
        ``pooled_input`` of it equals ``pooled`` of ``as_float`` (the keyed decoders of
        earlier bundles are unchanged). It does not depend on the key: compute it once and
        pass it to every ``keyed_decoder``. Feeding the stored views as they are instead
        skips the up/down round trip's blur and moved the whitening by ~27 % (Frobenius)
        and the keyed logits by ~50 % (scripts/benchmark_pgd_signer_keying.py), so marks
        made before would no longer verify reliably."""
        x = self.as_float(working_size)
        if input_stride > 1:
            s = working_size // input_stride
            x = torch.cat([F.interpolate(x[i:i + 64], size=(s, s), mode="bilinear",
                                         antialias=True, align_corners=False)
                           for i in range(0, x.shape[0], 64)])
        return x


def _redraw(module: nn.Module, generator: torch.Generator) -> None:
    """He-normal convs / orthogonal linear layers, zero biases: the decoder's own init."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=generator)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.orthogonal_(m.weight, generator=generator)
            nn.init.zeros_(m.bias)


def _draw(decoder: SqueezeDecoder, generator: torch.Generator, keyed_layers: int
          ) -> list[nn.Module]:
    """Redraw, in place, ``decoder``'s first ``keyed_layers`` feature modules with weights and
    its head from ``generator``; returns the redrawn feature modules."""
    if keyed_layers < 1:
        raise ValueError(f"keyed_layers must be at least 1 (the stem), got {keyed_layers}")
    layers = [m for m in decoder.features if any(True for _ in m.parameters())]
    for module in layers[:keyed_layers]:
        drawn = copy.deepcopy(module).cpu()
        _redraw(drawn, generator)
        module.load_state_dict(drawn.state_dict())
    head = copy.deepcopy(decoder.head).cpu()
    _redraw(head, generator)
    decoder.head.load_state_dict(head.state_dict())
    return layers[:keyed_layers]


def _whiten(decoder: SqueezeDecoder, whitening: torch.Tensor) -> None:
    # the views come already at the decoder's input size (``WhiteningSet.decoder_input``,
    # made once per method, not once per key): re-sampling them per key was most of a
    # key's build (scripts/benchmark_pgd_signer_keying.py)
    device = decoder.feat_mean.device
    feats = [decoder.pooled_input(whitening[i:i + 64].to(device))
             for i in range(0, whitening.shape[0], 64)]
    decoder.fit_whitening(torch.cat(feats))


@torch.no_grad()
def keyed_decoder(public: SqueezeDecoder, secret: str, whitening: torch.Tensor | None,
                  keyed_layers: int) -> SqueezeDecoder:
    """The decoder that verifies ``secret``: ``public`` with its key-derived parts redrawn.

    Args:
        public: the shipped decoder (its later feature modules are kept).
        secret: the owner's secret.
        whitening: N×3×s×s EoT views of public clean photos as the decoder's input (working
            size / ``input_stride``, in [0,1]: ``WhiteningSet.decoder_input``), fed to
            ``pooled_input``; ``None`` keeps ``public``'s whitening (a method that was never
            fitted has no set).
        keyed_layers: how many leading layers with weights of ``public.features`` are
            redrawn (≥ 1: the stem conv; 2: and the first fire module; ...).

    Returns:
        A new decoder in eval mode on ``public``'s device (``public`` is not modified).
    """
    decoder = copy.deepcopy(public).eval()
    _draw(decoder, torch.Generator().manual_seed(key_seed(secret, DOMAIN)), keyed_layers)
    if whitening is not None:
        _whiten(decoder, whitening)
    return decoder


def training_decoder(public: SqueezeDecoder, generator: torch.Generator,
                     whitening: torch.Tensor | None, keyed_layers: int) -> SqueezeDecoder:
    """A random owner's decoder for EM training, built as ``keyed_decoder`` builds one.

    Its stem (``keyed_layers`` leading feature modules) and head are drawn from ``generator``
    and frozen; its later feature modules *are* ``public``'s (the same parameters), so an
    M-step through it trains the shipped layers to work under a stem and head they never see
    at verification. Whitening as in ``keyed_decoder``.
    """
    decoder = copy.deepcopy(public)
    with torch.no_grad():
        drawn = _draw(decoder, generator, keyed_layers)
    ids = {id(m) for m in drawn}
    decoder.features = nn.Sequential(*[mine if id(mine) in ids else shared
                                       for mine, shared in zip(decoder.features,
                                                               public.features, strict=True)])
    for module in [*drawn, decoder.head]:
        module.requires_grad_(False)
    if whitening is not None:
        with torch.no_grad():
            _whiten(decoder, whitening)
    return decoder
