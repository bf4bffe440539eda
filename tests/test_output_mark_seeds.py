"""output_mark reproducibility and seed spread (issue #19), at micro size.

* Two runs of one config give bit-identical networks and matrix rows, whatever thread
  count and global RNG state the process had before (``reproducibility.pinned``).
* The seed spread retrains per seed and reduces to mean ± Student-t interval.
* The attacker's cells never share the stage-2 surrogate's seed; stage 2 can train on
  several surrogate architectures.
"""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

from neuralmark.components.attacks.surrogate import attack_cell, attack_cell_ladder
from neuralmark.components.errors import InputError
from neuralmark.components.methods.output_mark import training
from neuralmark.components.methods.output_mark.config import OutputMarkConfig
from neuralmark.components.methods.output_mark.seeds import (
    ATTACKER_SEED_OFFSET,
    MATRIX_MEAN,
    attacker_settings,
    seed_matrix_rows,
    seed_spread_rows,
    spread_markdown,
    spread_metrics,
    spread_summary,
)
from neuralmark.components.reproducibility import pinned
from tests.output_mark_micro import CELLS, KEY, MICRO, micro_data


@pytest.fixture(scope="module")
def data() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return micro_data()


def _digest(*nets: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for net in nets:
        for name, t in sorted(net.state_dict().items()):
            h.update(name.encode() + t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_pinned_sets_and_restores_threads_determinism_and_rng() -> None:
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    with pinned(5, threads=1):
        assert torch.get_num_threads() == 1
        assert torch.are_deterministic_algorithms_enabled()
        inside = torch.rand(1)
    torch.manual_seed(5)
    assert torch.equal(inside, torch.rand(1))           # seeded inside
    torch.manual_seed(123)
    with pinned(5, threads=1):
        torch.rand(1)
    assert torch.equal(torch.rand(1), expected_next)    # the caller's stream goes on
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == det
    with pytest.raises(InputError, match="threads must be >= 0"):
        with pinned(0, threads=-1):
            pass


def test_two_runs_of_one_config_are_bit_identical_whatever_came_before(data) -> None:
    """The issue's two fresh clones: same config, other thread count and RNG history."""
    results = []
    for threads_before, noise in ((2, 0), (1, 7)):
        torch.set_num_threads(threads_before)
        torch.rand(noise)  # the global stream is wherever earlier code left it
        s1, _ = training.stage1_method(data["train"], MICRO, KEY)
        s2, _ = training.stage2_method(s1, data["train"])
        rows = seed_matrix_rows(3, data["train"], data["test"], MICRO, CELLS[:1], KEY)
        results.append((_digest(s1.H, s1.R, s1.M, s2.R), rows))
        assert torch.get_num_threads() == threads_before   # left as it was
    torch.set_num_threads(1)
    (digest_a, rows_a), (digest_b, rows_b) = results
    assert digest_a == digest_b
    assert rows_a == rows_b                                  # every value, to the bit
    assert {r["seed"] for r in rows_a} == {3}


def test_seed_matrix_rows_saves_the_seed_s_stage2_bundle(data, tmp_path) -> None:
    """``bundle_dir`` keeps the scored stage-2 model (for the surrogate diagnosis) and
    changes no row."""
    from neuralmark.components.methods import load_bundle
    from neuralmark.components.methods.output_mark.seeds import seeded_config

    config = {**MICRO, "stage2_steps_list": [2, 4]}
    rows = seed_matrix_rows(3, data["train"], data["test"], config, CELLS[:1], KEY,
                            bundle_dir=tmp_path)
    assert rows == seed_matrix_rows(3, data["train"], data["test"], config, CELLS[:1], KEY)
    loaded = load_bundle(tmp_path / "seed3")
    assert loaded.config == seeded_config(config, 3)
    assert loaded.config.stage2_length_list == (2, 4)
    cfg = seeded_config(config, 3)
    with pinned(cfg.seed, cfg.cpu_threads):
        s1, _ = training.stage1_method(data["train"], cfg, KEY)
        s2, _ = training.stage2_method(s1, data["train"])
    assert _digest(loaded.R, loaded.H) == _digest(s2.R, s2.H)


def test_seed_spread_retrains_per_seed_and_reports_mean_and_interval(data) -> None:
    config = {**MICRO, "stage2_archs": ["unet", "cnet"]}   # stage 2 on two architectures
    rows = seed_spread_rows([0, 1, 2], data["train"], data["test"], config, CELLS, KEY)
    assert sorted({r["seed"] for r in rows}) == [0, 1, 2]
    psnr = {r["seed"]: r["value"] for r in rows
            if r["stage"] == "stage1" and r["metric"] == "psnr_marked"}
    assert len(set(psnr.values())) == 3                     # each seed trained its own H
    summary = spread_summary(rows)
    by = {(s["stage"], s["label"], s["metric"]): s for s in summary}
    for stage in ("stage1", "stage2"):
        for label in ("surrogate_unet_l2", "surrogate_res9_l2", MATRIX_MEAN):
            s = by[(stage, label, "success_rate")]
            assert s["n_seeds"] == 3 and 0 <= s["ci_low"] <= s["mean"] <= s["ci_high"] <= 1
        cells = [r for r in rows if r["stage"] == stage and r["metric"] == "success_rate"
                 and r["label"] != MATRIX_MEAN and r["seed"] == 0]
        mean_row = next(r for r in rows if r["stage"] == stage and r["label"] == MATRIX_MEAN
                        and r["seed"] == 0)
        assert mean_row["value"] == pytest.approx(sum(r["value"] for r in cells) / len(cells))
    metrics = spread_metrics(summary)
    assert f"spread/stage2/{MATRIX_MEAN}/success_rate/ci_high" in metrics
    table = spread_markdown(summary)
    assert "surrogate_res9_l2" in table and "over 3 seeds" in table
    with pytest.raises(InputError, match="two distinct seeds"):
        seed_spread_rows([4, 4], data["train"], data["test"], MICRO, CELLS, KEY)


def test_spread_summary_is_the_student_t_interval() -> None:
    rows = [{"stage": "stage2", "label": "c", "metric": "success_rate", "value": v, "seed": s}
            for s, v in enumerate([0.5, 0.7, 0.9])]
    rows += [{"stage": "stage2", "label": "none", "metric": "psnr_marked", "value": v,
              "seed": s} for s, v in enumerate([40.0, 42.0, 44.0])]
    rate, psnr = spread_summary(rows)
    half = 4.302652729911275 * 0.2 / math.sqrt(3)          # t(0.975, 2) · s / √n
    assert rate["mean"] == pytest.approx(0.7) and rate["std"] == pytest.approx(0.2)
    assert rate["ci_low"] == pytest.approx(0.7 - half) and rate["ci_high"] == 1.0  # clipped
    assert psnr["ci_low"] == pytest.approx(42 - 10 * half)  # dB are not clipped
    assert psnr["ci_high"] == pytest.approx(42 + 10 * half)
    assert (rate["min"], rate["max"], rate["values"]) == (0.5, 0.9, [0.5, 0.7, 0.9])
    with pytest.raises(InputError, match="needs two"):
        spread_summary(rows[:1])
    with pytest.raises(InputError, match="'seed'"):
        spread_summary([{k: v for k, v in rows[0].items() if k != "seed"}])


def test_attacker_cells_never_reuse_the_stage2_surrogate_seed() -> None:
    config = OutputMarkConfig(**{**MICRO, "surrogate": {**MICRO["surrogate"], "seed": 4}})
    assert attacker_settings(config).seed == 4 + ATTACKER_SEED_OFFSET
    assert attacker_settings(config, {"seed": 9, "steps": 2}).steps == 2
    assert attacker_settings(config, {"seed": 9}).seed == 9
    with pytest.raises(InputError, match="matrix surrogate"):
        attacker_settings(config, {"stepz": 2})
    assert config.stage2_arch_list == ("unet",)
    assert OutputMarkConfig(stage2_archs=["res9", "unet", "res9"]).stage2_arch_list == \
        ("res9", "unet")
    with pytest.raises(ValueError, match="stage2_archs"):
        OutputMarkConfig(stage2_archs=["vgg"])


def test_attack_cell_ladder_equals_a_separate_run_at_each_budget(data) -> None:
    """One run of the longest budget gives, at each budget k, the outputs of a k-step run."""
    a, b = data["train"]
    query = data["test"][0]
    settings = {"width": 4, "depth": 2, "batch_size": 4, "lr": 3e-3, "seed": 7,
                "device": "cpu"}
    for arch in ("cnet", "res9"):
        ladder = attack_cell_ladder(b, a, query, arch, "l2", settings, [7, 3])
        assert sorted(ladder) == [3, 7]
        for k in (3, 7):
            alone = attack_cell(b, a, query, arch, "l2", {**settings, "steps": k})
            assert torch.equal(ladder[k], alone), (arch, k)
        assert not torch.equal(ladder[3], ladder[7])
    with pytest.raises(InputError, match="budgets"):
        attack_cell_ladder(b, a, query, "cnet", "l2", settings, [0, 3])
    with pytest.raises(InputError, match="budgets"):
        attack_cell_ladder(b, a, query, "cnet", "l2", settings, [])


def test_interleave_takes_row_j_from_instance_j_mod_k() -> None:
    outs = [torch.full((5, 3, 2, 2), float(i)) for i in range(3)]
    mixed = training.interleave(outs)
    assert mixed.shape == (5, 3, 2, 2)
    assert [float(mixed[j, 0, 0, 0]) for j in range(5)] == [0.0, 1.0, 2.0, 0.0, 1.0]
    assert torch.equal(training.interleave(outs[:1]), outs[0])


def test_stage2_instances_train_k_seeded_surrogates_per_arch(data, monkeypatch) -> None:
    """Each architecture gets ``stage2_instances`` surrogates and clean twins, seeds below
    the attacker's offset; R then trains on other outputs."""
    trained: list[tuple[str, int]] = []
    real = training.train_surrogate

    def recording(a, b, arch=None, loss=None, config=None, callbacks=()):
        trained.append((arch, config.seed))
        return real(a, b, arch=arch, loss=loss, config=config, callbacks=callbacks)

    monkeypatch.setattr(training, "train_surrogate", recording)
    config = {**MICRO, "stage2_archs": ["unet", "cnet"]}
    s1, _ = training.stage1_method(data["train"], config, KEY)
    one, _ = training.stage2_method(s1, data["train"])
    assert sorted(trained) == [("cnet", 0), ("cnet", 1), ("unet", 0), ("unet", 1)]
    assert OutputMarkConfig(**config).stage2_instances == 1   # the default: as the seed
    trained.clear()
    s1k, _ = training.stage1_method(data["train"], {**config, "stage2_instances": 3}, KEY)
    three, _ = training.stage2_method(s1k, data["train"])
    assert sorted(trained) == sorted((arch, seed) for arch in ("unet", "cnet")
                                     for seed in range(6))
    assert max(seed for _, seed in trained) < ATTACKER_SEED_OFFSET
    assert _digest(three.R) != _digest(one.R)
    with pytest.raises(ValueError, match="stage2_instances"):
        OutputMarkConfig(stage2_instances=0)


def test_stage2_steps_list_trains_one_surrogate_per_arch_and_length(data, monkeypatch) -> None:
    """Off (empty), stage 2 is the single-length one bit for bit; on, every architecture
    gets ``stage2_instances`` surrogates (and clean twins) per length, with distinct seeds
    below the attacker's offset, and R trains on other outputs."""
    trained: list[tuple[str, int, int]] = []
    real = training.train_surrogate

    def recording(a, b, arch=None, loss=None, config=None, callbacks=()):
        trained.append((arch, config.seed, config.steps))
        return real(a, b, arch=arch, loss=loss, config=config, callbacks=callbacks)

    monkeypatch.setattr(training, "train_surrogate", recording)
    config = {**MICRO, "stage2_archs": ["unet", "cnet"]}
    steps = MICRO["surrogate"]["steps"]
    assert OutputMarkConfig(**config).stage2_length_list == (steps,)
    s1, _ = training.stage1_method(data["train"], config, KEY)
    off, _ = training.stage2_method(s1, data["train"])
    assert sorted(trained) == [(a, seed, steps) for a in ("cnet", "unet") for seed in (0, 1)]
    trained.clear()
    s1, _ = training.stage1_method(data["train"], {**config, "stage2_steps_list": [steps]}, KEY)
    same, _ = training.stage2_method(s1, data["train"])
    assert _digest(same.R, same.H) == _digest(off.R, off.H)
    trained.clear()
    lengths = {**config, "stage2_steps_list": [2, 6, 2], "stage2_instances": 2}
    assert OutputMarkConfig(**lengths).stage2_length_list == (2, 6)   # duplicates dropped
    s1, _ = training.stage1_method(data["train"], lengths, KEY)
    on, _ = training.stage2_method(s1, data["train"])
    # surrogate j = length index · instances + instance: seed 2j, its clean twin 2j + 1
    expected = [(a, 2 * j + twin, (2, 2, 6, 6)[j]) for a in ("cnet", "unet")
                for j in range(4) for twin in (0, 1)]
    assert sorted(trained) == sorted(expected)
    assert max(seed for _, seed, _ in trained) < ATTACKER_SEED_OFFSET
    assert _digest(on.R) != _digest(off.R)
    with pytest.raises(ValueError, match="at most 50"):
        OutputMarkConfig(stage2_steps_list=[50, 150, 300], stage2_instances=17)
    with pytest.raises(ValueError, match="stage2_steps_list"):
        OutputMarkConfig(stage2_steps_list=[0])


def test_psnr_hinge_charges_only_images_below_the_target() -> None:
    from neuralmark.components.methods.output_mark.losses import embed_loss, psnr_hinge
    from neuralmark.components.nets.patchgan import PatchDiscriminator

    ref = torch.full((2, 3, 8, 8), 0.5)
    at_43 = ref + 10 ** (-43 / 20)          # MSE 10^-4.3: 43 dB
    at_37 = ref + 10 ** (-37 / 20)          # 37 dB: twice the allowed MSE at 40 dB
    assert float(psnr_hinge(at_43, ref, 40.0)) == 0.0
    assert float(psnr_hinge(at_37, ref, 40.0)) == pytest.approx(10 ** 0.3 - 1, rel=1e-4)
    both = torch.stack([at_43[0], at_37[0]])  # the mean over images: one charged of two
    assert float(psnr_hinge(both, ref, 40.0)) == pytest.approx((10 ** 0.3 - 1) / 2, rel=1e-4)
    disc = PatchDiscriminator(width=4, n_layers=2)
    off = OutputMarkConfig(**MICRO)
    on = off.model_copy(update={"lambda_psnr": 2.0})
    loss_off, m_off = embed_loss(off, disc, at_37, ref)
    loss_on, m_on = embed_loss(on, disc, at_37, ref)
    assert m_off["h_psnr_hinge"] == 0.0      # off: not computed, the seed's L_emd
    assert float((loss_on - loss_off).detach()) == pytest.approx(2 * (10 ** 0.3 - 1), rel=1e-4)
    with pytest.raises(ValueError, match="lambda_psnr"):
        OutputMarkConfig(lambda_psnr=-1)


def test_highband_share_is_zero_for_a_low_band_residual_and_positive_for_a_high_one() -> None:
    from neuralmark.components.methods.output_mark.losses import embed_loss, highband_share
    from neuralmark.components.nets.patchgan import PatchDiscriminator

    y, x = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    low = 0.01 * torch.cos(2 * math.pi * (x + y) / 32).expand(2, 3, 32, 32)   # radius ≈ 0.06
    high = 0.01 * (-1.0) ** (x + y).expand(2, 3, 32, 32)      # the Nyquist corner, radius 1
    assert float(highband_share(low)) == pytest.approx(0.0, abs=1e-6)
    assert float(highband_share(high)) == pytest.approx(1.0, rel=1e-5)
    # mean squares: the checkerboard 1e-4, the cosine 0.5e-4 -> two thirds in the high band
    assert float(highband_share(low + high)) == pytest.approx(2 / 3, rel=1e-4)
    assert float(highband_share(torch.zeros(2, 3, 32, 32))) == 0.0
    ref = torch.full((2, 3, 32, 32), 0.5)
    disc = PatchDiscriminator(width=4, n_layers=2)
    off = OutputMarkConfig(**MICRO)
    on = off.model_copy(update={"mark_highband_weight": 2.0})
    for residual, share in ((low, 0.0), (high, 1.0)):
        loss_off, m_off = embed_loss(off, disc, ref + residual, ref)
        loss_on, m_on = embed_loss(on, disc, ref + residual, ref)
        assert m_off["h_highband"] == pytest.approx(share, abs=1e-5)   # logged when off too
        assert float((loss_on - loss_off).detach()) == pytest.approx(2 * share, abs=1e-5)
        # off and not a logging step: no share taken, the loss unchanged
        loss_quiet, m_quiet = embed_loss(off, disc, ref + residual, ref, measure_highband=False)
        assert "h_highband" not in m_quiet and torch.equal(loss_quiet, loss_off)
        loss_on_quiet, m_on_quiet = embed_loss(on, disc, ref + residual, ref,
                                               measure_highband=False)   # weighted: always
        assert torch.equal(loss_on_quiet, loss_on) and m_on_quiet["h_highband"] == m_on[
            "h_highband"]
    with pytest.raises(ValueError, match="mark_highband_weight"):
        OutputMarkConfig(mark_highband_weight=-1)


def test_mark_highband_weight_off_leaves_stage1_bit_identical_and_on_moves_it(
        data, monkeypatch) -> None:
    """Off, the share is only logged: stage 1 is the same to the bit even if it were NaN;
    on, H is trained differently and its residual's high-band share is lower."""
    from neuralmark.components.methods.output_mark import losses
    from neuralmark.components.methods.output_mark.losses import highband_share

    cfg = {**MICRO, "steps": 16}
    s1, _ = training.stage1_method(data["train"], cfg, KEY)
    reference = _digest(s1.H, s1.R)
    on, _ = training.stage1_method(data["train"], {**cfg, "mark_highband_weight": 1.0}, KEY)
    monkeypatch.setattr(losses, "highband_share", lambda r: torch.tensor(float("nan")))
    poisoned, _ = training.stage1_method(data["train"], cfg, KEY)
    assert _digest(poisoned.H, poisoned.R) == reference
    assert _digest(on.H, on.R) != reference
    b = data["test"][1]
    s1.H.eval(), on.H.eval()
    with torch.no_grad():
        share_off = float(highband_share(s1.H(b) - b))
        share_on = float(highband_share(on.H(b) - b))
    assert share_on < share_off


def test_stage1_takes_the_unweighted_highband_share_on_logging_steps_only(
        data, monkeypatch) -> None:
    """Weight 0: the share (an FFT; a gather under DDP) is taken on the 21 logging steps of
    40 (every 2nd and the last), not on every step; weighted, on every step."""
    from neuralmark.components.methods.output_mark import losses

    real, calls = losses.highband_share, []
    monkeypatch.setattr(losses, "highband_share", lambda r: calls.append(1) or real(r))
    logged: list[dict] = []

    class Sink:
        def on_metrics(self, step, metrics):
            logged.append(metrics)

        def on_progress(self, done, total, desc):
            return None

    cfg = {**MICRO, "steps": 40}
    training.stage1_method(data["train"], cfg, KEY, [Sink()])
    assert len(calls) == 21
    assert sum("h_highband" in m for m in logged) == 21
    calls.clear()
    training.stage1_method(data["train"], {**cfg, "mark_highband_weight": 1.0}, KEY)
    assert len(calls) == 40


def test_seed_matrix_record_carries_the_environment_and_is_json() -> None:
    """The seed-matrix JSON names the float path it ran on (environment()), as MLflow runs do."""
    import json

    from neuralmark.components.environment import environment
    from neuralmark.components.methods.output_mark.seeds import seed_matrix_record

    rows = [{"seed": 0, "stage": "stage1", "label": MATRIX_MEAN, "metric": "success_rate",
             "value": 0.5, "n": 4}]
    cfg = OutputMarkConfig(**MICRO)
    record = seed_matrix_record(rows, cfg, KEY, ["script", "--seeds", "0"], 1.5)
    assert json.loads(json.dumps(record)) == record
    assert record["environment"] == environment() and record["environment"]["cpu_capability"]
    assert record["config"] == cfg.model_dump(mode="json") and record["rows"] == rows
    assert record["key"] == KEY.secret and "summary" not in record
    summary = spread_summary(rows + [{**rows[0], "seed": 1, "value": 0.7}])
    assert seed_matrix_record(rows, cfg, KEY, [], 2.0, summary)["summary"] == summary
