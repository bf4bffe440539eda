"""What a figure depends on besides the code and the data: the float path it was computed on.

torch is bitwise deterministic run to run on one machine (same kernel path, same thread
count, :mod:`neuralmark.components.reproducibility`), but not across machines: the CPU
kernel path torch picks at start (AVX2, AVX-512, ``default``; pinnable with
``ATEN_CPU_CAPABILITY``; oneDNN's kernels with ``ONEDNN_MAX_CPU_ISA``), the CPU, the torch
build and the thread count all change the rounding, and through hundreds of training steps
the figures. :func:`environment` names them, so a run can record them beside its figures.

Example::

    >>> env = environment()
    >>> sorted(env)[:3]
    ['cpu', 'cpu_capability', 'python']
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

#: Environment variables that change a float path when set; recorded only when set.
FLOAT_PATH_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS",
                        "CUBLAS_WORKSPACE_CONFIG")


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name: the first ``model name`` of ``cpuinfo``, else
    :func:`platform.processor`, else ``"unknown"``."""
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    return platform.processor() or "unknown"


def environment() -> dict[str, str]:
    """The float path of this process, as strings (ready for MLflow tags or JSON).

    Returns:
        ``torch`` (version), ``cpu_capability`` (the kernel path torch picked, e.g.
        ``AVX2``), ``cpu`` (model name), ``python`` (version), ``threads`` (torch's
        intra-op threads now), ``cuda`` (device 0's name, only when CUDA is available),
        and each of :data:`FLOAT_PATH_VARIABLES` that is set, under its own name.
    """
    env = {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "threads": str(torch.get_num_threads()),
    }
    if torch.cuda.is_available():
        env["cuda"] = torch.cuda.get_device_name(0)
    env.update({name: os.environ[name] for name in FLOAT_PATH_VARIABLES if name in os.environ})
    return env
