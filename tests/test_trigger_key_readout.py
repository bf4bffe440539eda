"""trigger_key's opt-in matched-filter readout (issue #13, tk12).

``matched_distance`` = 1 − NCC(S′ − S_ref, S − S_ref) is checked in closed form on 4×4
fixtures (a ±1 checkerboard mark and an orthogonal ±1 row-stripe drift, both zero-mean);
a micro DnCNN checks that the readout is calibrated on exactly the default's null trials,
that the default verdict is still d_rel's, and that the bundle records which null it holds.
"""

from __future__ import annotations

import math

import pytest
import torch

from neuralmark.components.errors import InputError
from neuralmark.components.methods import build, load_bundle
from neuralmark.components.methods.base import WatermarkKey
from neuralmark.components.methods.trigger_key import calibration

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REF = torch.full((1, 1, 4, 4), 0.5)
#: the mark direction m (zero mean, ±1) and a drift orthogonal to it (rows ±1, zero mean)
CHECKER = ((torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2 * 2 - 1).float()
STRIPES = (torch.arange(4)[:, None] % 2 * 2 - 1).float().expand(4, 4)
S = REF + 0.2 * CHECKER


def test_matched_distance_is_0_on_the_mark_1_on_the_reference_and_ignores_scale():
    stat = calibration.matched_distance
    assert float((CHECKER * STRIPES).sum()) == 0  # the fixture's drift is orthogonal to m
    assert float(stat(S, S, REF)[0]) == pytest.approx(0, abs=1e-6)
    assert float(stat(REF, S, REF)[0]) == 1  # no change from the reference: c := 0
    quarter = REF + 0.05 * CHECKER  # a quarter of the mark left
    assert float(stat(quarter, S, REF)[0]) == pytest.approx(0, abs=1e-6)  # scale-free
    assert float(stat(quarter + 0.1, S, REF)[0]) == pytest.approx(0, abs=1e-6)  # a DC shift
    assert float(stat(REF - 0.1 * CHECKER, S, REF)[0]) == pytest.approx(2, abs=1e-6)
    # a quarter of the mark plus orthogonal drift of the same size: c = 1/√2, while
    # d_rel reads √(0.75² + 0.25²) ≈ 0.79 (what the L2 readout sees)
    drift = quarter + 0.05 * STRIPES
    assert float(stat(drift, S, REF)[0]) == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-5)
    assert float(calibration.relative_distance(drift, S, REF)[0]) == pytest.approx(
        math.sqrt(0.75 ** 2 + 0.25 ** 2), abs=1e-5)
    assert float(stat(REF + 0.05 * STRIPES, S, REF)[0]) == pytest.approx(1, abs=1e-6)
    batch = stat(torch.cat([S, REF, quarter]), S, REF)  # per item, broadcast S and S_ref
    assert batch.shape == (3,) and batch.tolist() == pytest.approx([0, 1, 0], abs=1e-6)


def test_the_readout_field_validates():
    assert build("trigger_key", {}).config.readout == "d_rel"  # the default is unchanged
    assert build("trigger_key", {"readout": "matched"}).config.readout == "matched"
    with pytest.raises(InputError, match="readout"):
        build("trigger_key", {"readout": "signs"})
    with pytest.raises(InputError, match="unknown readout"):
        calibration.null_distances(torch.nn.Identity(), torch.nn.Identity(), [], REF, S, 2, 0,
                                   4, 1, "denoise", 2, True, readout="signs")


def test_matched_readout_uses_the_default_null_trials_and_the_default_verdict_is_d_rel(
        photo_batch, tmp_path):
    key = WatermarkKey("owner")
    m = build("trigger_key", {"depth": 3, "width": 4, "host_steps": 20, "embed_steps": 20,
                              "patch_size": 16, "n_patches": 32, "trigger_size": 12,
                              "calibration_keys": 20, "alpha": 0.05,
                              "calibration_marked_keys": 2, "check_every": 10})
    m.fit(photo_batch)
    m.embed_model(m.unmarked, key)
    md = m.with_config(readout="matched")  # the same marked host, before calibration
    md.train_pairs, md.test_pairs, md.lambda0_host = m.train_pairs, m.test_pairs, m.lambda0_host
    pool = m.marked_pool()
    out = m.calibrate(key, pool=pool)
    out_m = md.calibrate(key, pool=pool)
    # the same trials, split the same way: only the statistic differs
    assert (out["trials"], out["n_null"]) == (out_m["trials"], out_m["n_null"])
    assert m.null == calibration.calibration_null(m.null_trials(key, (), 20, 1, pool, "d_rel"),
                                                  20)
    assert md.null == calibration.calibration_null(
        m.null_trials(key, (), 20, 1, pool, "matched"), 20)
    assert md.null != m.null
    v = m.verify_model(m.host, key)  # the default reads d_rel; extra carries both
    assert v.extra["readout"] == "d_rel" and v.extra["statistic"] == v.extra["d_rel"]
    assert v.extra["matched"] == pytest.approx(1, abs=1e-5)
    assert v.score == pytest.approx(1 / (1 + v.extra["d_rel"]))
    assert m.verify_model(m.unmarked, key).extra["matched"] == 0
    vm = md.verify_model(m.host, key)
    assert vm.extra["statistic"] == pytest.approx(1 - vm.extra["matched"])
    assert vm.detected and vm.extra["d_rel"] == v.extra["d_rel"]
    assert not md.verify_model(m.unmarked, key).detected
    # the bundle records which null it holds; a switched readout must be recalibrated
    md.to_bundle(tmp_path / "matched")
    back = load_bundle(tmp_path / "matched")
    assert back.config.readout == "matched" and back.null == md.null
    assert back.verify_model(m.host, key).p_value == vm.p_value
    with pytest.raises(InputError, match="re-run calibrate"):
        m.with_config(readout="matched")
