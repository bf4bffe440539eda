"""trigger_key's calibration null with other keys' marked hosts (issue #13), at micro size.

Hosts here are constant maps (each returns one fixed image whatever its input), so every
d_rel has a closed form and the ordering, the calibration / held-out split and η can be
checked exactly; one test runs the real embedding of a pool into a micro DnCNN.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from neuralmark.components.errors import InputError
from neuralmark.components.methods import build, load_bundle
from neuralmark.components.methods.base import WatermarkKey
from neuralmark.components.methods.trigger_key import calibration

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SHAPE = (1, 1, 4, 4)


class Constant(nn.Module):
    """A "host" that returns ``value`` (``1×1×4×4``) for every input row."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.register_buffer("value", torch.full(SHAPE, value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value.expand(x.shape[0], -1, -1, -1)


def peer(host_value: float, s_value: float) -> calibration.MarkedPeer:
    return Constant(host_value), torch.zeros(SHAPE), torch.full(SHAPE, s_value)


def test_marked_peer_distances_probe_every_marked_host_with_every_other_key():
    # reference outputs 0; owner's S = 0.5, pool keys' S = 0.4 and 0.8
    reference = Constant(0.0)
    owner, pool = peer(0.5, 0.5), [peer(0.4, 0.4), peer(0.8, 0.8)]
    got = calibration.marked_peer_distances(owner, pool, reference)
    # d_rel(a on b) = |v_a − S_b| / |0 − S_b|, probed-key-major, the host itself skipped
    want = [0.1 / 0.5, 0.3 / 0.5,   # pool hosts on the owner's key
            0.1 / 0.4, 0.4 / 0.4,   # owner's and pool[1] on pool key 0
            0.3 / 0.8, 0.4 / 0.8]   # owner's and pool[0] on pool key 1
    assert got == pytest.approx(want)
    assert calibration.marked_peer_distances(owner, [], reference) == []
    calib, held = calibration.split_marked_hosts(got)
    assert calib == pytest.approx(want[:4]) and held == pytest.approx(want[4:])
    with pytest.raises(InputError, match="P·\\(P \\+ 1\\)"):
        calibration.split_marked_hosts(got[:5])


def test_eta_falls_below_the_calibrating_marked_trials_and_their_fpr_is_held_out():
    # far random-key trials (d_rel 0.9 … 1.2) and marked-host trials at 0.2 … 0.6
    n_keys = 100
    rand = [0.9 + 0.3 * (i % n_keys) / n_keys for i in range(2 * n_keys)]
    marked = [0.3, 0.5, 0.6, 0.2, 0.4, 0.45]   # P = 2, see the test above for the order
    null = {"owner_trigger": [1.0, 1.1], "random_keys": rand, "marked_hosts": marked}
    without = calibration.calibrate({**null, "marked_hosts": []}, alpha=0.01, n_keys=n_keys)
    assert without["eta"] == pytest.approx(0.9) and "marked_fpr" not in without
    with_pool = calibration.calibrate(null, alpha=0.01, n_keys=n_keys)
    # the calibration half: 100 even random-key trials + the 4 calibrating marked trials;
    # k = ⌊0.01·105⌋ − 1 = 0, so η is their smallest, 0.2
    assert with_pool["n_null"] == 104 and with_pool["eta"] == pytest.approx(0.2)
    assert with_pool["marked_trials"] == 2 and with_pool["marked_fp"] == 0
    assert with_pool["trials"] == 100 + 2 + 2 and with_pool["marked_min"] == pytest.approx(0.2)
    assert sorted(calibration.calibration_null(null, n_keys))[:4] == \
        pytest.approx([0.2, 0.3, 0.5, 0.6])
    # the rule judged on the held-out marked trials: one of them below a looser η is an FP
    looser = calibration.calibrate({**null, "marked_hosts": [0.5, 0.5, 0.6, 0.5, 0.4, 0.7]},
                                   alpha=0.01, n_keys=n_keys)
    assert looser["eta"] == pytest.approx(0.5)
    assert looser["marked_fp"] == 1 and looser["marked_fpr"] == pytest.approx(0.5)
    assert looser["fp"] == 1 and looser["fpr"] == pytest.approx(1 / looser["trials"])
    assert not math.isnan(looser["fpr_ci_high"])


