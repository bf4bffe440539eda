"""How fast the ``neuralmark`` command starts and answers: wall time of fresh processes.

Each figure is the median (and range) of ``--runs`` runs of one command in a new
process, as a user would type it:

* ``python -c "import torch"`` — the floor every torch command pays;
* ``neuralmark --help``;
* ``neuralmark verify`` of one 256² photo (shipped ``pgd_signer``);
* ``neuralmark scan`` of one 256² photo (shipped ``anti_forward``);
* ``neuralmark scan`` and ``neuralmark verify`` of a folder of 18 photos.

The photos are 256² crops of photographs shipped with scikit-image, written to a
temporary folder. Exit codes 0 and 1 are both answers (detected / not detected);
any other exit code stops the benchmark. Prints a Markdown table and the machine it
ran on (CPU, cores, load average: the figures depend on what else runs).

Usage::

    python scripts/benchmark_cli.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: scikit-image photographs the crops come from (3 crops of 256² each: 18 photos)
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")
SIDE = 256


def neuralmark_command() -> list[str]:
    """The installed ``neuralmark`` script beside this interpreter, else ``-m``."""
    script = Path(sys.executable).with_name("neuralmark")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "neuralmark.cli.app"]


def write_photos(folder: Path) -> list[Path]:
    """18 RGB 256² PNG crops (3 per photograph, corners and centre) in ``folder``."""
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in PHOTOS:
        image = getattr(data, name)()
        h, w = image.shape[:2]
        for i, (y, x) in enumerate([(0, 0), ((h - SIDE) // 2, (w - SIDE) // 2),
                                    (h - SIDE, w - SIDE)]):
            path = folder / f"{name}_{i}.png"
            Image.fromarray(image[y:y + SIDE, x:x + SIDE]).save(path)
            paths.append(path)
    return paths


def time_command(argv: list[str], runs: int, cwd: Path) -> list[float]:
    """Wall seconds of ``runs`` runs of ``argv`` (output discarded).

    Raises:
        RuntimeError: an exit code other than 0 or 1, with the command's stderr.
    """
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - start)
        if done.returncode not in (0, 1):
            raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr}")
    return times


def machine() -> str:
    """CPU model, cores and the load average now."""
    model = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{model}, {os.cpu_count()} cores, load average {load}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per command (median)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    tmp = Path(tempfile.mkdtemp(prefix="nm-bench-cli-"))
    try:
        photos = write_photos(tmp / "photos")
        nm = neuralmark_command()
        cases = [
            ('python -c "import torch"', [sys.executable, "-c", "import torch"]),
            ("neuralmark --help", [*nm, "--help"]),
            ("neuralmark verify (1 photo, pgd_signer)",
             [*nm, "verify", str(photos[0]), "--key", "bench"]),
            ("neuralmark scan (1 photo, anti_forward)", [*nm, "scan", str(photos[0])]),
            (f"neuralmark scan (folder of {len(photos)} photos)",
             [*nm, "scan", str(tmp / "photos")]),
            (f"neuralmark verify (folder of {len(photos)} photos)",
             [*nm, "verify", str(tmp / "photos"), "--key", "bench"]),
        ]
        print(f"machine: {machine()}")
        print(f"python {platform.python_version()}, {args.runs} runs per command, wall time\n")
        print("| command | median s | min s | max s |")
        print("|---|---|---|---|")
        for label, command in cases:
            times = time_command(command, args.runs, tmp)
            print(f"| {label} | {statistics.median(times):.2f} | {min(times):.2f} | "
                  f"{max(times):.2f} |", flush=True)
        print(f"\nafter: load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
