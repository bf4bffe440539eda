"""The pip-installable watermarks a user would otherwise pick, behind our content interface.

Each adapter carries the same 32-bit keyed payload as ``pgd_signer`` (``payload.PayloadCodec``:
8-bit message + BCH parity, XOR-ed with a mask drawn from the secret), writes those bits with
the peer's own encoder and reads them back with the peer's own decoder, so every method in a
benchmark is judged by the same exact binomial p-value at the same level.

Peers (the ``peers`` extra: ``pip install -e ".[peers]"``):

- ``dwtDct``, ``dwtDctSvd``, ``rivaGan``: ``invisible-watermark`` (``imwatermark``); rivaGan
  runs the ONNX networks shipped in its wheel through ``onnxruntime``. Its encoder and
  decoder refuse images under 256×256 px.
- ``blind_watermark``: ``blind-watermark`` (DWT-DCT-SVD with a keyed block shuffle).

A peer whose package is missing raises ``PeerUnavailable`` from ``load_peer`` (the benchmark
turns that into a "not installed" row). Images cross to the peers as uint8 BGR arrays
(OpenCV's layout), so what a peer returns is what a user would save.

``verify`` hands a peer an image at least as large as the peer accepts: a smaller one (after a
``resize`` attack) is scaled up to the peer's minimum side first, as a user would have to;
the peers have no synchronisation of their own.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from neuralmark.components.errors import InputError
from neuralmark.components.methods.base import Status, Verdict, WatermarkKey, check_images
from neuralmark.components.payload import PayloadCodec

N_BITS = 32


class PeerUnavailable(RuntimeError):
    """A peer cannot be used here (its package is not installed); the message says how."""


@dataclass(frozen=True)
class PeerSpec:
    """What a peer needs: a display name, the modules it imports, its smallest side."""

    name: str
    package: str
    modules: tuple[str, ...]
    min_size: int


PEERS: dict[str, PeerSpec] = {
    "dwtDct": PeerSpec("dwtDct", "invisible-watermark", ("imwatermark", "cv2", "pywt"), 256),
    "dwtDctSvd": PeerSpec("dwtDctSvd", "invisible-watermark", ("imwatermark", "cv2", "pywt"),
                          256),
    "rivaGan": PeerSpec("rivaGan", "invisible-watermark",
                        ("imwatermark", "cv2", "onnxruntime"), 256),
    "blind_watermark": PeerSpec("blind_watermark", "blind-watermark",
                                ("blind_watermark", "cv2", "pywt"), 64),
}
_ALIASES = {"blind-watermark": "blind_watermark", "blindwatermark": "blind_watermark",
            "dwtdct": "dwtDct", "dwtdctsvd": "dwtDctSvd", "rivagan": "rivaGan"}


def available_peers() -> list[str]:
    """Names of every peer the benchmark knows (installed or not)."""
    return list(PEERS)


def peer_name(name: str) -> str:
    """Canonical peer name; ``InputError`` naming the known ones for anything else."""
    key = _ALIASES.get(name.strip().lower(), name.strip())
    if key not in PEERS:
        raise InputError(f"unknown peer {name!r}; known peers: {', '.join(PEERS)}")
    return key


def missing_modules(name: str) -> list[str]:
    """Modules of peer ``name`` that cannot be imported here (empty: installed)."""
    return [m for m in PEERS[peer_name(name)].modules if importlib.util.find_spec(m) is None]


def _to_bgr(image: torch.Tensor) -> np.ndarray:
    """3×H×W float in [0, 1] → H×W×3 uint8 BGR."""
    rgb = (image.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu()
    return np.ascontiguousarray(rgb.numpy()[..., ::-1])


def _from_bgr(array: np.ndarray) -> torch.Tensor:
    """H×W×3 BGR (any real dtype, 0–255) → 3×H×W float32 in [0, 1], rounded to uint8 levels."""
    arr = np.clip(np.rint(np.asarray(array, dtype=np.float64)), 0, 255).astype(np.uint8)
    return torch.from_numpy(np.ascontiguousarray(arr[..., ::-1])).permute(2, 0, 1).float() / 255


class PeerMethod:
    """A peer as a content method: ``embed(images, key)``, ``verify(images, key)``.

    It also declares the detection contract the evaluators read (``detection_alpha``,
    ``keyed_detection``, ``null_p_values``), so ``run_suite`` and ``calibrate_fpr`` measure it
    exactly as they measure ours.

    Args:
        name: a peer of ``PEERS``.
        alpha: p-value level of ``verify`` (the 32-bit binomial test; pgd_signer's default).

    Raises:
        PeerUnavailable: the peer's package is not installed.
    """

    keyed_detection = True
    has_scanner = False
    kind = "content"
    family = "peer"

    def __init__(self, name: str, alpha: float = 1e-6) -> None:
        self.spec = PEERS[peer_name(name)]
        missing = missing_modules(self.spec.name)
        if missing:
            raise PeerUnavailable(
                f"not installed: {self.spec.package} (missing module {', '.join(missing)}); "
                'pip install -e ".[peers]"')
        if not 0 < alpha < 1:
            raise InputError(f"alpha must lie in (0, 1), got {alpha}")
        self.key = self.spec.name
        self.min_size = self.spec.min_size
        self.detection_alpha = float(alpha)
        self.codec = PayloadCodec(N_BITS, message_bits=8, bch_t=2,
                                  domain=f"neuralmark/benchmark/{self.spec.name}")
        self._encode, self._decode = _backend(self.spec.name)

    # -- raw bits (public: no key is needed to read or write a peer's bits) -----------------
    def write_bits(self, images: torch.Tensor, bits: np.ndarray) -> torch.Tensor:
        """Write raw ``bits`` (B×32 or 32, uint8 0/1) into ``images`` (B×3×H×W in [0, 1])."""
        check_images(images, self.min_size)
        bits = np.broadcast_to(np.asarray(bits, dtype=np.uint8), (images.shape[0], N_BITS))
        out = [_from_bgr(self._encode(_to_bgr(img), [int(b) for b in row]))
               for img, row in zip(images, bits, strict=True)]
        return torch.stack(out).to(images.device)  # b 3 h w

    def read_bits(self, images: torch.Tensor) -> np.ndarray:
        """Raw bits (B×32 uint8) the peer's decoder reads from ``images`` (any size ≥ 8)."""
        check_images(images, 8)
        return np.stack([np.asarray(self._decode(_to_bgr(img)), dtype=np.uint8).reshape(-1)
                         for img in self._readable(images)])

    def _readable(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        if min(h, w) >= self.min_size:
            return images
        scale = self.min_size / min(h, w)
        size = (max(self.min_size, round(h * scale)), max(self.min_size, round(w * scale)))
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False).clamp(0, 1)

    # -- content interface -------------------------------------------------------------------
    def embed(self, images: torch.Tensor, key: WatermarkKey) -> torch.Tensor:
        """Mark ``images`` (B×3×H×W in [0, 1], sides ≥ ``min_size``) with ``key``'s bits."""
        return self.write_bits(images, self.codec.encode(key))

    def verify(self, images: torch.Tensor, key: WatermarkKey) -> list[Verdict]:
        """One verdict per image: exact binomial p-value of the bits matching ``key``'s word."""
        check_images(images, 8)
        verdicts = []
        for bits in self.read_bits(images):
            d = self.codec.read(bits, key)
            detected = d.p_value <= self.detection_alpha
            verdicts.append(Verdict(
                detected=detected, score=d.bit_accuracy, p_value=d.p_value,
                status=Status.DETECTED if detected else Status.NOT_DETECTED,
                reason=(f"{d.matches}/{d.n_bits} bits match the keyed word; p={d.p_value:.3g} "
                        f"{'≤' if detected else '>'} alpha={self.detection_alpha:g}"),
                bits=bits.astype(int).tolist(),
                payload=d.message if detected else None, bit_accuracy=d.bit_accuracy))
        return verdicts

    def null_p_values(self, images: torch.Tensor, n_keys: int,
                      generator: torch.Generator) -> torch.Tensor:
        """p-values of ``images`` against ``random_keys(n_keys, generator)``: one decode each."""
        from neuralmark.components.methods.base import random_keys

        secrets = [k.secret for k in random_keys(n_keys, generator)]
        return torch.from_numpy(self.codec.null_p_values(self.read_bits(images), secrets))


Coder = Callable[..., np.ndarray]


def _backend(name: str) -> tuple[Coder, Coder]:
    """(encode(bgr, bits) → bgr, decode(bgr) → bits) of one peer."""
    if name == "blind_watermark":
        return _blind_encode, _blind_decode
    from imwatermark import WatermarkDecoder, WatermarkEncoder

    if name == "rivaGan":
        WatermarkEncoder.loadModel()  # the ONNX sessions are class attributes, loaded once

    def encode(bgr: np.ndarray, bits: list[int]) -> np.ndarray:
        encoder = WatermarkEncoder()
        encoder.set_watermark("bits", bits)
        return encoder.encode(bgr, name)

    def decode(bgr: np.ndarray) -> np.ndarray:
        return np.asarray(WatermarkDecoder("bits", N_BITS).decode(bgr, name), dtype=np.uint8)

    return encode, decode


@contextlib.contextmanager
def _quiet():
    """blind-watermark prints a banner on first use; keep stdout clean (``--json``)."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _blind_core():
    with _quiet():
        from blind_watermark import WaterMark

        return WaterMark(password_wm=1, password_img=1, processes=1)


def _blind_encode(bgr: np.ndarray, bits: list[int]) -> np.ndarray:
    wm = _blind_core()
    with _quiet():
        wm.read_img(img=bgr)
        wm.read_wm(np.asarray(bits, dtype=bool), mode="bit")
        return wm.embed()


def _blind_decode(bgr: np.ndarray) -> np.ndarray:
    wm = _blind_core()
    with _quiet():
        soft = wm.extract(embed_img=bgr.astype(np.float32), wm_shape=N_BITS, mode="bit")
    return (np.asarray(soft) >= 0.5).astype(np.uint8)
