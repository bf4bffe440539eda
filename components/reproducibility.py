"""Pin what makes a torch training run differ between two runs of the same command.

Seeding every generator is not enough on a CPU: a convolution's sums are split over
torch's intra-op threads, so the rounding — and, through hundreds of adversarial
steps, the trained networks — depend on the thread count, which defaults to the
machine's cores and drops when a loaded machine's torch is started with
``OMP_NUM_THREADS``. :func:`pinned` fixes the three things a run needs (measured
for ``output_mark``: ``components/methods/output_mark/MODEL_CARD.md``):

* torch's global generator (network inits that are not given a generator),
* the intra-op thread count,
* deterministic algorithms (``torch.use_deterministic_algorithms``, warn-only, so an op
  with no deterministic kernel warns instead of failing; cuDNN benchmarking off and
  ``CUBLAS_WORKSPACE_CONFIG`` set for CUDA),

and puts all three back afterwards, so the caller's process is left as it was.
What it cannot pin: the CPU's instruction set (oneDNN picks AVX2 / AVX-512 kernels by
machine; ``ONEDNN_MAX_CPU_ISA`` caps it before torch starts) and the torch build.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from neuralmark.components.errors import InputError


@contextlib.contextmanager
def pinned(seed: int, threads: int = 1, deterministic: bool = True) -> Iterator[None]:
    """Inside the block: torch seeded with ``seed``, ``threads`` intra-op threads,
    deterministic algorithms; the previous settings come back on exit.

    Args:
        seed: seeds torch's global generator (CPU and CUDA).
        threads: intra-op threads; 0 leaves torch's count as it is.
        deterministic: turn on ``torch.use_deterministic_algorithms`` (warn-only).

    Raises:
        InputError: a negative thread count.
    """
    if threads < 0:
        raise InputError(f"threads must be >= 0 (0: leave torch's count), got {threads}")
    before_threads = torch.get_num_threads()
    before_det = torch.are_deterministic_algorithms_enabled()
    before_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    before_bench = torch.backends.cudnn.benchmark
    rng = torch.get_rng_state()
    try:
        if threads:
            torch.set_num_threads(threads)
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        torch.manual_seed(seed)
        yield
    finally:
        torch.set_num_threads(before_threads)
        torch.use_deterministic_algorithms(before_det, warn_only=before_warn)
        torch.backends.cudnn.benchmark = before_bench
        torch.set_rng_state(rng)


__all__ = ["pinned"]
