"""Run a module of this checkout in the Kubeflow environment (``.venv-kfp``), for the tests
that compile or submit offline (``test_kfp_spec``, ``test_cron_spec``).

Which code runs: ``.venv-kfp`` has the project installed in editable mode, pointing at the
checkout that built it (a worktree sharing another checkout's ``.venv-kfp`` would run
*that* checkout's code). The subprocess therefore gets ``PYTHONPATH`` = a folder whose
``neuralmark`` links to this checkout's root: Python's path finder, which runs before the
editable finder, imports ``neuralmark.*`` from here. ``run_module`` asserts it did.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KFP_PYTHON = ROOT / ".venv-kfp" / "bin" / "python"


def run_module(module: str, args: list[str], folder: Path) -> subprocess.CompletedProcess:
    """``module.main(args)`` (its command line) in ``.venv-kfp`` from this checkout (links
    made in ``folder``); fails the test when the environment is missing or the command
    fails."""
    if not KFP_PYTHON.is_file():
        pytest.fail(f"{KFP_PYTHON} is missing: run `make kfp-venv` (make test builds it)")
    (folder / "neuralmark").symlink_to(ROOT, target_is_directory=True)
    env = {**os.environ, "ZENML_ANALYTICS_OPT_IN": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
           "DVC_NO_ANALYTICS": "1", "ZENML_LOGGING_VERBOSITY": "WARN",
           "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}
    env.pop("ZENML_CONFIG_PATH", None)
    code = (f"import sys, {module} as m; print('module:', m.__file__, flush=True); "
            "sys.exit(m.main(sys.argv[1:]))")
    proc = subprocess.run([str(KFP_PYTHON), "-c", code, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ran = next(line.split(": ", 1)[1] for line in proc.stdout.splitlines()
               if line.startswith("module: "))
    assert Path(ran).resolve().is_relative_to(ROOT.resolve()), f"{module} ran from {ran}"
    return proc
