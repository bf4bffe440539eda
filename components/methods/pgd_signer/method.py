"""``PGDSigner``: embed (PGD against the key's decoder), verify, null p-values (FPR)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from neuralmark.components.attacks.differentiable import EoTChain
from neuralmark.components.methods.base import (
    Callbacks,
    Status,
    Verdict,
    WatermarkKey,
    WatermarkMethod,
    check_images,
    random_keys,
    resize_square,
)
from neuralmark.components.methods.pgd_signer import signing, training
from neuralmark.components.methods.pgd_signer.config import PGDSignerConfig
from neuralmark.components.methods.pgd_signer.embedder import ResidualEmbedder, initial_residual
from neuralmark.components.methods.pgd_signer.keying import WhiteningSet, keyed_decoder
from neuralmark.components.methods.registry import register
from neuralmark.components.nets.squeeze_decoder import SqueezeDecoder
from neuralmark.components.payload import PayloadCodec


@register("pgd_signer")
class PGDSigner(WatermarkMethod):
    """NeuralHash-style signer. See the package docstring for the method."""

    Config = PGDSignerConfig
    config: PGDSignerConfig
    data_parallel = True
    required_fields = {"keyed_decoder": "bundles before it verified every key with one public "
                                        "decoder, so a mark could be copied (issue #17)"}
    smoke_config = {"working_size": 64, "width": 8, "input_stride": 1, "pgd_steps": 3,
                    "eot_samples": 1, "rounds": 2, "batch_size": 2, "sign_steps_train": 2,
                    "m_steps": 1, "curve_images": 2, "buffer_size": 8}

    def __init__(self, config: PGDSignerConfig) -> None:
        super().__init__(config)
        torch.manual_seed(config.seed)
        self.decoder = SqueezeDecoder(config.n_bits, config.width, config.input_stride)
        self.codec = PayloadCodec(config.n_bits, config.message_bits, config.bch_t)
        self.eot = EoTChain(config.eot)
        self.calibration: dict[str, Any] = {}
        self.decoder.eval()
        self.whitening_set = WhiteningSet(0, config.working_size // config.input_stride)
        self._keyed: dict[str, torch.nn.Module] = {}
        self._whitening_views: torch.Tensor | None = None

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"decoder": self.decoder, "whitening_set": self.whitening_set}

    def to(self, device: str | torch.device) -> PGDSigner:
        self._keyed.clear()
        self._whitening_views = None
        return super().to(device)

    def set_whitening_set(self, images: torch.Tensor) -> None:
        """Store ``whitening_views`` EoT views of the first ``whitening_images`` of ``images``
        (N×3×H×W)."""
        c = self.config
        self.whitening_set.set(self._to_working(images[: c.whitening_images].cpu()),
                               c.working_size // c.input_stride, self.eot, c.whitening_views,
                               torch.Generator().manual_seed(c.seed))
        self._keyed.clear()
        self._whitening_views = None

    def decoder_for(self, key: WatermarkKey | str) -> torch.nn.Module:
        """The decoder that signs and verifies ``key`` (the public one without keying)."""
        if not self.config.keyed_decoder:
            return self.decoder
        secret = key if isinstance(key, str) else key.secret
        if secret not in self._keyed:
            if len(self._keyed) >= 64:
                self._keyed.pop(next(iter(self._keyed)))
            self._keyed[secret] = keyed_decoder(self.decoder, secret, self.whitening_views(),
                                                self.config.keyed_layers)
        return self._keyed[secret]

    def whitening_views(self) -> torch.Tensor | None:
        """The whitening set as the decoder's input (``WhiteningSet.decoder_input``), made
        once and kept until the set or the device changes; ``None`` for an unfitted method
        (no set: its keyed decoders keep the public whitening)."""
        if not self.whitening_set.images.shape[0]:
            return None
        if self._whitening_views is None:
            c = self.config
            self._whitening_views = self.whitening_set.decoder_input(
                c.working_size, c.input_stride).to(self.device)
        return self._whitening_views

    def extra_state(self) -> dict[str, Any]:
        return {"calibration": self.calibration}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.calibration = dict(state.get("calibration", {}))
        self._keyed.clear()  # loaded weights: keyed decoders and views are made again
        self._whitening_views = None

    # -- helpers -------------------------------------------------------------
    def _to_working(self, x: torch.Tensor) -> torch.Tensor:
        return resize_square(x, self.config.working_size)

    def logits(self, images: torch.Tensor, decoder: torch.nn.Module | None = None
               ) -> torch.Tensor:
        """Logits of ``images`` (B×3×H×W, any size) → B×n_bits (default: public decoder)."""
        return (decoder or self.decoder)(self._to_working(images.to(self.device)))


    def sign_working(self, xw: torch.Tensor, target: torch.Tensor, steps: int,
                     generator: torch.Generator | None = None,
                     psnr: float | None = None, chain: EoTChain | None = None,
                     sharded: bool = False,
                     decoder: torch.nn.Module | None = None,
                     early_stop: int = 0, per_view: int = 0,
                     shared_draw: bool = False,
                     init: torch.Tensor | None = None) -> torch.Tensor:
        """PGD under EoT at the working size → B×3×S×S residual (:func:`.signing.sign_working`)."""
        return signing.sign_working(self, xw, target, steps, generator, psnr, chain, sharded,
                                    decoder, early_stop, per_view, shared_draw, init)

    # -- content interface ---------------------------------------------------
    def embed(self, images: torch.Tensor, key: WatermarkKey,
              generator: torch.Generator | None = None,
              embedder: ResidualEmbedder | None = None) -> torch.Tensor:
        """Sign ``images`` (B×3×H×W in [0,1], H,W ≥ 64) → same shape, in [0,1].

        With ``embedder`` (opt-in, trained for ``key``: :mod:`.embedder`), PGD starts from
        its residual instead of zero and runs ``pgd_steps`` steps from there (set it low).
        """
        check_images(images, self.min_size)
        # seeded by default: the same image and key always give the same output
        generator = generator or torch.Generator().manual_seed(self.config.seed)
        bits = torch.from_numpy(self.codec.encode(key)).float().to(self.device)
        x = images.to(self.device)
        xw = self._to_working(x)
        target = bits.unsqueeze(0).expand(x.shape[0], -1)
        init = None
        if embedder is not None:
            with torch.no_grad():
                init = initial_residual(self, embedder.to(self.device), xw, target)
        delta = self.sign_working(xw, target, self.config.pgd_steps, generator,
                                  decoder=self.decoder_for(key), early_stop=self.config.early_stop,
                                  per_view=self.config.eot_attacks_per_view,
                                  shared_draw=self.config.eot_shared_draw, init=init)
        if tuple(x.shape[-2:]) != tuple(xw.shape[-2:]):
            delta = F.interpolate(delta, size=x.shape[-2:], mode="bilinear",
                                  align_corners=False)
        return (x + delta).clamp(0, 1).to(images.device)

    @torch.no_grad()
    def decode_bits(self, images: torch.Tensor, batch_size: int = 32,
                    decoder: torch.nn.Module | None = None) -> np.ndarray:
        """Hard bits (B×n_bits uint8) of ``images`` (any size ≥ 64); default public decoder."""
        out = []
        for i in range(0, images.shape[0], batch_size):
            out.append((self.logits(images[i:i + batch_size], decoder) > 0).cpu().numpy())
        return np.concatenate(out).astype(np.uint8)

    def sync_views(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Candidate re-synchronisations of one image (1×3×H×W) for the verify search.

        The signature survives interpolation but not misalignment, so verify can
        undo a geometric attack by trying a small grid: rotations by
        ``-search_angles`` and, for each ``search_crops`` fraction f, the image
        pasted into an H/f × W/f canvas (mean colour) at 3×3 positions. The
        first view is always the image itself.
        """
        import kornia  # here, not at module level: plain verify never needs it

        c = self.config
        views = [image]
        for angle in c.search_angles:
            if angle:
                views.append(kornia.geometry.transform.rotate(
                    image, torch.full((1,), -float(angle), device=image.device)))
        h, w = image.shape[-2:]
        fill = image.mean(dim=(2, 3), keepdim=True)
        for f in c.search_crops:
            ch, cw = round(h / f), round(w / f)
            for oy in (0.0, 0.5, 1.0):
                for ox in (0.0, 0.5, 1.0):
                    canvas = fill.expand(1, 3, ch, cw).clone()
                    y0, x0 = round(oy * (ch - h)), round(ox * (cw - w))
                    canvas[..., y0:y0 + h, x0:x0 + w] = image
                    views.append(canvas)
        return views

    def _view_bits(self, images: torch.Tensor, search: bool,
                   decoder: torch.nn.Module) -> np.ndarray:
        """Decoded bits B×K×n (K = 1 without search)."""
        if not search:
            return self.decode_bits(images, decoder=decoder)[:, None, :]
        return np.stack([self.decode_bits(torch.cat([self._to_working(v) for v in
                                                     self.sync_views(images[i:i + 1])]),
                                          decoder=decoder)
                         for i in range(images.shape[0])])

    def verify(self, images: torch.Tensor, key: WatermarkKey,
               search: bool | None = None) -> list[Verdict]:
        """One ``Verdict`` per image; p-value exact under the binomial null.

        With ``search`` (default ``config.sync_search``) the best of K
        re-synchronised views is kept and its p-value multiplied by K
        (Bonferroni), so the false-positive rate stays controlled.
        """
        check_images(images, self.min_size)
        search = self.config.sync_search if search is None else search
        verdicts = []
        for views in self._view_bits(images, search, self.decoder_for(key)):
            reads = [self.codec.read(bits, key) for bits in views]
            best = max(range(len(reads)), key=lambda i: reads[i].matches)
            d, bits, k = reads[best], views[best], len(reads)
            p_value = min(1.0, k * d.p_value)
            detected = p_value <= self.detection_alpha
            mode = "claimed message" if d.claimed else (
                f"best of {2 ** self.config.message_bits} messages" if self.config.message_bits
                else "signature")
            searched = f", best of {k} synchronisation views" if k > 1 else ""
            reason = (f"{d.matches}/{d.n_bits} bits match the keyed word ({mode}{searched}); "
                      f"p={p_value:.3g} {'≤' if detected else '>'} alpha={self.detection_alpha:g}")
            verdicts.append(Verdict(
                detected=detected, score=d.bit_accuracy, p_value=p_value,
                status=Status.DETECTED if detected else Status.NOT_DETECTED, reason=reason,
                bits=bits.astype(int).tolist(),
                payload=d.message if detected and self.config.message_bits else None,
                bit_accuracy=d.bit_accuracy,
                extra={"bch_corrected": d.corrected, "claimed": d.claimed, "views": k,
                       "best_view": best},
            ))
        return verdicts

    def null_p_values(self, images: torch.Tensor, n_keys: int, generator: torch.Generator,
                      *, claimed: bool = True, search: bool | None = None) -> torch.Tensor:
        """p-values of ``images`` against ``n_keys`` random keys → B×n_keys (FPR fast path).

        The p-values ``verify`` gives for the keys of ``random_keys(n_keys, generator)`` (the
        contract of ``WatermarkMethod.null_p_values``): one decode per image and key (each
        key's own decoder), no Verdict objects; unkeyed, one decode per image.
        With the search, the best view's p-value × K, as in ``verify``.

        Args:
            images: B×3×H×W clean images in [0, 1].
            n_keys: K random keys.
            generator: the keys' generator.
            claimed: test the keys' claimed message 0 (``False``: decode-any mode, the
                keys as ``WatermarkKey(secret)`` without a message).
            search: the re-synchronisation search (default ``config.sync_search``).
        """
        check_images(images, self.min_size)  # what verify refuses is unreadable here too
        search = self.config.sync_search if search is None else search
        secrets = [k.secret for k in random_keys(n_keys, generator)]
        columns = []
        for group, decoder in self._null_decoders(secrets):
            views = self._view_bits(images, search, decoder)          # b k n
            b, k, n = views.shape
            p = self.codec.null_p_values(views.reshape(b * k, n), group, claimed=claimed)
            columns.append(np.minimum(1.0, k * p.reshape(b, k, len(group)).min(axis=1)))
        return torch.from_numpy(np.concatenate(columns, axis=1))

    def _null_decoders(self, secrets: list[str]) -> Iterator[tuple[list[str], torch.nn.Module]]:
        """``(keys, decoder)`` groups for :meth:`null_p_values`: all keys on the public decoder,
        or one key per keyed decoder, each built when its turn comes and then dropped (the
        calibration draws thousands of null keys: holding their decoders, or caching them in
        :meth:`decoder_for`, took the tiny demo past 24 GB)."""
        if not self.config.keyed_decoder:
            yield secrets, self.decoder
            return
        views = self.whitening_views()
        for secret in secrets:
            yield [secret], keyed_decoder(self.decoder, secret, views, self.config.keyed_layers)


    # -- training (EM: :mod:`.training`) ---------------------------------------
    def training_loss(self, images: torch.Tensor) -> torch.Tensor:
        """M-step loss on a batch (:func:`.training.training_loss`)."""
        return training.training_loss(self, images)

    def fit_whitening(self, images: torch.Tensor, views: int = 4,
                      generator: torch.Generator | None = None) -> None:
        """Whiten decoder features on ``views`` EoT views of clean ``images`` (N×3×S×S)."""
        training.fit_whitening(self, images, views, generator)

    def robustness_curves(self, images: torch.Tensor,
                          generator: torch.Generator | None = None) -> dict[str, Any]:
        """Bit accuracy vs rotation and zoom (:func:`.training.robustness_curves`)."""
        return training.robustness_curves(self, images, generator)

    def fit(self, data: Mapping[str, torch.Tensor],
            callbacks: Callbacks | Sequence[Any] = ()) -> dict[str, float]:
        """EM alternation (:func:`.training.fit`)."""
        return training.fit(self, data, callbacks)
