"""Resolve ``requirements/kubeflow.in`` and write every version to ``requirements/kubeflow.txt``.

Run it with any Python 3.11 (the one the environment is for)::

    python scripts/lock_kubeflow.py

It asks pip for a dry-run resolution in a throwaway virtual environment (``--report``), so
nothing is installed, and writes the pins atomically. ``make kfp-venv`` installs the result.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "requirements" / "kubeflow.in"
LOCK = ROOT / "requirements" / "kubeflow.txt"


def resolve(source: Path) -> list[tuple[str, str]]:
    """``(name, version)`` of every package pip would install for ``source``, sorted."""
    with tempfile.TemporaryDirectory() as tmp:
        env = Path(tmp) / "venv"
        venv.create(env, with_pip=True)
        report = Path(tmp) / "report.json"
        subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "-q", "--dry-run",
                        "--ignore-installed", "--report", str(report), "-r", str(source)],
                       check=True)
        installed = json.loads(report.read_text())["install"]
    return sorted(((i["metadata"]["name"], i["metadata"]["version"]) for i in installed),
                  key=lambda p: p[0].lower())


def main() -> int:
    pins = resolve(SOURCE)
    header = (f"# {LOCK.relative_to(ROOT)}: requirements/kubeflow.in resolved by pip "
              f"(python scripts/lock_kubeflow.py,\n# Python {sys.version_info.major}."
              f"{sys.version_info.minor}, Linux x86_64). Installed by `make kfp-venv`.\n")
    tmp = LOCK.with_suffix(".txt.tmp")
    tmp.write_text(header + "".join(f"{name}=={version}\n" for name, version in pins))
    tmp.replace(LOCK)
    print(f"{LOCK}: {len(pins)} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
