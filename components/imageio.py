"""Read and write image files honestly: every conversion is reported, every failure named.

``load_image`` turns any file PIL can decode into a ``1×3×H×W`` float32 tensor in
``[0, 1]`` and lists, in plain words, what it had to do on the way (grayscale
to colour, 16-bit to float, alpha set aside, EXIF rotation, first frame of an
animation). A file it cannot use raises ``ImageReadError`` whose message names
the file and the problem: missing, a directory, empty, not an image, corrupt or
truncated, too many pixels, too small.

``save_image`` writes atomically (``files.atomic_file``: temporary file in the target
folder, then ``os.replace``): on any failure no partial file is left and an existing
file at the target is untouched. It returns notes too — a JPEG output, for one,
re-compresses the image, which is itself an attack on the mark.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from neuralmark.components.files import atomic_file
from neuralmark.components.methods.base import InputError, check_images

#: extensions ``iter_images`` picks up (lower case, with the dot)
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif"}
)

#: output extension -> PIL format name
SAVE_FORMATS: dict[str, str] = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
}

_ALPHA_FORMATS = frozenset({"PNG", "WEBP", "TIFF"})
_LOSSY_FORMATS = frozenset({"JPEG", "WEBP"})
_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


class ImageReadError(InputError):
    """An image file that cannot be used; the message names the file and the problem."""


@dataclass
class LoadedImage:
    """A decoded image and what was done to get it.

    Attributes:
        tensor: ``1×3×H×W`` float32 in ``[0, 1]`` (RGB, EXIF orientation applied).
        mode: the PIL mode of the file as stored (``"RGB"``, ``"L"``, ``"I;16"``, ...).
        alpha: ``1×1×H×W`` float32 in ``[0, 1]`` when the file has transparency, else ``None``.
        bit_depth: bits per channel of the file, 8 or 16.
        format: PIL format name (``"PNG"``, ``"JPEG"``, ...), or ``None`` if unknown.
        notes: human-readable conversions done while loading.
        path: the file it was read from.
        icc_profile: embedded ICC profile bytes, re-attached on save (pixels are
            not colour-converted, so the profile still describes them).
    """

    tensor: torch.Tensor
    mode: str
    alpha: torch.Tensor | None
    bit_depth: int
    format: str | None
    notes: list[str] = field(default_factory=list)
    path: Path | None = None
    icc_profile: bytes | None = None

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` in pixels."""
        return int(self.tensor.shape[-1]), int(self.tensor.shape[-2])


@contextlib.contextmanager
def _strict_truncation() -> Iterator[None]:
    """Force ``ImageFile.LOAD_TRUNCATED_IMAGES = False`` while decoding.

    Some libraries flip that global to True; a truncated file would then decode
    silently with grey rows, and verify would run on an image that is not the file.
    """
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _check_path(path: Path) -> None:
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if path.is_dir():
        raise ImageReadError(f"{path} is a directory, not an image file")
    if not path.is_file():
        raise ImageReadError(f"{path} is not a regular file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path} is empty (0 bytes), not an image")


def _open(path: Path, max_pixels: int) -> Image.Image:
    """Open lazily (header only) with PIL's bomb guard turned into our own check."""
    try:
        with warnings.catch_warnings():
            # We apply our own limit below; PIL still hard-fails beyond 2× its default.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as err:
        raise ImageReadError(
            f"{path} has too many pixels to decode safely (decompression-bomb guard): {err}"
        ) from err
    except UnidentifiedImageError as err:
        raise ImageReadError(f"{path.name} is not an image file PIL can read ({path})") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"{path} cannot be opened as an image: {err}") from err
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise ImageReadError(
            f"{path} is {w}×{h} px = {w * h:,} pixels; the limit is {max_pixels:,} "
            "(decompression-bomb guard; raise max_pixels if the file is trusted)"
        )
    return im


def _decode(im: Image.Image, path: Path) -> None:
    try:
        with _strict_truncation():
            im.load()
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as err:
        raise ImageReadError(f"{path} is corrupt or truncated: {err}") from err


