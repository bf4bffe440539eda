"""The trigger_key measurement scripts' options (issue #13, tk11).

``measure_trigger_key_cross_key.py``: ``--arch`` runs the tiny pipeline's DnCNN, RED or
VDSR ×2 cell with that pipeline's η; ``--max-seconds`` cuts the key loop and refuses a
non-positive budget. ``measure_trigger_key_finetune_aware.py``: ``--eta variant=η`` skips
a variant's calibration. ``measure_trigger_key_pool_size.py``: ``--calibration-pool aligned``
ranks the pool against the owner's key (micro size)."""

from __future__ import annotations

import pytest

from neuralmark.components.methods.registry import build
from neuralmark.components.methods.trigger_key.trigger import (
    gradient_kernel,
    key_material,
    midband_kernel,
    ncc,
    trigger,
    verification_target,
)
from tests.script_modules import load_script

_load = load_script


@pytest.fixture(scope="module")
def script():
    return _load("measure_trigger_key_cross_key")


def test_each_host_cell_is_its_tiny_pipeline_config(script):
    """The cells of configs/trigger_key*.yaml on the tiny profile (depth from the pipeline's
    arch_depth) and the η each pipeline measured (MODEL_CARD)."""
    from neuralmark.pipelines.trigger_key import StudySettings

    depths = StudySettings().arch_depth["tiny"]
    want = {"dncnn": ("denoise", 1e-2, 0.8116), "red": ("denoise", 1e-2, 0.8464),
            "vdsr": ("sr", 1e-3, 0.575)}
    assert set(script.HOST_CELLS) == set(want)
    for arch, (task, lam, eta) in want.items():
        c = build("trigger_key", script.host_config(arch)).config
        assert (c.arch, c.task, c.lam, c.depth, c.width) == (arch, task, lam, depths[arch], 16)
        assert (c.host_steps, c.embed_steps, c.key_family) == (300, 200, "filter")
        assert script.HOST_CELLS[arch][1] == eta
    sr = build("trigger_key", script.host_config("vdsr", "band", depth=3)).config
    assert (sr.scale, sr.trigger_side, sr.depth, sr.key_family) == (2, 20, 3, "band")
    with pytest.raises(ValueError, match="unknown host 'unet': one of dncnn, red, vdsr"):
        script.host_config("unet")


@pytest.mark.parametrize("arch", ["dncnn", "vdsr"])
@pytest.mark.parametrize("family", ["filter", "band", "midband"])
def test_alignment_reads_the_owner_trigger_of_each_task(script, arch, family):
    """NCC(G_i(K), G(K)): 1 for the owner's own key; on SR the raw K is the low-resolution
    one (the host input is its upsample; tk11 found the SR cell broken), and the denoise
    value is tk8's."""
    c = build("trigger_key", script.host_config(arch, family)).config
    assert script.alignment(c, "neuralmark-eval", "neuralmark-eval") == pytest.approx(1.0)
    other = script.alignment(c, "neuralmark-eval", "rand-511019274525653168")
    assert -1 <= other < 0.99
    if (arch, family) == ("dncnn", "filter"):
        assert other == pytest.approx(0.376, abs=5e-4)  # tk8's first key, to the digit
    if (arch, family) == ("dncnn", "midband"):  # each key's own 7×7 Gabor (tk10), not 3×3 ∇
        k = trigger("neuralmark-eval", c.trigger_side, c.channels)[None]
        owner_s0 = key_material("neuralmark-eval", c.trigger_side, c.channels, c.task,
                                c.scale, family="midband")[1]
        gabor = verification_target(k, midband_kernel("rand-511019274525653168"), c.task, c.scale)
        assert other == pytest.approx(float(ncc(gabor, owner_s0)), abs=1e-6)
        derivative = verification_target(k, gradient_kernel("rand-511019274525653168"), c.task,
                                          c.scale)
        assert abs(other - float(ncc(derivative, owner_s0))) > 1e-3