@pytest.fixture
def micro(photo_batch):
    m = build("trigger_key", {"depth": 3, "width": 4, "host_steps": 20, "embed_steps": 20,
                              "patch_size": 16, "n_patches": 32, "trigger_size": 12,
                              "calibration_keys": 20, "alpha": 0.05,
                              "calibration_marked_keys": 2, "check_every": 10})
    m.fit(photo_batch)
    m.embed_model(m.unmarked, WatermarkKey("owner"))
    return m


def test_calibrate_embeds_a_pool_of_other_keys_marked_hosts(micro):
    m = micro
    key = WatermarkKey("owner")
    pool = m.marked_pool()
    assert len(pool) == 2
    for _, x, s in pool:
        assert x.shape == s.shape == (1, 1, 12, 12)
        assert not torch.equal(s, m.s)  # marked with its own key, not the owner's
    out = m.calibrate(key, pool=pool)
    assert out["marked_trials"] == 2  # P = 2: the odd pool key's two probes are held out
    # the pool's calibrating trials are in the null, so η is at most their smallest
    x, _ = m.key_material(key)
    on_owner = calibration.marked_peer_distances((m.host, x, m.s), pool, m.unmarked)[:2]
    assert m.eta is None or m.eta <= min(on_owner) + 1e-9
    for host, _, _ in pool:  # another key's marked host is not this owner's
        assert not m.verify_model(host, key).detected
    assert m.calibrate(key, pool=pool) == out  # the same pool, the same η
    without = m.calibrate(key, pool=[])
    assert "marked_trials" not in without
    with pytest.raises(InputError, match="marked pool host's trigger"):
        m.calibrate(key, pool=[(pool[0][0], torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))])
    bare = build("trigger_key", {"depth": 3, "width": 4, "calibration_marked_keys": 1})
    with pytest.raises(InputError, match="no task data"):
        bare.marked_pool()


def test_min_null_is_where_eta_at_first_sets_an_eta():
    for alpha in (0.01, 0.05, 0.1, 0.2, 1e-3, 0.03):
        need = calibration.min_null(alpha)
        assert calibration.eta_at([0.5] * need, alpha) == 0.5
        assert calibration.eta_at([0.5] * (need - 1), alpha) is None
    assert calibration.min_null(0.01) == 99 and calibration.min_null(0.05) == 19
    with pytest.raises(InputError, match="alpha must be in"):
        calibration.min_null(0.0)


@pytest.mark.parametrize("n_keys, hosts, pool", [(8, 2, 0), (9, 3, 0), (100, 1, 8),
                                                 (7, 2, 3), (30, 2, 2)])
def test_null_size_counts_what_the_calibration_half_holds(n_keys, hosts, pool):
    """``null_size`` (what the pipeline checks before training) is the length of
    ``calibration_null`` on trials of those counts; ``require_null_size`` refuses exactly
    below ``min_null``."""
    null = {"owner_trigger": [1.0] * hosts, "random_keys": [1.0] * (hosts * n_keys),
            "marked_hosts": [0.5] * (pool * (pool + 1))}
    n = calibration.null_size(n_keys, hosts, pool)
    assert n == len(calibration.calibration_null(null, n_keys))
    for alpha in (0.01, 0.05, 0.1):
        reachable = n >= calibration.min_null(alpha)
        assert reachable == (calibration.eta_at(calibration.calibration_null(null, n_keys),
                                                alpha) is not None)
        if reachable:
            calibration.require_null_size(alpha, n_keys, hosts, pool)
        else:
            with pytest.raises(InputError, match=f"would have {n} trials"):
                calibration.require_null_size(alpha, n_keys, hosts, pool)


