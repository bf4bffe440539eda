"""Speed and memory of ``embed`` / ``verify``: milliseconds per image against batch size
and against resolution, and the peak memory of one call.

Milliseconds are wall time per image, the median of ``repeats`` calls (``verify`` is warmed
up once; ``embed`` is not, its first call is what a user waits for). On a shared machine
wall time includes other processes' turns: compare figures of one run.

Peak memory of a call, in MiB above what the process held before it:

- CUDA: ``torch.cuda.max_memory_allocated`` (after ``reset_peak_memory_stats``);
- Linux: the growth of the resident-set high-water mark (``VmHWM``, reset through
  ``/proc/self/clear_refs``), which counts torch, numpy, OpenCV and ONNX alike;
- elsewhere: ``tracemalloc``'s peak (Python and numpy allocations only).
"""

from __future__ import annotations

import statistics
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from neuralmark.components.methods.base import WatermarkKey

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in {_STATUS}")


def peak_memory(fn: Callable[[], Any], device: torch.device | str = "cpu"
                ) -> tuple[Any, float, str]:
    """Run ``fn()``; return (its result, peak MiB above the start, how it was measured)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, (torch.cuda.max_memory_allocated(device) - start) / 2**20, \
            "torch.cuda.max_memory_allocated"
    try:
        _CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS
        start = _status_kib("VmRSS")
    except OSError:
        tracemalloc.start()
        try:
            result = fn()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return result, peak / 2**20, "tracemalloc peak (Python/numpy allocations)"
    result = fn()
    return result, max(0, _status_kib("VmHWM") - start) / 1024, "peak RSS growth (VmHWM)"


def _timed(fn: Callable[[], Any], n_images: int, repeats: int) -> tuple[Any, float]:
    """(the first call's result, median ms per image over ``repeats`` calls)."""
    times, result = [], None
    for i in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        result = out if i == 0 else result
    return result, statistics.median(times) / n_images * 1000


def _batch(images: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` images, cycling through ``images`` when it holds fewer."""
    idx = torch.arange(n) % images.shape[0]
    return images[idx]


def timing_rows(method: Any, images: torch.Tensor, key: WatermarkKey, *,
                batch_sizes: Sequence[int], resolutions: Sequence[int], repeats: int = 1,
                base: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows ``embed_ms`` / ``verify_ms`` per batch size (at the images' size) and per
    resolution (batch 1), and ``peak_mem_mb`` of embed and verify per resolution.

    A resolution the method refuses (too small, a peer's limit) is a row saying so.

    Args:
        method: a content method.
        images: N×3×S×S clean photos in [0, 1].
        key: the key to embed with.
        batch_sizes: batch sizes to time at size S.
        resolutions: sides to time at batch 1 (the first photo, resized).
        repeats: calls per measurement (median).
        base: ``method`` / ``family`` cells of every row.
    """
    device = getattr(method, "device", torch.device("cpu"))
    rows: list[dict[str, Any]] = []

    def add(attack: str, strength: float, metric: str, value: float | None, n: int,
            note: str = "") -> None:
        rows.append({**base, "attack": attack, "strength": float(strength),
                     "label": f"{attack}_{strength}", "metric": metric,
                     "value": value, "n": n, "note": note})

    side = images.shape[-1]
    for b in batch_sizes:
        x = _batch(images, b).to(device)
        marked, ms = _timed(lambda x=x: method.embed(x, key).detach(), b, repeats)
        add("timing_batch", b, "embed_ms", ms, b, f"{side}² px")
        method.verify(marked, key)  # warm-up
        _, ms = _timed(lambda m=marked: method.verify(m, key), b, repeats)
        add("timing_batch", b, "verify_ms", ms, b, f"{side}² px")
    for res in resolutions:
        x = F.interpolate(images[:1], size=(res, res), mode="bilinear", align_corners=False,
                          antialias=res < side).clamp(0, 1).to(device)
        try:
            (marked, ms), mem, how = peak_memory(
                lambda x=x: _timed(lambda: method.embed(x, key).detach(), 1, repeats), device)
        except (ValueError, RuntimeError) as err:  # InputError is a ValueError
            for metric in ("embed_ms", "verify_ms", "peak_mem_mb"):
                add("timing_resolution", res, metric, None, 0, f"cannot run: {err}")
            continue
        add("timing_resolution", res, "embed_ms", ms, 1)
        add("timing_resolution", res, "peak_mem_mb", mem, 1, f"embed; {how}")
        method.verify(marked, key)  # warm-up
        (_, ms), mem, how = peak_memory(
            lambda m=marked: _timed(lambda: method.verify(m, key), 1, repeats), device)
        add("timing_resolution", res, "verify_ms", ms, 1)
        add("timing_resolution", res, "peak_mem_mb_verify", mem, 1, f"verify; {how}")
    return rows
