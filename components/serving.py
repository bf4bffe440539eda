"""Batch verification for a service: many images of any size, one network call per batch.

``verify`` of a content method takes one ``B×3×H×W`` tensor, so images of
different sizes cannot share a call. Methods whose detector reads the image at
a fixed working size (``config.working_size``: ``anti_forward``'s scanner,
``pgd_signer``'s decoder) resize internally anyway, so ``BatchVerifier``
resizes each image to that size first (antialiased bilinear, the same
downsampling the methods use) and verifies ``batch_size`` of them at once.
The answer for an image is the method's answer for its working-size view.

Files are decoded on a small thread pool (PIL releases the GIL while
decoding) while the previous batch is being scored. A file that cannot be read
gets an ``unreadable`` verdict naming the problem; it never stops the batch.

A served verifier (``integrations/pyfunc_model.py``) takes its requests as whatever
MLflow's scoring server makes of the JSON it was sent: ``verify_requests`` turns
every such shape into one ``VerifyRequest`` (path + key) per image, or refuses it
with an ``InputError`` naming the problem; ``verify_file`` answers one of them.

Example:
    >>> from neuralmark.components.methods.registry import load_bundle
    >>> scanner = BatchVerifier(load_bundle("components/pretrained/anti_forward"))
    >>> for path, verdict in scanner.verify_files(paths):   # doctest: +SKIP
    ...     print(path, verdict.status, verdict.score)
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuralmark.components.imageio import load_image
from neuralmark.components.methods.base import (
    InputError,
    Verdict,
    WatermarkKey,
    WatermarkMethod,
    check_images,
    resize_square,
)


def working_view(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a ``1×3×H×W`` (or ``3×H×W``) image to ``1×3×size×size``.

    Antialiased bilinear when shrinking; an image already at ``size`` is returned as is.
    """
    if image.ndim == 3:
        image = image.unsqueeze(0)
    check_images(image)
    return resize_square(image, size)


class BatchVerifier:
    """Verify many images with one content method, ``batch_size`` per network call.

    Args:
        method: a content method whose config has ``working_size``.
        key: the key to verify against (methods that ignore keys accept any).
        batch_size: images per ``verify`` call.
        workers: threads decoding files.
    """

    def __init__(self, method: WatermarkMethod, key: WatermarkKey | None = None,
                 batch_size: int = 32, workers: int = 2) -> None:
        size = getattr(method.config, "working_size", None)
        if method.kind != "content" or size is None:
            raise InputError(f"{method.key} cannot be batch-verified: it needs a content method "
                             "with a fixed working size")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.method = method
        self.key = key or WatermarkKey(secret="neuralmark-scan")
        self.size = int(size)
        self.batch_size = batch_size
        self.workers = max(1, workers)

    def _score(self, views: list[torch.Tensor]) -> list[Verdict]:
        batch = torch.cat(views).to(self.method.device)  # b 3 s s
        with torch.no_grad():
            return list(self.method.verify(batch, self.key))

    def verify_tensors(self, images: Sequence[torch.Tensor]) -> list[Verdict]:
        """One verdict per image (each ``3×H×W`` or ``1×3×H×W`` in [0, 1], any size).

        An image that fails ``check_images`` (wrong shape, range, NaN, too
        small) gets an ``unreadable`` verdict; the others are scored in batches.
        """
        verdicts: list[Verdict | None] = [None] * len(images)
        pending: list[tuple[int, torch.Tensor]] = []
        for i, img in enumerate(images):
            try:
                if min(img.shape[-2:]) < self.method.min_size:
                    raise InputError(f"image is {img.shape[-1]}×{img.shape[-2]} px; "
                                     f"{self.method.key} needs at least {self.method.min_size}")
                pending.append((i, working_view(img, self.size)))
            except InputError as err:
                verdicts[i] = Verdict.unreadable(str(err))
        for start in range(0, len(pending), self.batch_size):
            chunk = pending[start:start + self.batch_size]
            for (i, _), v in zip(chunk, self._score([view for _, view in chunk]), strict=True):
                verdicts[i] = v
        return [v for v in verdicts if v is not None]

    def _load(self, path: Path) -> torch.Tensor | Verdict:
        try:
            return working_view(load_image(path, min_size=self.method.min_size).tensor, self.size)
        except InputError as err:
            return Verdict.unreadable(str(err))

    def verify_files(self, paths: Iterable[str | os.PathLike]) -> Iterator[tuple[Path, Verdict]]:
        """Yield ``(path, verdict)`` in input order; decoding overlaps scoring."""
        paths = [Path(p) for p in paths]
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            loaded = pool.map(self._load, paths)
            batch: list[tuple[Path, torch.Tensor | Verdict]] = []
            for path, item in zip(paths, loaded, strict=True):
                batch.append((path, item))
                if len(batch) == self.batch_size:
                    yield from self._flush(batch)
                    batch = []
            yield from self._flush(batch)

    def _flush(self, batch: list[tuple[Path, torch.Tensor | Verdict]]
               ) -> Iterator[tuple[Path, Verdict]]:
        views = [item for _, item in batch if isinstance(item, torch.Tensor)]
        scored = iter(self._score(views)) if views else iter(())
        for path, item in batch:
            yield path, (next(scored) if isinstance(item, torch.Tensor) else item)


