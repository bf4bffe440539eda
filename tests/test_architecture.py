"""The house of ../shared/DESIGN.md, checked: one role per package, imports flow one way.

    cli/ (4) → pipelines/ (3) → steps/ (2) → integrations/, runtime/ (1) → components/ (0)

A module may import its own layer and the layers below it, never one above, not even
lazily inside a function; no module imports the layers by their repository names
(``components``, ``steps``): they install as ``neuralmark.<layer>``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"zenml", "mlflow", "dvc", "great_expectations", "kubernetes"}
RANK = {"components": 0, "integrations": 1, "runtime": 1, "steps": 2, "pipelines": 3, "cli": 4}


def _modules() -> dict[str, Path]:
    """``neuralmark.<layer>.<...>`` → file, for every module of every layer."""
    out = {}
    for layer in RANK:
        for path in sorted((ROOT / layer).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(("neuralmark", *parts)).removesuffix(".__init__")
            out[name] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every absolute import in ``path`` (module level and inside functions): (line, name)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "neuralmark" and parts[1] in RANK else None


def test_every_layer_is_a_package():
    for layer in RANK:
        assert (ROOT / layer / "__init__.py").is_file(), f"{layer}/ is not a package"


def test_components_import_no_mlops_package():
    offenders = [f"{path.relative_to(ROOT)}:{line}: {name}"
                 for module, path in MODULES.items() if _layer(module) == "components"
                 for line, name in _imports(path) if name.split(".")[0] in FORBIDDEN]
    assert not offenders, "components/ must stay free of MLOps packages:\n" + "\n".join(offenders)


def test_imports_flow_one_way():
    upward = []
    for module, path in MODULES.items():
        here = _layer(module)
        for line, name in _imports(path):
            there = _layer(name)
            if there is not None and RANK[there] > RANK[here]:
                upward.append(f"{path.relative_to(ROOT)}:{line}: {here} imports {name}")
    assert not upward, "imports must flow down the layers (DESIGN.md):\n" + "\n".join(upward)


def test_layers_are_imported_by_their_installed_names():
    bare = [f"{path.relative_to(ROOT)}:{line}: {name}"
            for path in [*MODULES.values(), *(ROOT / "tests").rglob("*.py"),
                         *(ROOT / "scripts").rglob("*.py")]
            for line, name in _imports(path) if name.split(".")[0] in RANK]
    assert not bare, "import the layers as neuralmark.<layer>:\n" + "\n".join(bare)


def test_no_import_cycles():
    """No two modules import each other, directly or through others (lazy imports count).

    A module importing its own package (``neuralmark.components.methods`` from
    ``...methods.registry``, to discover the methods) is not a cycle worth naming.
    """
    graph = {m: {d for _, d in _imports(p) if d in MODULES and d != m
                 and not m.startswith(d + ".")} for m, p in MODULES.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def _decorator_names(node: ast.FunctionDef) -> set[str]:
    names = set()
    for deco in node.decorator_list:
        target = deco.func if isinstance(deco, ast.Call) else deco
        names.add(target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", ""))
    return names


def test_steps_hold_only_steps():
    """``steps/`` is ZenML ``@step`` functions only: no helpers, classes or loops of science."""
    others = []
    for path in sorted((ROOT / "steps").glob("*.py")):
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        has_step = False
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if "step" in _decorator_names(node):
                    has_step = True
                else:
                    others.append(f"steps/{path.name}:{node.lineno}: def {node.name} is not a step")
            elif isinstance(node, ast.ClassDef):
                others.append(f"steps/{path.name}:{node.lineno}: class {node.name}")
        if not has_step:
            others.append(f"steps/{path.name}: defines no @step")
    assert not others, "move these to integrations/ or components/:\n" + "\n".join(others)


def _run(code: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=cwd, env=env, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


def test_importing_every_component_loads_no_mlops_module(tmp_path):
    code = (
        "import importlib, pkgutil, sys, neuralmark.components as pkg\n"
        "for m in pkgutil.walk_packages(pkg.__path__, 'neuralmark.components.'):\n"
        "    importlib.import_module(m.name)\n"
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {sorted(FORBIDDEN)!r})\n"
        "print(','.join(bad))\n"
    )
    assert _run(code, tmp_path) == "", "components loaded MLOps modules"


@pytest.mark.parametrize("layer", ["integrations", "runtime", "steps"])
def test_importing_a_layer_needs_no_stack(tmp_path, layer):
    """Importing integrations, runtime or steps looks nothing up in a ZenML store."""
    code = (
        "import os\n"
        f"os.environ['ZENML_CONFIG_PATH'] = {str(tmp_path / 'zen')!r}\n"
        "os.environ['ZENML_ANALYTICS_OPT_IN'] = 'false'\n"
        f"import importlib, pkgutil, neuralmark.{layer} as pkg\n"
        f"for m in pkgutil.walk_packages(pkg.__path__, 'neuralmark.{layer}.'):\n"
        "    importlib.import_module(m.name)\n"
        "print('ok')\n"
    )
    assert _run(code, tmp_path, env={"PATH": "/usr/bin:/bin"}).endswith("ok")
    assert not (tmp_path / "zen").exists() or not any((tmp_path / "zen").rglob("*.db"))
