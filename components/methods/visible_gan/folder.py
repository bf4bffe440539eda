"""Brand a folder of images with a visible mark: resumable, atomic per file (Python API).

``brand_folder(method, src, dst)`` stamps every image of ``src`` into ``dst`` (relative
paths kept) with a ``VisibleGan``. Each output is written atomically (temporary file +
rename), so an interrupted run leaves only whole files; a rerun skips the outputs that
exist. The method that branded ``dst`` (its mark, calibration, settings) is saved as a
bundle in ``dst/.neuralmark-brand/``: a rerun with another mark or other settings is
refused (it would mix two marks in one folder), and ``verify`` can load that bundle to check
the images against the very mark they carry.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from neuralmark.components.errors import InputError
from neuralmark.components.imageio import iter_images, load_image, output_format, save_image

#: hidden folder (skipped by ``iter_images``) holding the bundle that branded the folder
STATE_DIR = ".neuralmark-brand"


@dataclass
class BrandReport:
    """What ``brand_folder`` did.

    Attributes:
        branded: outputs written by this run.
        skipped: outputs that already existed (done by an earlier run).
        unreadable: ``(input, reason)`` of every file that could not be branded.
        sizes: distinct ``(width, height)`` of the inputs read.
        notes: conversions and remarks for the user (mixed sizes, mark scaling).
    """

    branded: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    sizes: set[tuple[int, int]] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every input was branded (now or by an earlier run)."""
        return not self.unreadable


def check_folders(src: Path, dst: Path) -> None:
    """Refuse a missing input folder, a file as output, and an output inside the input.

    Raises:
        InputError: naming the problem.
    """
    if not src.exists():
        raise InputError(f"{src}: no such folder")
    if not src.is_dir():
        raise InputError(f"{src} is a file; brand a folder (IN) into another folder (OUT)")
    if dst.exists() and not dst.is_dir():
        raise InputError(f"OUT {dst} is a file; it must be a folder")
    s, d = src.resolve(), dst.resolve()
    if d == s:
        raise InputError(f"OUT is IN ({src}); write the branded copies to another folder")
    if s in d.parents:
        raise InputError(f"OUT {dst} is inside IN {src}: a rerun would brand the branded "
                         "copies; choose a folder outside IN")


def _same_method(a: Any, b: Any) -> bool:
    if a.config != b.config:
        return False
    for name in ("W", "mark"):
        sa, sb = a.modules()[name].state_dict(), b.modules()[name].state_dict()
        if any(not torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa):
            return False
    return True


def claim_output(method: Any, dst: Path) -> bool:
    """Save ``method`` as ``dst/.neuralmark-brand`` or check it matches the saved one.

    Returns:
        ``True`` when ``dst`` was branded before by the same method (a resumed run).

    Raises:
        InputError: ``dst`` was branded with another mark, model or settings.
    """
    from neuralmark.components.methods.registry import is_bundle, load_bundle

    state = dst / STATE_DIR
    if is_bundle(state):
        before = load_bundle(state)
        if not _same_method(before, method):
            raise InputError(f"{dst} was branded with another mark, model or settings "
                             f"(saved in {state}); brand into another folder, or delete "
                             f"{dst} to start again")
        return True
    dst.mkdir(parents=True, exist_ok=True)
    method.to_bundle(state)
    return False


def brand_folder(method: Any, src: str | os.PathLike, dst: str | os.PathLike, *,
                 recursive: bool = False, quality: int = 95,
                 mark_size: tuple[int, int] | None = None,
                 on_file: Callable[[Path, str, str], None] | None = None) -> BrandReport:
    """Stamp every image of ``src`` into ``dst`` with ``method`` (a ``VisibleGan``).

    Args:
        method: the stamper (its mark, blend and scale are used).
        src: input folder.
        dst: output folder (created; never inside ``src``).
        recursive: descend into sub-folders of ``src``.
        quality: JPEG / WebP quality of the outputs.
        mark_size: ``(width, height)`` of the mark file, to report marks larger than images.
        on_file: called after each file with ``(input, status, message)``; status is
            ``branded``, ``skipped`` or ``unreadable``.

    Returns:
        The ``BrandReport``.

    Raises:
        InputError: bad folders (``check_folders``), an empty input folder, or an output
            folder branded with another mark (``claim_output``).
    """
    src, dst = Path(src), Path(dst)
    check_folders(src, dst)
    files = list(iter_images(src, recursive=recursive))
    if not files:
        raise InputError(f"{src} holds no image files")
    report = BrandReport()
    if claim_output(method, dst):
        report.notes.append(f"resuming: {dst} was branded with the same mark and settings; "
                            "existing outputs are kept")
    larger = 0
    for path in files:
        out = dst / path.relative_to(src)
        try:
            output_format(out)
        except InputError:  # readable but not writable (e.g. gif): write PNG
            out = out.with_suffix(".png")
        if out.exists():
            report.skipped.append(out)
            _call(on_file, path, "skipped", f"{out} exists")
            continue
        try:
            loaded = load_image(path, min_size=method.min_size)
            marked = method.embed(loaded.tensor.to(method.device)).cpu()
            save_image(marked, out, quality=quality, like=loaded)
        except InputError as error:
            report.unreadable.append((path, str(error)))
            _call(on_file, path, "unreadable", str(error))
            continue
        w, h = loaded.size
        report.sizes.add((w, h))
        if mark_size is not None and (mark_size[0] > w or mark_size[1] > h):
            larger += 1
        report.branded.append(out)
        _call(on_file, path, "branded", "; ".join(loaded.notes))
    scale = method.config.mark_scale
    if len(report.sizes) > 1:
        report.notes.append(f"images of {len(report.sizes)} different sizes: the mark was "
                            f"scaled to {scale:.0%} of each image's short side")
    if larger:
        report.notes.append(f"the mark ({mark_size[0]}×{mark_size[1]} px) is larger than "
                            f"{larger} image(s): it was scaled down to {scale:.0%} of their "
                            "short side")
    return report


def _call(fn: Callable[[Path, str, str], None] | None, path: Path, status: str,
          message: str) -> None:
    if fn is not None:
        fn(path, status, message)