# -- requests of a served verifier ------------------------------------------------------------

#: the fields of a verification request; ``paths`` is accepted for ``path``
REQUEST_FIELDS = ("path", "secret", "message")
_ALIASES = {"paths": "path"}


@dataclass(frozen=True)
class VerifyRequest:
    """One image to verify and the key to verify it against.

    Attributes:
        path: the image file, as the verifying process sees its file system.
        key: the owner's key (``secret`` and optional claimed ``message``).
    """

    path: str
    key: WatermarkKey


def _plain(value: Any) -> Any:
    """Python values for numpy ones (MLflow turns JSON lists and scalars into arrays)."""
    if isinstance(value, np.ndarray):
        return value.item() if value.ndim == 0 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fields(record: Mapping[Any, Any], where: str) -> dict[str, Any]:
    """``record`` with ``paths`` read as ``path``; an unknown or doubled field is an error."""
    out: dict[str, Any] = {}
    for name, value in record.items():
        field = _ALIASES.get(str(name), str(name))
        if field not in REQUEST_FIELDS:
            raise InputError(f"{where}: unknown field {str(name)!r}; a request has 'path' "
                             "(or 'paths'), 'secret' and optionally 'message'")
        if field in out:
            raise InputError(f"{where}: give either 'path' or 'paths', not both")
        out[field] = _plain(value)
    return out


def _request(path: Any, secret: Any, message: Any, where: str) -> VerifyRequest:
    """One checked request; every problem is an ``InputError`` naming ``where`` and the field."""
    if _missing(path):
        raise InputError(f"{where}: 'path' is missing")
    if not isinstance(path, str) or not path.strip():
        raise InputError(f"{where}: 'path' must be a non-empty string, got {path!r}")
    if _missing(secret):
        raise InputError(f"{where}: 'secret' is missing; every image is verified against the "
                         "key it was marked with")
    if not isinstance(secret, str) or not secret.strip():
        raise InputError(f"{where}: 'secret' must be a non-empty string, got {secret!r}")
    if _missing(message):
        message = None
    elif isinstance(message, float) and message.is_integer():
        message = int(message)  # a DataFrame column with gaps holds floats
    if message is not None and (isinstance(message, bool) or not isinstance(message, int)
                                or message < 0):
        raise InputError(f"{where}: 'message' must be a non-negative integer, got {message!r}")
    return VerifyRequest(path=path, key=WatermarkKey(secret=secret, message=message))


