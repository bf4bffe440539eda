"""A registered verifier behind a real ``mlflow models serve`` on loopback.

The server is started as a user would (``--env-manager local``, the registry given by
``MLFLOW_TRACKING_URI``), waited for on ``/ping`` and killed afterwards. Every request
shape MLflow's scoring server accepts must be answered with the verdict the bundle gives
in-process, and every request neuralmark cannot read must be refused with HTTP 400 and a
message naming the problem. The README's serving examples are sent as they are written.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from neuralmark.components.methods.base import WatermarkKey
from neuralmark.components.methods.registry import load_bundle
from neuralmark.components.serving import verify_file

README = Path(__file__).resolve().parents[1] / "README.md"
FORMATS = ("inputs", "instances", "dataframe_records", "dataframe_split")
START_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _uvicorn_dir() -> Path:
    """Where ``uvicorn``'s command is installed: ``mlflow models serve`` runs it by name."""
    script = next(f for f in metadata.distribution("uvicorn").files or ()
                  if f.name == "uvicorn" and "bin" in f.parts)
    return Path(script.locate()).resolve().parent


def _post(url: str, body: str, content_type: str = "application/json") -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body.encode(), method="POST",
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw)
    except json.JSONDecodeError:
        return status, raw.decode(errors="replace")


@pytest.fixture(scope="module")
def serve_dir(tmp_path_factory, photo) -> Path:
    """The server's working directory: ``photos/a.png`` (a real photo), ``photos/b.png``
    (the same file cut short)."""
    root = tmp_path_factory.mktemp("serve")
    (root / "photos").mkdir()
    Image.fromarray(photo[100:228, 150:278]).save(root / "photos" / "a.png")
    (root / "photos" / "b.png").write_bytes((root / "photos" / "a.png").read_bytes()[:300])
    return root


@pytest.fixture(scope="module")
def server(registered_models, serve_dir) -> Iterator[str]:
    """``mlflow models serve -m models:/neuralmark-pgd_signer@champion`` on a free port."""
    port = _free_port()
    # as in an activated project environment: uvicorn on PATH, the registry from the env
    env = {**os.environ, "MLFLOW_TRACKING_URI": registered_models.uri,
           "PATH": os.pathsep.join([str(_uvicorn_dir()), os.environ.get("PATH", "")])}
    env.pop("MLFLOW_REGISTRY_URI", None)
    log = serve_dir / "server.log"
    cmd = [sys.executable, "-m", "mlflow", "models", "serve",
           "-m", registered_models.champion_uri("pgd_signer"), "--env-manager", "local",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=serve_dir, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow models serve exited {proc.returncode}:\n"
                            f"{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"no /ping answer in {START_TIMEOUT_S} s:\n"
                            f"{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:  # the server and the uvicorn it started share its group
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)


@pytest.fixture(scope="module")
def method(registered_models):
    """The served bundle, loaded in this process: the oracle for every answer."""
    champion = registered_models.version_uri("pgd_signer")
    return load_bundle(registered_models.bundles[champion], device="cpu")


def _rows_of(request: dict[str, Any]) -> list[tuple[str, str | None, int | None]]:
    """(path, secret, message) per image, read from a request the way a person reads it."""
    (fmt, data), = request.items()
    if fmt == "dataframe_split":
        rows = [dict(zip(data["columns"], values, strict=True)) for values in data["data"]]
    elif isinstance(data, dict):  # columns
        paths = data.get("paths", data.get("path"))
        paths = [paths] if isinstance(paths, str) else paths
        rows = []
        for i, path in enumerate(paths):
            row = {"path": path}
            for name in ("secret", "message"):
                value = data.get(name)
                row[name] = value[i] if isinstance(value, list) else value
            rows.append(row)
    else:
        rows = data
    return [(r["path"], r.get("secret"), r.get("message")) for r in rows]


def _expected(method, serve_dir: Path, request: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"path": path, **verify_file(method, serve_dir / path,
                                         WatermarkKey(secret, message)).to_dict()}
            for path, secret, message in _rows_of(request)]