def test_the_plain_calibrate_refuses_a_null_too_small_for_alpha():
    """``calibration.calibrate`` (the scripts' entry) no longer returns a NaN η quietly: 8
    random keys on 2 hosts and one marked peer (10 calibrating trials; alpha 0.05 needs 19)
    are refused with the counts it reads off the trials; ``allow_no_eta`` returns them with
    η NaN."""
    null = {"owner_trigger": [1.0, 1.1], "random_keys": [0.9 + 0.01 * i for i in range(16)],
            "marked_hosts": [0.5] * 2}  # P = 1: both trials calibrate
    with pytest.raises(InputError) as err:
        calibration.calibrate(null, alpha=0.05, n_keys=8)
    msg = str(err.value)
    for part in ("10 trials", "alpha 0.05 needs at least 19", "2 host(s) × 4",
                 "(calibration_keys 8) + 1 other keys' marked hosts"):
        assert part in msg, (part, msg)
    kept = calibration.calibrate(null, alpha=0.05, n_keys=8, allow_no_eta=True)
    assert math.isnan(kept["eta"]) and kept["n_null"] == 10 and kept["fp"] == 0
    assert math.isfinite(calibration.calibrate(null, alpha=0.1, n_keys=8)["eta"])


def test_a_null_too_small_for_alpha_is_refused_with_its_counts_and_nothing_is_stored(
        micro, tmp_path):
    """Issue #13 (tk14): 8 random keys on 2 hosts give 8 calibration trials, alpha 0.05
    needs 19: ``calibrate`` names the counts and the fields, and the method keeps no null;
    ``allow_no_eta`` keeps such a null on purpose; the config's 20 keys set η."""
    m, key = micro, WatermarkKey("owner")
    assert m.null == [] and m.calibration == {}
    with pytest.raises(InputError) as err:
        m.calibrate(key, n_keys=8, pool=[])
    msg = str(err.value)
    for part in ("8 trials", "alpha 0.05 needs at least 19", "2 host(s) × 4",
                 "calibration_keys", "calibration_marked_keys", "independently trained",
                 "nothing was stored"):
        assert part in msg, (part, msg)
    assert m.null == [] and m.calibration == {} and m.pool == []
    assert m.verify_model(m.host, key).reason.startswith("not calibrated")
    m.to_bundle(tmp_path / "b")  # the bundle of the refused run holds no null either
    assert load_bundle(tmp_path / "b").null == []
    # a too-small null kept on purpose: η NaN, and every verdict says why it cannot verify
    kept = m.calibrate(key, n_keys=8, pool=[], allow_no_eta=True)
    assert math.isnan(kept["eta"]) and kept["n_null"] == 8 and m.eta is None
    v = m.verify_model(m.host, key)
    assert not v.detected and "no η: 8 calibration trials cannot reach alpha 0.05" in v.reason
    # enough trials (the config's 20 keys on 2 hosts): η is set, the marked host verifies
    out = m.calibrate(key, pool=[])
    assert out["n_null"] == 20 and math.isfinite(out["eta"]) and m.eta == out["eta"]
    assert m.verify_model(m.host, key).detected


def test_the_calibration_pool_travels_packed_and_the_uniqueness_study_reuses_it(
        micro, monkeypatch):
    """The pool calibrate embedded, packed as one tensor (a pipeline artifact) and unpacked:
    the same hosts (outputs), triggers and S; the uniqueness study then embeds no pool."""
    from neuralmark.components.methods.trigger_key import study

    m, key = micro, WatermarkKey("owner")
    m.calibrate(key)
    assert len(m.pool) == 2
    packed = m.pool_tensor()
    assert packed.shape[0] == 2 and packed.dtype == torch.float32
    back = m.pool_from_tensor(packed)
    probe = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    for (h0, x0, s0), (h1, x1, s1) in zip(m.pool, back, strict=True):
        assert torch.equal(x0, x1) and torch.equal(s0, s1)
        torch.testing.assert_close(h1(probe), h0(probe), rtol=0, atol=0)
        for (k, a), b in zip(h0.state_dict().items(), h1.state_dict().values(), strict=True):
            assert torch.equal(a, b) and a.dtype == b.dtype, k
    assert m.pool_from_tensor(calibration.pack_pool([])) == []
    with pytest.raises(InputError, match="marked pool"):
        m.pool_from_tensor(packed[:, :-3])
    # the study's reuse: no pool embedded when the owner's is given (20 keys on 2 hosts
    # + the pool's 4 trials: enough for alpha 0.05)
    monkeypatch.setattr(study, "with_data", lambda method, *a, **k: method)
    rows_rebuilt = study.uniqueness_study(m, key, m.unmarked, ["other"], "unused", n_keys=20)
    calls: list[int] = []
    monkeypatch.setattr(type(m), "marked_pool", lambda self, *a, **k: calls.append(1) or [])
    rows_reused = study.uniqueness_study(m, key, m.unmarked, ["other"], "unused", n_keys=20,
                                         pool=packed)
    assert calls == []
    assert rows_reused == rows_rebuilt  # the pool the study would embed is the owner's


