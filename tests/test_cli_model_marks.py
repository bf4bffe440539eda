"""``neuralmark verify-model`` / ``attack-model`` / ``mark-model --host`` (issue #13).

Through the shipped demo host (``components/pretrained/trigger_key``, key
``neuralmark-demo`` as its MODEL_CARD states): detected with its key (exit 0), not
detected with another key or for its unmarked twin (exit 1), bad input (pickle, truncated
file, wrong architecture, missing file, conflicting suspects) exit 2 with one line naming
the problem. ``mark-model --host`` marks a tiny host file in a few seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from neuralmark.cli.app import app

pytestmark = pytest.mark.usefixtures("one_torch_thread")
DEMO = "neuralmark-demo"
runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, list(args))


def test_the_shipped_demo_is_detected_with_its_key_and_the_logo_is_saved(tmp_path) -> None:
    logo = tmp_path / "logo.png"
    res = _invoke("verify-model", "-k", DEMO, "--logo-out", str(logo))
    assert res.exit_code == 0, res.output
    assert "detected" in res.output and "η =" in res.output and "NCC" in res.output
    with Image.open(logo) as im:
        assert im.size == (32, 32)


def test_wrong_key_and_the_unmarked_host_exit_1_and_json_has_the_evidence() -> None:
    wrong = _invoke("verify-model", "-k", "not the demo key", "--json")
    assert wrong.exit_code == 1, wrong.output
    record = json.loads(wrong.stdout)
    assert {"suspect", "detected", "status", "p_value", "d", "d_rel", "eta", "ncc", "reason",
            "notes"} <= set(record)
    assert record["detected"] is False and record["status"] == "not_detected"
    assert record["p_value"] > 0.01 and record["extra"]["own_key"] is False
    unmarked = _invoke("verify-model", "-k", DEMO, "--unmarked", "--json")
    assert unmarked.exit_code == 1, unmarked.output
    assert json.loads(unmarked.stdout)["d_rel"] > json.loads(unmarked.stdout)["eta"]


def test_bad_suspects_exit_2_with_the_problem_named(tmp_path) -> None:
    torch.save({"w": torch.zeros(1)}, tmp_path / "host.pt")
    (tmp_path / "cut.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    cases = {
        ("--host", str(tmp_path / "host.pt")): "pickle checkpoint: refused",
        ("--host", str(tmp_path / "cut.safetensors")): "not a readable safetensors",
        ("--host", str(tmp_path / "none.safetensors")): "no host weights file",
        ("--unmarked", "--host", str(tmp_path / "host.pt")): "give one suspect",
    }
    for extra, message in cases.items():
        res = _invoke("verify-model", "-k", DEMO, *extra)
        assert res.exit_code == 2, (extra, res.output)
        assert message in " ".join(res.output.split()), (extra, res.output)


def test_attack_model_writes_a_host_that_verify_model_reads(tmp_path) -> None:
    out = tmp_path / "pruned.safetensors"
    res = _invoke("attack-model", "--attack", "prune", "--strength", "0.9", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "prune_0.9" in res.output and out.is_file()
    # pruning 90% of every layer wrecks the demo host's mark (and its denoising)
    res = _invoke("verify-model", "-k", DEMO, "--host", str(out), "--json")
    assert res.exit_code == 1, res.output
    wrong_arch = _invoke("verify-model", "-k", DEMO, "--host", str(out), "--arch", "red",
                         "--depth", "6")
    assert wrong_arch.exit_code == 2 and "does not hold a red host" in wrong_arch.output
    bad = _invoke("attack-model", "--attack", "melt", "--out", str(tmp_path / "x.safetensors"))
    assert bad.exit_code == 2 and "unknown model attack" in bad.output
    bad = _invoke("attack-model", "--attack", "prune", "--out", str(tmp_path / "x.pt"))
    assert bad.exit_code == 2 and ".safetensors" in bad.output


def test_attack_model_runs_the_keyless_noise_fine_tuning(tmp_path) -> None:
    from neuralmark.components.methods.trigger_key.host_files import read_state_dict

    out, again = tmp_path / "noise.safetensors", tmp_path / "again.safetensors"
    for path in (out, again):
        res = _invoke("attack-model", "--attack", "fine_tune_noise", "--strength", "0.05",
                      "--out", str(path))
        assert res.exit_code == 0, res.output
        assert "fine_tune_noise_0.05" in res.output and "task PSNR" in res.output
    a, b = read_state_dict(out), read_state_dict(again)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # seeded
    res = _invoke("verify-model", "-k", DEMO, "--host", str(out), "--json")
    assert res.exit_code in (0, 1) and json.loads(res.stdout)["d_rel"] > 0  # a read host


def test_mark_model_marks_a_host_file_and_verify_model_detects_it(tmp_path) -> None:
    from neuralmark.components.methods.trigger_key.host_files import save_host_file
    from neuralmark.components.nets.restoration import build_host

    torch.manual_seed(0)
    host = save_host_file(build_host("dncnn", 1, 3, 4).eval(), tmp_path / "h.safetensors")
    bundle = tmp_path / "marked"
    res = _invoke("mark-model", "--host", str(host), "--depth", "3", "--width", "4",
                  "--steps", "40", "--key", "file owner", "--out", str(bundle))
    assert res.exit_code == 0, res.output
    assert (bundle / "weights.safetensors").is_file() and "fidelity cost" in res.output
    ok = _invoke("verify-model", "-k", "file owner", "--bundle", str(bundle))
    assert ok.exit_code == 0, ok.output
    again = _invoke("mark-model", "--host", str(host), "--key", "k", "--out", str(bundle))
    assert again.exit_code == 2 and "not empty" in again.output
    nokey = _invoke("mark-model", "--host", str(host), "--out", str(tmp_path / "n"))
    assert nokey.exit_code == 2 and "--key" in nokey.output
    wrong = _invoke("mark-model", "--host", str(host), "--key", "k", "--out",
                    str(tmp_path / "w"))  # the profile's 5-layer host, not the file's 3
    assert wrong.exit_code == 2 and "does not hold a dncnn host of depth 5" in wrong.output
    assert not (tmp_path / "w").exists()
    assert _invoke("mark-model", "--out", str(tmp_path / "o")).exit_code == 2


def test_suspect_bundle_and_missing_bundle(tmp_path: Path) -> None:
    from neuralmark.components.methods.registry import shipped_bundle

    res = _invoke("verify-model", "-k", DEMO, "--bundle", str(tmp_path / "nope"))
    assert res.exit_code == 2 and "not a folder" in res.output
    same = _invoke("verify-model", "-k", DEMO, "--suspect-bundle",
                   str(shipped_bundle("trigger_key")))
    assert same.exit_code == 0, same.output
    other = _invoke("verify-model", "-k", DEMO, "--suspect-bundle",
                    str(shipped_bundle("pgd_signer")))
    assert other.exit_code == 2 and "content method" in other.output


def test_mark_model_refuses_a_bad_config_before_running_anything() -> None:
    res = _invoke("mark-model", "--arch", "red", "--task", "sr")
    assert res.exit_code == 2 and "SR hosts are vdsr and dncnn" in " ".join(res.output.split())