@pytest.mark.parametrize("argv, message", [
    (["--max-seconds", "0"], "--max-seconds must be positive, got 0"),
    (["--n", "0"], "--n must be at least 1, got 0"),
])
def test_bad_options_are_refused_before_any_training(script, tmp_path, argv, message):
    with pytest.raises(SystemExit, match=message):
        script.main(["--sample", str(tmp_path / "sample"), *argv])
    assert not (tmp_path / "sample").exists()  # refused before the data is built


def test_an_unknown_host_is_an_argparse_error(script, tmp_path, capsys):
    with pytest.raises(SystemExit):
        script.main(["--sample", str(tmp_path), "--arch", "unet"])
    assert "invalid choice: 'unet'" in capsys.readouterr().err


def test_finetune_script_takes_measured_etas_per_variant():
    parse = _load("measure_trigger_key_finetune_aware").parse_etas
    assert parse("") == {}
    assert parse("filter=0.8116,band=0.644") == {"filter": 0.8116, "band": 0.644}
    for bad in ("filter", "filter=x", "=0.5", "band=0", "band=-1"):
        with pytest.raises(SystemExit, match="--eta: expected variant=η"):
            parse(bad)


MICRO = ("depth=3,width=4,host_steps=20,embed_steps=20,patch_size=16,n_patches=32,"
         "trigger_size=12,calibration_keys=20,alpha=0.05,check_every=10")


def test_pool_size_script_embeds_the_owners_aligned_pool(tmp_path, monkeypatch, capsys):
    """``measure_trigger_key_pool_size.py --calibration-pool aligned`` at micro size: the
    pool is ranked against the owner's key (the script once called ``marked_pool`` without
    it, which the aligned pool refuses) and the table has a row per pool size."""
    from neuralmark.components.methods.trigger_key import calibration

    calls = []
    ranked = calibration.aligned_keys

    def spy(owner, n_keys, candidates, *args, **kwargs):
        calls.append((owner, n_keys, candidates))
        return ranked(owner, n_keys, candidates, *args, **kwargs)

    monkeypatch.setattr(calibration, "aligned_keys", spy)
    _load("measure_trigger_key_pool_size").main([
        "--sample", str(tmp_path / "sample"), "--calibration-pool", "aligned",
        "--candidates", "30", "--pool-max", "2", "--test-keys", "1", "--sizes", "0,2",
        "--independent-steps", "10", "--config", MICRO])
    out = capsys.readouterr().out
    assert calls == [("neuralmark-eval", 3, 30)]
    assert "dncnn denoise λ 0.01 pool aligned reference unmarked" in out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith(("| 0 |", "| 2 |"))]
    assert [r[0] for r in rows] == ["| 0", "| 2"]
    assert all(0 < float(r[1]) for r in rows)  # η of each pool size


@pytest.mark.parametrize("argv, message", [
    (["--calibration-pool", "aligned", "--candidates", "3"],
     "ranks --candidates 3 keys: need at least --pool-max \\+ --test-keys = 16"),
    (["--config", "depth"], "--config: expected field=value"),
    (["--test-keys", "0"], "need --pool-max >= 0 and --test-keys >= 1"),
    # tk16: every row's null (3 hosts × 10 even keys at P 0) must reach alpha 0.01
    (["--config", "calibration_keys=20", "--sizes", "0,2"],
     "--sizes 0: the calibration null would have 30 trials"),
])
def test_pool_size_script_refuses_bad_options_before_any_data(tmp_path, argv, message):
    with pytest.raises(SystemExit, match=message):
        _load("measure_trigger_key_pool_size").main(
            ["--sample", str(tmp_path / "sample"), *argv])
    assert not (tmp_path / "sample").exists()


def test_finetune_script_refuses_a_variant_whose_null_cannot_reach_alpha(tmp_path):
    """tk16: a calibrated variant's null (marked, λ = 0 and independent hosts × 10 even keys,
    no pool: 30 trials) is refused before the data is built; its η given skips the check."""
    script = _load("measure_trigger_key_finetune_aware")
    with pytest.raises(SystemExit, match="variant small: the calibration null would have 30"):
        script.main(["--sample", str(tmp_path / "sample"), "--pool", "0",
                     "small:calibration_keys=20"])
    assert not (tmp_path / "sample").exists()
