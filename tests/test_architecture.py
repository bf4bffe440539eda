"""The layering rules of DESIGN.md, checked."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"zenml", "mlflow", "dvc", "great_expectations", "kubernetes"}


def test_components_import_no_mlops_package():
    offenders = []
    for path in sorted((ROOT / "components").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names
                          if n.split(".")[0] in FORBIDDEN]
    assert not offenders, "components/ must stay free of MLOps packages:\n" + "\n".join(offenders)


def test_importing_every_component_loads_no_mlops_module():
    code = (
        "import importlib, pkgutil, sys, components\n"
        "for m in pkgutil.walk_packages(components.__path__, 'components.'):\n"
        "    importlib.import_module(m.name)\n"
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {sorted(FORBIDDEN)!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert out.stdout.strip() == "", f"modules loaded: {out.stdout.strip()}"


def test_importing_steps_needs_no_stack(tmp_path):
    env_code = (
        "import os\n"
        f"os.environ['ZENML_CONFIG_PATH'] = {str(tmp_path)!r}\n"
        "os.environ['ZENML_ANALYTICS_OPT_IN'] = 'false'\n"
        "import importlib, pkgutil, steps\n"
        "for m in pkgutil.walk_packages(steps.__path__, 'steps.'):\n"
        "    importlib.import_module(m.name)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", env_code], capture_output=True, text=True,
                         cwd=tmp_path, env={"PATH": "/usr/bin:/bin",
                                            "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")
