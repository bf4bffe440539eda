"""A non-editable install: one top-level name, the shipped weights inside, embed/verify work.

The wheel is built from a copy of the tracked files (nothing is written into the checkout),
installed into a fresh virtual environment that borrows the test environment's third-party
packages, and used from a folder outside the repository, as a user of ``pip install
neuralmark`` would.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("components", "integrations", "runtime", "steps", "pipelines", "cli")


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None,
         check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                         text=True, check=False)
    if check:
        assert out.returncode == 0, f"{args} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``pip wheel`` of the tracked files, built outside the checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    tracked = _run("git", "ls-files", "-z", cwd=ROOT).stdout.split("\0")
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", tmp / "dist", src, cwd=tmp)
    (built,) = (tmp / "dist").glob("neuralmark-*.whl")
    return built


def test_wheel_installs_everything_under_neuralmark(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"neuralmark", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1]
                    + ".dist-info"}, tops
    for layer in LAYERS:
        assert f"neuralmark/{layer}/__init__.py" in names, f"{layer} missing from the wheel"
    for method in ("pgd_signer", "anti_forward", "visible_gan", "output_mark"):
        for part in ("config.json", "weights.safetensors", "MODEL_CARD.md"):
            assert f"neuralmark/components/pretrained/{method}/{part}" in names
    assert not any(n.startswith("neuralmark/tests/") or n.endswith(".pyc") for n in names)


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed; third-party packages come from this env."""
    venv = tmp_path_factory.mktemp("venv")
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=venv)
    site = next(venv.glob("lib/python3*/site-packages"))
    # the test env's site-packages as a plain path entry: its .pth files (the editable
    # install of this checkout among them) are not executed, so only the wheel is importable
    (site / "_borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--no-deps", wheel,
         cwd=venv)
    return venv


def test_installed_wheel_shadows_no_generic_package(installed, tmp_path):
    code = ("import importlib.util, json, neuralmark.components as c\n"
            f"bare = [n for n in {LAYERS!r} if importlib.util.find_spec(n) is not None]\n"
            "print(json.dumps({'file': c.__path__[0], 'bare': bare}))")
    out = json.loads(_run(installed / "bin" / "python", "-c", code, cwd=tmp_path).stdout)
    assert Path(out["file"]).is_relative_to(installed), out
    assert out["bare"] == [], f"a bare top-level package is importable: {out['bare']}"


def test_installed_cli_embeds_and_verifies_with_the_shipped_weights(installed, tmp_path,
                                                                    photo):
    src, dst = tmp_path / "photo.png", tmp_path / "photo.signed.png"
    Image.fromarray(photo[0:256, 128:384]).save(src)
    cli = installed / "bin" / "neuralmark"
    listing = _run(cli, "list", cwd=tmp_path).stdout
    assert "pgd_signer" in listing and "yes" in listing
    _run(cli, "embed", "--key", "owner secret", "--message", "3", src, dst, cwd=tmp_path)
    found = _run(cli, "verify", "--json", "--key", "owner secret", "--message", "3", dst,
                 cwd=tmp_path, check=False)
    verdict = json.loads(found.stdout.strip().splitlines()[-1])
    assert found.returncode == 0 and verdict["detected"] and verdict["payload"] == 3, verdict
    clean = _run(cli, "verify", "--json", "--key", "owner secret", src, cwd=tmp_path,
                 check=False)
    assert clean.returncode == 1 and not json.loads(clean.stdout.strip())["detected"]