def _integer_to_unit(arr: np.ndarray, mode: str, notes: list[str]) -> tuple[np.ndarray, int]:
    """Scale a single-channel ``I``/``I;16*`` array to ``[0, 1]`` float32."""
    arr = arr.astype(np.float64)
    if mode in _SIXTEEN_BIT_MODES:
        notes.append(f"16-bit grayscale ({mode}) scaled to [0, 1] and converted to RGB")
        return (arr / 65535.0).astype(np.float32), 16
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= 0 and hi <= 65535:
        notes.append(
            "32-bit integer grayscale (I) read as 16-bit (values 0..65535) and converted to RGB"
        )
        return (arr / 65535.0).astype(np.float32), 16
    notes.append(
        f"32-bit integer grayscale (I) with values {lo:g}..{hi:g} outside 0..65535 "
        "rescaled min–max to [0, 1] and converted to RGB"
    )
    span = hi - lo if hi > lo else 1.0
    return ((arr - lo) / span).astype(np.float32), 16


def _float_to_unit(arr: np.ndarray, path: Path, notes: list[str]) -> np.ndarray:
    """Scale a single-channel ``F`` array to ``[0, 1]`` float32."""
    if not np.isfinite(arr).all():
        raise ImageReadError(f"{path} is a float image containing NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= 0 and hi <= 1:
        notes.append("32-bit float grayscale (F) in [0, 1] converted to RGB")
        return arr.astype(np.float32)
    for top in (255.0, 65535.0):
        if lo >= 0 and hi <= top:
            notes.append(
                f"32-bit float grayscale (F) with range 0..{top:g} scaled to [0, 1] "
                "and converted to RGB"
            )
            return (arr / top).astype(np.float32)
    notes.append(
        f"32-bit float grayscale (F) with values {lo:g}..{hi:g} rescaled min–max to [0, 1] "
        "and converted to RGB"
    )
    span = hi - lo if hi > lo else 1.0
    return ((arr - lo) / span).astype(np.float32)


def _to_arrays(
    im: Image.Image, path: Path, notes: list[str]
) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Return ``(rgb H×W×3 float32 in [0,1], alpha H×W float32 or None, bit_depth)``."""
    mode = im.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        gray, depth = _integer_to_unit(np.asarray(im), mode, notes)
        return np.repeat(gray[..., None], 3, axis=2), None, depth
    if mode == "F":
        gray = _float_to_unit(np.asarray(im, dtype=np.float32), path, notes)
        return np.repeat(gray[..., None], 3, axis=2), None, 8

    if mode in {"P", "PA"}:
        has_alpha = mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
        notes.append("palette image converted to RGB")
    elif mode in {"L", "LA", "La"}:
        notes.append(f"grayscale ({mode}) converted to RGB; the mark is written in colour")
        if mode == "La":  # premultiplied alpha: PIL converts it only via LA
            im = im.convert("LA")
        im = im.convert("RGBA" if mode != "L" else "RGB")
    elif mode == "1":
        notes.append("1-bit black-and-white image converted to RGB; the mark is written in colour")
        im = im.convert("RGB")
    elif mode == "CMYK":
        notes.append("CMYK converted to RGB (naive conversion, no colour management)")
        im = im.convert("RGB")
    elif mode in {"RGBa", "RGBA"}:
        im = im.convert("RGBA")
    elif mode != "RGB":
        try:
            im = im.convert("RGB")
        except (ValueError, OSError) as err:
            raise ImageReadError(f"{path} has unsupported image mode {mode!r}: {err}") from err
        notes.append(f"{mode} image converted to RGB")

    arr = np.asarray(im, dtype=np.uint8)
    alpha = None
    if im.mode == "RGBA":
        alpha = arr[..., 3].astype(np.float32) / 255.0
        arr = arr[..., :3]
        notes.append(f"{mode}: alpha kept aside and restored on save")
    return arr.astype(np.float32) / 255.0, alpha, 8


def _decoded_down_from_16_bit(im: Image.Image) -> str | None:
    """The raw mode (``RGB;16B``, ``LA;16B``) when PIL decodes 16 bits a channel down to 8."""
    if im.mode in _SIXTEEN_BIT_MODES or im.mode in {"I", "F"}:
        return None
    for tile in getattr(im, "tile", None) or ():
        args = tile[3] if len(tile) > 3 else None
        rawmode = args[0] if isinstance(args, tuple) and args else args
        if isinstance(rawmode, str) and ";16" in rawmode:
            return rawmode
    return None


def load_image(
    path: str | os.PathLike, *, min_size: int = 64, max_pixels: int = 50_000_000
) -> LoadedImage:
    """Read one image file as a ``1×3×H×W`` float32 tensor in ``[0, 1]``.

    Args:
        path: the image file.
        min_size: smallest accepted width and height in pixels.
        max_pixels: largest accepted ``width × height`` (decompression-bomb guard,
            checked from the header before decoding).

    Returns:
        A ``LoadedImage`` whose ``notes`` list every conversion done.

    Raises:
        ImageReadError: the file is missing, a directory, empty, not an image,
            corrupt or truncated, too large or too small, or in a mode that
            cannot be converted. The message names the file and the problem.
    """
    path = Path(path)
    _check_path(path)
    notes: list[str] = []
    im = _open(path, max_pixels)
    with im:
        fmt = im.format
        n_frames = int(getattr(im, "n_frames", 1) or 1)
        if n_frames > 1:
            notes.append(f"animated image ({n_frames} frames): only the first frame is used")
            im.seek(0)
        reduced_16 = _decoded_down_from_16_bit(im)
        _decode(im, path)
        stored_mode = im.mode
        icc = im.info.get("icc_profile") or None
        if reduced_16:
            notes.append(
                f"16-bit {fmt or 'image'} reduced to 8-bit by the decoder (stored as {reduced_16})"
            )
        orientation = 1
        with contextlib.suppress(Exception):  # broken EXIF must not make an image unreadable
            orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
        if orientation != 1:
            try:
                im = ImageOps.exif_transpose(im)
            except (OSError, ValueError, SyntaxError) as err:
                raise ImageReadError(f"{path} is corrupt: EXIF orientation failed: {err}") from err
            notes.append(f"EXIF orientation applied (tag value {orientation})")
        w, h = im.size
        if min(w, h) < min_size:
            raise ImageReadError(
                f"{path} is {w}×{h} px; needs at least {min_size} px on each side"
            )
        rgb, alpha, depth = _to_arrays(im, path, notes)

    if reduced_16:
        depth = 16
    tensor = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).unsqueeze(0)
    alpha_t = None
    if alpha is not None:
        alpha_t = torch.from_numpy(np.ascontiguousarray(alpha))[None, None]
    return LoadedImage(
        tensor=tensor.contiguous().float(),
        mode=stored_mode,
        alpha=alpha_t,
        bit_depth=depth,
        format=fmt,
        notes=notes,
        path=path,
        icc_profile=icc,
    )


def output_format(path: str | os.PathLike) -> str:
    """PIL format name for an output path's extension; ``InputError`` if unknown."""
    path = Path(path)
    fmt = SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted({e.lstrip(".") for e in SAVE_FORMATS}))
        shown = path.suffix or "(none)"
        raise InputError(f"{path}: unknown output extension {shown}; use one of {known}")
    return fmt