def _from_columns(columns: Mapping[Any, Any]) -> list[VerifyRequest]:
    """``{"paths": [...] | "a.png", "secret": "s" | [...], "message": 7 | [...]}``."""
    fields = _fields(columns, "input")
    if "path" not in fields:
        raise InputError("input: 'paths' (a list of image paths) or 'path' is missing")
    paths = fields["path"]
    paths = [paths] if not isinstance(paths, list) else paths
    values: dict[str, list[Any]] = {}
    for name in ("secret", "message"):
        value = fields.get(name)
        if isinstance(value, list):
            if len(value) != len(paths):
                raise InputError(f"input: {len(paths)} paths but {len(value)} values of "
                                 f"{name!r}; give one value for all or one per path")
            values[name] = value
        else:
            values[name] = [value] * len(paths)
    where = "input" if len(paths) == 1 else "input, path {}"
    return [_request(p, s, m, where.format(i)) for i, (p, s, m) in
            enumerate(zip(paths, values["secret"], values["message"], strict=True))]


def _from_rows(rows: Sequence[Any]) -> list[VerifyRequest]:
    """``[{"path", "secret"[, "message"]}, ...]``."""
    out = []
    for i, row in enumerate(rows):
        row = _plain(row)
        if not isinstance(row, Mapping):
            raise InputError(f"row {i}: expected an object with 'path', 'secret' [, 'message'], "
                             f"got {type(row).__name__} {row!r}")
        fields = _fields(row, f"row {i}")
        out.append(_request(fields.get("path"), fields.get("secret"), fields.get("message"),
                            f"row {i}"))
    return out


def verify_requests(payload: Any) -> list[VerifyRequest]:
    """The verification requests in ``payload``, one per image, in order.

    Accepts every shape MLflow's scoring server hands to a model's ``predict``:

    * a table (pandas ``DataFrame``, from ``dataframe_records`` / ``dataframe_split`` / CSV)
      with columns ``path``, ``secret`` and optionally ``message`` (a gap is "no claim");
    * columns as a mapping (``{"inputs": {...}}``, or ``{"instances": [rows]}``, which
      MLflow turns into columns): ``paths`` (or ``path``) a list or one string, ``secret``
      and ``message`` one value for every path or a list with one per path; numpy arrays,
      0-d ones included, are read as the lists and scalars they came from;
    * a list of rows ``{"path", "secret"[, "message"]}`` (``{"inputs": [rows]}``, or a
      list of dicts given to ``predict`` directly).

    Args:
        payload: the model input.

    Returns:
        One ``VerifyRequest`` per image (an empty input gives an empty list).

    Raises:
        InputError: an unknown shape or field, a missing or non-string ``path`` or
            ``secret``, a ``message`` that is not a non-negative integer, or per-path
            lists of the wrong length. The message names the row or field.
    """
    if hasattr(payload, "to_dict") and hasattr(payload, "columns"):  # a pandas DataFrame
        return _from_rows(payload.to_dict(orient="records"))
    payload = _plain(payload)
    if isinstance(payload, Mapping):
        return _from_columns(payload)
    if isinstance(payload, (list, tuple)):
        return _from_rows(payload)
    raise InputError(f"cannot read a verification request from {type(payload).__name__} "
                     f"{payload!r}; send rows {{'path', 'secret'[, 'message']}} or columns "
                     "{'paths': [...], 'secret': ...}")


def verify_file(method: WatermarkMethod, path: str | os.PathLike, key: WatermarkKey) -> Verdict:
    """Verify one image file; a file that cannot be read gets an ``unreadable`` verdict.

    Args:
        method: the method to verify with (its ``verify`` takes a ``1×3×H×W`` image).
        path: the image file.
        key: the key to verify against.

    Returns:
        The method's verdict for the image, or ``unreadable`` naming the file and the problem.
    """
    try:
        image = load_image(path, min_size=method.min_size).tensor
    except InputError as err:
        return Verdict.unreadable(str(err))
    try:
        return method.verify(image.to(method.device), key)[0]
    except InputError as err:  # e.g. an image the method cannot read at its working size
        return Verdict.unreadable(f"{path}: {err}")