# -- the alignment-selected pool (issue #13, tk13) ---------------------------------------------
ALIGN_ARGS = (12, 1, "denoise", 2, True)  # size, channels, task, scale, keyed


def test_key_alignment_is_one_for_the_owner_and_deterministic():
    names = ["owner", "rand-511019274525653168", "attacker-180"]
    first = calibration.key_alignment("owner", names, *ALIGN_ARGS)
    assert first == calibration.key_alignment("owner", names, *ALIGN_ARGS)
    assert first[0] == pytest.approx(1.0)
    assert all(-1 <= a < 0.99 for a in first[1:])
    for family in ("band", "midband"):
        assert calibration.key_alignment("owner", ["owner"], *ALIGN_ARGS,
                                         family)[0] == pytest.approx(1.0)
    with pytest.raises(InputError, match="unknown key family 'noise'"):
        calibration.key_alignment("owner", names, *ALIGN_ARGS, "noise")


def test_aligned_keys_are_the_top_of_the_candidates_ranked_deterministically():
    from neuralmark.components.methods.base import random_keys

    top = calibration.aligned_keys("owner", 5, 300, 3, *ALIGN_ARGS)
    assert top == calibration.aligned_keys("owner", 5, 300, 3, *ALIGN_ARGS)  # deterministic
    candidates = random_keys(300, torch.Generator().manual_seed(3))
    scores = calibration.key_alignment("owner", [k.secret for k in candidates], *ALIGN_ARGS)
    assert top[0][0] == candidates[max(range(300), key=scores.__getitem__)]  # most aligned
    assert [a for _, a in top] == sorted(scores, reverse=True)[:5]  # ranked, most first
    chosen = {k.secret for k, _ in top}
    assert min(a for _, a in top) >= max(
        a for k, a in zip(candidates, scores, strict=True) if k.secret not in chosen)
    assert top[0][1] > 0.5 > sorted(scores)[150]  # the top is far above the median key
    assert calibration.aligned_keys("owner", 0, 10, 3, *ALIGN_ARGS) == []
    with pytest.raises(InputError, match="n_keys <= candidates"):
        calibration.aligned_keys("owner", 11, 10, 3, *ALIGN_ARGS)


def test_the_default_pool_is_random_and_the_field_validates():
    from neuralmark.components.methods.base import random_keys

    m = build("trigger_key", {"depth": 3, "width": 4})
    assert m.config.calibration_pool == "random"  # the default, every figure before tk13
    assert m.pool_keys() == random_keys(8, torch.Generator().manual_seed(3))  # unchanged
    assert m.pool_keys(3, 5) == random_keys(3, torch.Generator().manual_seed(5))
    for bad in ({"calibration_pool": "worst"}, {"calibration_candidates": 0},
                {"calibration_pool": "aligned", "calibration_candidates": 4,
                 "calibration_marked_keys": 8}):
        with pytest.raises(ValueError, match="calibration_"):
            build("trigger_key", bad)
    aligned = build("trigger_key", {"depth": 3, "width": 4, "calibration_pool": "aligned",
                                    "calibration_candidates": 40, "trigger_size": 12})
    with pytest.raises(InputError, match="pass owner"):
        aligned.pool_keys()
    keys = aligned.pool_keys(owner=WatermarkKey("owner"))
    assert keys == [k for k, _ in calibration.aligned_keys("owner", 8, 40, 3, *ALIGN_ARGS)]


def test_an_aligned_pool_is_embedded_from_the_most_aligned_keys(micro):
    m = micro.with_config(calibration_pool="aligned", calibration_candidates=30)
    m.train_pairs, m.test_pairs = micro.train_pairs, micro.test_pairs
    key = WatermarkKey("owner")
    top = calibration.aligned_keys("owner", 2, 30, 3, *ALIGN_ARGS)
    pool = m.marked_pool(owner=key)
    assert len(pool) == 2
    for (k, _), (_, x, _) in zip(top, pool, strict=True):  # K input: that key's, in rank order
        assert torch.equal(x, m.key_material(k)[0])