def quantize_8bit(images: torch.Tensor) -> torch.Tensor:
    """What an 8-bit file of ``images`` (float in [0, 1]) holds, read back: clamped and
    rounded to multiples of 1/255 (as :func:`save_image` writes), same shape and dtype."""
    return (images.clamp(0, 1) * 255).round() / 255


def _to_uint8_hwc(tensor: torch.Tensor) -> np.ndarray:
    """``1×C×H×W`` float in [0,1] → ``H×W×C`` uint8 (rounded, not truncated)."""
    x = tensor.detach().to("cpu", torch.float32)[0].clamp(0, 1)
    return (x * 255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def save_image(
    tensor: torch.Tensor,
    path: str | os.PathLike,
    *,
    alpha: torch.Tensor | None = None,
    quality: int = 95,
    like: LoadedImage | None = None,
) -> list[str]:
    """Write a ``1×3×H×W`` float tensor in ``[0, 1]`` to ``path`` atomically, 8 bits a channel.

    The format comes from the extension (png, jpg/jpeg, webp, tif/tiff, bmp).
    The file is written to a hidden temporary file in the same folder and moved
    over ``path`` with ``os.replace``; on any exception the temporary file is
    removed and an existing file at ``path`` is left as it was.

    Args:
        tensor: ``1×3×H×W`` float32 in ``[0, 1]``.
        path: output file; the parent folder is created if needed.
        alpha: optional ``1×1×H×W`` (or ``H×W``) alpha in ``[0, 1]``; when ``None``
            the alpha of ``like`` is used, if any.
        quality: JPEG/WebP quality (1–100).
        like: the ``LoadedImage`` this output derives from: supplies alpha,
            ICC profile and bit depth (for the notes).

    Returns:
        Human-readable notes on what the write did to the image.

    Raises:
        InputError: unknown extension (raised before any work), bad tensor
            shape or range, alpha of the wrong size, quality out of range.
        OSError: the file system refused the write (nothing is left behind).
    """
    path = Path(path)
    fmt = output_format(path)
    if not 1 <= int(quality) <= 100:
        raise InputError(f"quality must be within 1..100, got {quality}")
    check_images(tensor)
    if tensor.shape[0] != 1:
        raise InputError(f"save_image writes one image; got a batch of {tensor.shape[0]}")
    h, w = int(tensor.shape[-2]), int(tensor.shape[-1])

    notes: list[str] = []
    from_like = alpha is None and like is not None and like.alpha is not None
    if from_like:
        alpha = like.alpha
    if alpha is not None:
        alpha = alpha.detach().to("cpu", torch.float32)
        alpha = alpha.reshape(1, 1, *alpha.shape[-2:]) if alpha.ndim in (2, 3, 4) else alpha
        if alpha.ndim != 4 or tuple(alpha.shape[-2:]) != (h, w) or alpha.shape[:2] != (1, 1):
            raise InputError(f"alpha of shape {tuple(alpha.shape)} does not match a {w}×{h} image")

    pixels = _to_uint8_hwc(tensor)
    if alpha is not None and fmt in _ALPHA_FORMATS:
        a = _to_uint8_hwc(alpha)
        image = Image.fromarray(np.concatenate([pixels, a], axis=2))
        notes.append("alpha restored")
    else:
        image = Image.fromarray(pixels)
        if alpha is not None:
            notes.append(f"alpha channel dropped: {fmt} has no transparency")

    if like is not None and like.bit_depth == 16:
        notes.append("16-bit source written as 8-bit per channel")
    options: dict[str, object] = {}
    if fmt == "JPEG":
        options.update(quality=int(quality), subsampling=0, optimize=True)
    elif fmt == "WEBP":
        options.update(quality=int(quality), method=4)
    elif fmt == "TIFF":
        options.update(compression="tiff_deflate")
    elif fmt == "PNG":
        options.update(compress_level=6)
    if fmt in _LOSSY_FORMATS:
        notes.append(
            f"{fmt} output re-compresses the image (quality {int(quality)}): "
            "this is itself an attack on the mark"
        )
    if like is not None and like.icc_profile and fmt != "BMP":
        options["icc_profile"] = like.icc_profile

    with atomic_file(path, "wb") as fh:  # honours the umask, fsyncs before the rename
        image.save(fh, format=fmt, **options)
    return notes


def iter_images(path_or_dir: str | os.PathLike, *, recursive: bool = False) -> Iterator[Path]:
    """Yield image files: the path itself if it is a file, else the folder's images, sorted.

    Args:
        path_or_dir: one file (yielded whatever its extension: the caller named
            it, so reading it reports the real problem) or a folder.
        recursive: descend into sub-folders.

    Yields:
        Paths with an image extension (``IMAGE_EXTENSIONS``, case-insensitive),
        hidden files (e.g. our own temporary files) skipped, in sorted order.

    Raises:
        ImageReadError: the path does not exist.
    """
    root = Path(path_or_dir)
    if root.is_file():
        yield root
        return
    if not root.is_dir():
        raise ImageReadError(f"{root}: no such file or folder")
    candidates = root.rglob("*") if recursive else root.iterdir()
    found = []
    for p in candidates:
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            found.append(p)
    yield from sorted(found)
