"""``scripts/train_shipped_visible_gan.py`` at micro size: any profile in, a bundle + card out.

The script trains the shipped W (``--profile shipped``), the ``tiny`` / ``full`` profiles'
recipes (``full`` on one CUDA GPU) or a YAML file's; here a micro YAML on the CPU, with a
second F′ architecture (the seed's table has several), then ``--previous`` against itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neuralmark.components.methods import load_bundle

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_shipped_visible_gan.py"
MICRO = """\
method:
  working_size: 32
  detect_size: 32
  mark_resolution: 16
  w_width: 4
  v_width: 4
  d_width: 4
  classifier: resnet_small
  table_classifiers: [alexnet]
  classifier_width: 4
  task: labels
  num_classes: 10
  classifier_steps: 3
  steps: 4
  batch_size: 8
  utility_steps: 2
  removal_steps: 3
  removal_curve_steps: [1]
  calibration_scores: 60
  log_every: 2
data:
  dataset: procedural_classes
  root: {root}
  size: 32
  images_per_class: 8
"""


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ZENML_ANALYTICS_OPT_IN": "false",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True,
                          text=True, env=env, timeout=1200, cwd=ROOT)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("vg-script")
    profile = tmp / "micro.yaml"
    profile.write_text(MICRO.format(root=tmp / "classes"))
    out = tmp / "out"
    done = _run("--profile", str(profile), "--device", "cpu", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_the_micro_profile_writes_a_loadable_bundle_metrics_and_card(trained):
    for name in ("config.json", "weights.safetensors", "state.json", "metrics.json",
                 "MODEL_CARD.md"):
        assert (trained / name).is_file(), name
    method = load_bundle(trained)
    assert method.config.w_width == 4 and method.config.table_classifiers == ("alexnet",)
    x = torch.rand(2, 3, 48, 40, generator=torch.Generator().manual_seed(0))
    marked = method.embed(x)
    assert marked.shape == x.shape and 0.0 <= float(marked.min()) <= float(marked.max()) <= 1
    assert len(method.verify(marked)) == 2
    m = json.loads((trained / "metrics.json").read_text())
    assert m["profile"] == "micro" and m["device"] == "cpu"
    assert m["data"]["dataset"] == "procedural_classes" and m["data"]["images_per_class"] == 8
    assert set(m["per_set"]) == {"test_32", "fresh_128"}
    assert m["clean_trials"] == sum(r["images"] for r in m["per_set"].values())
    # the seed's table holds a row per F′ architecture; the gate reads its drop
    assert set(m["fit_report"]["accuracy_by_classifier"]) == {"alexnet"}
    metrics = {(r["label"], r["metric"]) for r in m["test_rows"]}
    assert ("deepstamp", "accuracy_drop_alexnet") in metrics
    assert ("deepstamp", "contrast_vs_static") in metrics
    card = (trained / "MODEL_CARD.md").read_text()
    assert "profile `micro`" in card and "--profile" in card and "--device cpu" in card
    assert "| resnet_small |" in card and "| alexnet |" in card
    assert f"| test_32 | {m['per_set']['test_32']['images']} |" in card
    assert "GMAN steps on cpu" in card


def test_card_only_rewrites_the_same_card_and_previous_adds_the_comparison(trained):
    before = (trained / "MODEL_CARD.md").read_text()
    done = _run("--card-only", "--out", str(trained))
    assert done.returncode == 0, done.stderr[-2000:]
    assert (trained / "MODEL_CARD.md").read_text() == before
    done = _run("--out", str(trained), "--previous", str(trained))
    assert done.returncode == 0, done.stderr[-2000:]
    m = json.loads((trained / "metrics.json").read_text())
    # the same bundle measured twice on the same images: the same detections
    assert m["previous"]["per_set"]["test_32"]["detection_rate_marked"] == \
        m["per_set"]["test_32"]["detection_rate_marked"]
    card = (trained / "MODEL_CARD.md").read_text()
    assert "## The previous shipped W against this one" in card
    assert "| false positives (all clean) |" in card
    # no --previous-curve: the previous bundle's own table gives its V′ and F′ rows (same
    # V′ and F′ here, so the same figures), and the card names that source
    rem = m["fit_report"]["removal"]
    assert m["previous"]["removal"] == {
        name: {k: r[k] for k in ("removal_gain", "removal_left", "psnr_after")}
        for name, r in rem.items()}
    assert m["previous"]["accuracy"] == m["fit_report"]["accuracy"]
    assert "its own training run's table" in card
    assert "| previous W (the same recipe) | this W |" in card
    left = rem["deepstamp"]["removal_left"]
    assert f"deepstamp: share left / gain | {left:.3f} / " in card
    assert "| F′ accuracy drop, static / DeepStamp (" in card


def test_remeasure_gives_the_same_figures_and_the_shipped_v_attack(trained, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(trained, out)
    before = json.loads((out / "metrics.json").read_text())
    done = _run("--remeasure", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    after = json.loads((out / "metrics.json").read_text())
    assert after["final_training"] == before["final_training"]
    assert after["test_rows"] == before["test_rows"]  # measure is deterministic
    for name, r in before["per_set"].items():
        for k, v in r.items():
            assert after["per_set"][name][k] == v, (name, k)
        v_attack = after["per_set"][name]["shipped_v"]
        assert 0 <= v_attack["detection_rate"] <= 1 and v_attack["removal_left"] >= 0
        assert v_attack["psnr_before"] == pytest.approx(r["psnr_marked_vs_clean"], abs=1e-4)
    assert "--remeasure" in after["remeasured_by"]
    card = (out / "MODEL_CARD.md").read_text()
    left = after["per_set"]["test_32"]["shipped_v"]["removal_left"]
    assert "The bundle's own V, which ships in `weights.safetensors`" in card
    assert f"test_32: leaves {left:.3f} of the mark's squared error" in card


def test_previous_with_another_v_prime_gets_no_removal_rows(trained, tmp_path):
    import shutil

    out, old = tmp_path / "out", tmp_path / "old"
    shutil.copytree(trained, out)
    shutil.copytree(trained, old)
    cfg = json.loads((old / "config.json").read_text())
    (old / "config.json").write_text(json.dumps({**cfg, "removal_steps": 7,
                                                 "removal_warmup_steps": 5}))
    done = _run("--out", str(out), "--previous", str(old))
    assert done.returncode == 0, done.stderr[-2000:]
    prev = json.loads((out / "metrics.json").read_text())["previous"]
    # its V′ trained for other steps: not this table's attacker; its F′ still is
    assert "removal" not in prev and "accuracy" in prev
    card = (out / "MODEL_CARD.md").read_text()
    assert "The previous W was not put through V′ here." in card
    assert "previous W (`removal_warmup_steps` 5, `removal_steps` 7)" in card


def test_bad_profile_and_device_are_named(tmp_path):
    done = _run("--profile", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o"))
    assert done.returncode != 0 and "nope.yaml" in done.stderr and "YAML" in done.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {dataset: procedural_classes}\n")
    done = _run("--profile", str(bad), "--out", str(tmp_path / "o"))
    assert done.returncode != 0 and "needs a `method:` mapping" in done.stderr
    if not torch.cuda.is_available():
        done = _run("--device", "cuda", "--out", str(tmp_path / "o"))
        assert done.returncode != 0 and "no CUDA device" in done.stderr
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_a_shipped_card_says_when_its_w_predates_the_scripts_recipe(trained, tmp_path):
    import shutil

    shipped = tmp_path / "shipped"
    shutil.copytree(trained, shipped)
    m = json.loads((shipped / "metrics.json").read_text())
    (shipped / "metrics.json").write_text(json.dumps({**m, "profile": "shipped"}))
    done = _run("--card-only", "--out", str(shipped))
    assert done.returncode == 0, done.stderr[-2000:]
    card = (shipped / "MODEL_CARD.md").read_text()
    # the micro W has width 4 and no V schedule; the script's recipe sets both
    assert "This W predates the script's current recipe" in card
    assert "`w_width` 32 (this W: 4)" in card
    assert "`removal_warmup_steps` 1200 (this W: 0)" in card
    assert "predates" not in (trained / "MODEL_CARD.md").read_text()  # profile micro: silent
