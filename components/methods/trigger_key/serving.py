"""Serving a marked host: the host's own task (denoise / super-resolve) on images sent to it.

A registered trigger_key model *is* an image-processing network; what a user of the served
model wants is its output, not a verdict about files (the content methods' verifier). So
``integrations/pyfunc_model.py`` routes a host watermark's requests here:

* :func:`host_requests` turns what MLflow's scoring server passes on into one
  :class:`HostRequest` per image, or refuses it with an ``InputError`` naming the problem.
  Accepted: columns ``{"images": [array, ...]}`` / ``{"image": array}`` (arrays ``H×W``,
  ``H×W×C`` with C = 1 or 3, uint8 0–255 or float in [0, 1]), ``{"paths": [...]}`` /
  ``{"path": "..."}``, a pandas DataFrame with an ``image`` or ``path`` column, or a list
  of such rows.
* :func:`process_image` runs the host on one ``C×H×W`` image: the noisy image itself
  (denoise) or its bicubic ×``scale`` upsample (SR, the VDSR input convention of
  ``data.restoration.sr_pairs``), converted to the host's channels.
* :func:`serve` answers every request: ``{"index", "path"?, "image": H×W[×C] nested lists
  in [0, 1], "shape", "task"}``, or ``{"index", "path", "status": "unreadable",
  "reason"}`` for an image file that cannot be read (it never stops the batch).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from neuralmark.components.data.restoration import to_channels
from neuralmark.components.errors import InputError
from neuralmark.components.imageio import load_image
from neuralmark.components.methods.trigger_key.host import HostMark
from neuralmark.components.nets.image_nets import apply_net

#: the largest image side served (a guard against a request that would exhaust memory)
MAX_SIDE = 4096


@dataclass(frozen=True)
class HostRequest:
    """One image to process: an in-request array (``image``) or a file (``path``)."""

    index: int
    image: np.ndarray | None = None
    path: str | None = None


def _plain(value: Any) -> Any:
    """numpy scalars / 0-d arrays as Python values; other values unchanged."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.item()
    return value.item() if isinstance(value, np.generic) else value


def _as_array(value: Any, where: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as err:
        raise InputError(f"{where}: not an image array ({err})") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number)
                                   or arr.dtype == np.bool_):
        raise InputError(f"{where}: an image must be a numeric H×W or H×W×C array, got "
                         f"dtype {arr.dtype}")
    return arr


def _rows_of(payload: Any) -> list[dict[str, Any]]:
    if hasattr(payload, "to_dict") and hasattr(payload, "columns"):  # a pandas DataFrame
        return [dict(r) for r in payload.to_dict(orient="records")]
    if isinstance(payload, Mapping):
        cols = {str(k): v for k, v in payload.items()}
        unknown = sorted(set(cols) - {"images", "image", "paths", "path"})
        if unknown:
            raise InputError(f"unknown field(s) {unknown}; send images (arrays) or paths")
        rows: list[dict[str, Any]] = []
        if "image" in cols:
            rows.append({"image": cols["image"]})
        if "images" in cols:
            rows += [{"image": v} for v in cols["images"]]
        if "path" in cols:
            rows.append({"path": _plain(cols["path"])})
        if "paths" in cols:
            paths = cols["paths"]
            paths = [paths] if isinstance(paths, str) else list(np.asarray(paths).ravel())
            rows += [{"path": _plain(p)} for p in paths]
        return rows
    if isinstance(payload, Sequence) and not isinstance(payload, (str, bytes)):
        out = []
        for i, r in enumerate(payload):
            if not isinstance(r, Mapping):
                raise InputError(f"row {i}: expected {{'image': array}} or {{'path': str}}, "
                                 f"got {type(r).__name__}")
            out.append(dict(r))
        return out
    raise InputError(f"expected images or paths (a mapping, rows or a DataFrame), got "
                     f"{type(payload).__name__}")


