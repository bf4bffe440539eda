"""The trigger_key training recipe (``scripts/train_shipped_trigger_key.py``) on a profile.

``--profile full --device auto`` is the GPU recipe; here the same code path runs a micro
profile YAML on the CPU (issue #13): the script resolves the profile as the pipeline does,
builds the profile's sample data, trains, marks, calibrates and writes ``bundle/``,
``summary.json`` and ``MODEL_CARD.md``; the bundle verifies its own host and rejects the
unmarked one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from neuralmark.components.methods import load_bundle
from neuralmark.components.methods.base import WatermarkKey

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_shipped_trigger_key.py"


def _micro_profile(folder: Path) -> Path:
    """A profile YAML: the tiny profile's trigger_key section at micro sizes."""
    tiny = yaml.safe_load((ROOT / "configs" / "profiles" / "tiny.yaml").read_text())
    section = {**tiny["trigger_key"], 
        "method": {"channels": 1, "width": 8, "trigger_size": 16, "patch_size": 16,
                   "n_patches": 64, "host_steps": 40, "embed_steps": 60, "batch_size": 8,
                   "calibration_keys": 100, "calibration_marked_keys": 1,
                   "visualizer_steps": 2, "visualizer_width": 4, "logo_size": 16},
        "data": {"root": str(folder / "sample"), "size": 48, "crops_per_photo": 1,
                 "n_procedural": 3, "version_with_dvc": False}}
    # named tiny: a profile's name picks its attack suite and host depths (the policy's
    # attack labels are the tiny suite's)
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump({"trigger_key": section}))
    return path


def test_recipe_trains_a_profile_and_writes_bundle_metrics_and_card(tmp_path):
    profile = _micro_profile(tmp_path)
    out = tmp_path / "out"
    run_config = ROOT / "configs" / "trigger_key.yaml"
    env = {**os.environ, "ZENML_ANALYTICS_OPT_IN": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
           "ZENML_CONFIG_PATH": str(tmp_path / "zen"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(SCRIPT), "--profile", str(profile), "--device", "cpu",
           "--run-config", str(run_config), "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"] == "cpu" and summary["profile"] == str(profile)
    met = summary["metrics"]
    # the profile's sizes and the run config's λ reached the trained method
    m = load_bundle(out / "bundle")
    assert (m.config.width, m.config.trigger_size, m.config.lam) == (8, 16, 1e-2)
    assert m.config.depth == 5  # the pipeline's tiny DnCNN depth (study.arch_depth)
    assert met["embed_steps"] >= 25 and met["psnr_marked"] > met["input_psnr"]
    key = WatermarkKey(summary["key"])
    assert m.verify_model(m.host, key).detected
    unmarked = m.verify_model(m.unmarked, key)
    assert not unmarked.detected and unmarked.extra["d_rel"] == 1.0
    card = (out / "MODEL_CARD.md").read_text()
    assert "Command: `python" in card and "--profile" in card
    assert f"{met['fidelity_cost_db']:.3f} dB" in card
    assert f"{summary['calibration']['eta']:.4f}" in card


def test_recipe_refuses_cuda_without_a_device_and_a_run_config_without_a_profile(tmp_path):
    env = {**os.environ, "ZENML_ANALYTICS_OPT_IN": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    bad = subprocess.run([sys.executable, str(SCRIPT), "--run-config",
                          str(ROOT / "configs" / "trigger_key.yaml"), "--out",
                          str(tmp_path / "o")], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert bad.returncode != 0 and "--run-config needs --profile" in bad.stderr
    import torch

    if not torch.cuda.is_available():
        no_gpu = subprocess.run([sys.executable, str(SCRIPT), "--device", "cuda", "--out",
                                 str(tmp_path / "o")], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=600)
        assert no_gpu.returncode != 0 and "no CUDA device" in no_gpu.stderr