def _same(answer: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert [a["path"] for a in answer] == [e["path"] for e in expected]
    for a, e in zip(answer, expected, strict=True):
        assert a.keys() == e.keys()
        assert {k: a[k] for k in ("status", "detected", "bits", "payload")} == \
               {k: e[k] for k in ("status", "detected", "bits", "payload")}
        assert a["score"] == pytest.approx(e["score"], abs=1e-6)
        assert (a["p_value"] is None) == (e["p_value"] is None)
        if e["p_value"] is not None:
            assert a["p_value"] == pytest.approx(e["p_value"], rel=1e-6)


def _readme_examples() -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """(request, the answer shown right after it or None) for each request in "## Serving"."""
    section = README.read_text().split("\n## Serving\n", 1)[1].split("\n## ", 1)[0]
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", section, re.S)]
    examples = []
    for i, block in enumerate(blocks):
        if next(iter(block)) in FORMATS:
            following = blocks[i + 1] if i + 1 < len(blocks) else None
            shown = following if following and next(iter(following)) not in FORMATS else None
            examples.append((block, shown))
    return examples


# -- tests --------------------------------------------------------------------------------------


def test_readme_requests_get_the_answers_shown(server, method, serve_dir):
    examples = _readme_examples()
    assert {next(iter(r)) for r, _ in examples} == set(FORMATS)
    for request, shown in examples:
        status, answer = _post(f"{server}/invocations", json.dumps(request))
        if shown is not None and "error_code" in shown:
            assert status == 400 and answer["error_code"] == shown["error_code"], answer
            assert shown["message"].split("Error: ", 1)[1] in answer["message"]
            continue
        assert status == 200, answer
        _same(answer["predictions"], _expected(method, serve_dir, request))
        if shown is not None:
            rows = answer["predictions"]
            assert [r.keys() for r in rows] == [r.keys() for r in shown["predictions"]]
            assert [r["status"] for r in rows] == [r["status"] for r in shown["predictions"]]
            assert [r["reason"] for r in rows][1:] == [r["reason"] for r in
                                                       shown["predictions"]][1:]


def test_every_input_shape_is_answered_per_image(server, method, serve_dir):
    a, b = "photos/a.png", "photos/b.png"
    requests = [
        {"inputs": {"path": a, "secret": "owner"}},                       # 0-d arrays only
        {"inputs": {"paths": [a, b, a], "secret": ["owner", "owner", "other"],
                    "message": [5, 5, 6]}},
        {"inputs": [{"path": a, "secret": "owner", "message": 5}, {"path": b, "secret": "o"}]},
        {"instances": [{"path": a, "secret": "owner", "message": 5},
                       {"path": b, "secret": "owner", "message": 5}]},
        {"dataframe_records": [{"path": a, "secret": "owner", "message": 5},
                               {"path": b, "secret": "owner"}]},
        {"dataframe_split": {"columns": ["path", "secret", "message"],
                             "data": [[a, "owner", 5], [a, "owner", None]]}},
    ]
    for request in requests:
        status, answer = _post(f"{server}/invocations", json.dumps(request))
        assert status == 200, (request, answer)
        _same(answer["predictions"], _expected(method, serve_dir, request))
    status, answer = _post(f"{server}/invocations", f"path,secret,message\n{a},owner,5\n",
                           content_type="text/csv")
    assert status == 200, answer
    _same(answer["predictions"], _expected(method, serve_dir, {
        "dataframe_records": [{"path": a, "secret": "owner", "message": 5}]}))


@pytest.mark.parametrize("request_body, named", [
    ({"inputs": {"paths": ["photos/a.png"]}}, "'secret' is missing"),
    ({"inputs": {"secret": "s"}}, "'paths'"),
    ({"inputs": {"paths": ["photos/a.png"], "secret": 7}}, "'secret' must be a non-empty string"),
    ({"inputs": {"paths": ["photos/a.png"], "secret": ""}}, "'secret' must be a non-empty string"),
    ({"inputs": {"paths": ["photos/a.png"], "secret": "s", "message": -1}}, "'message'"),
    ({"inputs": {"paths": ["photos/a.png"], "secret": "s", "message": 1.5}}, "'message'"),
    ({"inputs": {"paths": ["photos/a.png"], "secret": "s", "msg": 3}}, "unknown field 'msg'"),
    ({"inputs": {"paths": ["photos/a.png", "photos/b.png"], "secret": ["s"]}}, "1 values of"),
    ({"inputs": {"paths": [3], "secret": "s"}}, "'path' must be a non-empty string"),
    ({"inputs": [{"path": "photos/a.png"}]}, "row 0: 'secret' is missing"),
    ({"instances": ["photos/a.png"]}, "row 0: expected an object"),
    ({"dataframe_records": [{"path": "photos/a.png", "secret": "s"}, {"secret": "s"}]},
     "row 1: 'path' is missing"),
])
def test_unreadable_requests_are_refused_with_the_problem(server, request_body, named):
    status, answer = _post(f"{server}/invocations", json.dumps(request_body))
    assert status == 400, answer
    assert answer["error_code"] == "INVALID_PARAMETER_VALUE" and named in answer["message"]


def test_requests_mlflow_cannot_read_are_refused_by_mlflow(server):
    for body in (json.dumps({"paths": ["photos/a.png"]}), '{"inputs": {"paths": '):
        status, answer = _post(f"{server}/invocations", body)
        assert status == 400 and answer["error_code"] == "BAD_REQUEST", answer
    status, _ = _post(f"{server}/invocations", "photos/a.png", content_type="text/plain")
    assert status == 415