def host_requests(payload: Any) -> list[HostRequest]:
    """One :class:`HostRequest` per image in ``payload`` (shapes: the module docstring).

    Raises:
        InputError: nothing to process, a row with neither or both of ``image``/``path``,
            a path that is not a string, an image that is not a numeric array.
    """
    requests = []
    for i, row in enumerate(_rows_of(payload)):
        image, path = row.get("image"), _plain(row.get("path"))
        has_image = image is not None and not (isinstance(image, float) and np.isnan(image))
        has_path = path is not None and not (isinstance(path, float) and np.isnan(path))
        if has_image == has_path:
            raise InputError(f"row {i}: give exactly one of 'image' (an array) or 'path'")
        if has_path:
            if not isinstance(path, (str, os.PathLike)) or not str(path):
                raise InputError(f"row {i}: path must be a non-empty string, got {path!r}")
            requests.append(HostRequest(i, path=str(path)))
        else:
            requests.append(HostRequest(i, image=_as_array(image, f"row {i}")))
    if not requests:
        raise InputError("no images to process: send images (arrays) or paths")
    return requests


def array_to_image(arr: np.ndarray, where: str = "image") -> torch.Tensor:
    """``H×W`` / ``H×W×C`` (C = 1, 3) uint8 or [0, 1] float array → ``C×H×W`` float32.

    Raises:
        InputError: wrong rank or channels, an empty or too large image, values outside
            the range of the dtype, non-finite values.
    """
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise InputError(f"{where}: expected H×W or H×W×C (C = 1 or 3), got shape "
                         f"{tuple(arr.shape)}")
    h, w = arr.shape[:2]
    if min(h, w) < 1 or max(h, w) > MAX_SIDE:
        raise InputError(f"{where}: sides must be in [1, {MAX_SIDE}], got {h}×{w}")
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
    if arr.dtype == np.uint8:
        return x.float() / 255
    x = x.float()
    if not torch.isfinite(x).all():
        raise InputError(f"{where}: holds NaN or infinite values")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise InputError(f"{where}: float images must be in [0, 1] (uint8 for 0–255), got "
                         f"[{float(x.min()):.3g}, {float(x.max()):.3g}]")
    return x


def process_image(method: HostMark, image: torch.Tensor) -> torch.Tensor:
    """The host's task on one ``C×H×W`` image in [0, 1]: ``C′×H′×W′`` in [0, 1].

    Denoise: ``H′ = H``; SR: ``H′ = scale·H`` (the host sees the bicubic upsample). ``C′`` is
    the host's channels (a colour image is made grey for a grey host, and a grey one
    repeated for a colour host).
    """
    c = method.config
    x = to_channels(image[None].float(), c.channels)  # 1 c h w
    if c.task == "sr":
        h, w = x.shape[-2:]
        x = F.interpolate(x, size=(h * c.scale, w * c.scale), mode="bicubic",
                          align_corners=False).clamp(0, 1)
    return apply_net(method.host, x, 1)[0].clamp(0, 1)


def image_to_array(image: torch.Tensor) -> np.ndarray:
    """``C×H×W`` → ``H×W`` (grey) or ``H×W×3`` float32 array."""
    arr = image.detach().cpu().permute(1, 2, 0).numpy().astype(np.float32)
    return arr[..., 0] if arr.shape[-1] == 1 else arr


def serve(method: HostMark, payload: Any) -> list[dict[str, Any]]:
    """Run the host's task on every image of ``payload``; see the module docstring.

    Raises:
        InputError: the request cannot be read (:func:`host_requests`), or an in-request
            array is not an image (:func:`array_to_image`).
    """
    out = []
    for r in host_requests(payload):
        where = f"row {r.index}"
        head: dict[str, Any] = {"index": r.index, "task": method.config.task}
        if r.path is not None:
            head["path"] = r.path
            try:
                image = load_image(r.path, min_size=1).tensor[0]  # 3 h w
            except InputError as err:
                out.append({**head, "status": "unreadable", "reason": str(err)})
                continue
        else:
            image = array_to_image(np.asarray(r.image), where)
        arr = image_to_array(process_image(method, image))
        out.append({**head, "status": "ok", "shape": list(arr.shape), "image": arr.tolist()})
    return out


__all__ = ["MAX_SIDE", "HostRequest", "array_to_image", "host_requests", "image_to_array",
           "process_image", "serve"]
