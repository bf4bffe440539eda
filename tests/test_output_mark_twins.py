"""The attacker at the theft bar and its clean twins (issue #19, om12), at micro size.

* ``surrogate.steps_by_arch`` gives each matrix cell its architecture's budget (validated,
  falling back to ``steps``); stage 2's own surrogate keeps ``steps``.
* A cell's clean twin is the same attacker trained on the unmarked M's outputs; its flag
  rate is a false-positive row, outside the success mean, and the gate applies ``max_fpr``
  to it only when asked (``twins_in_fpr`` / ``matrix.twins_in_gate``).
"""

from __future__ import annotations

import pytest
import torch

from neuralmark.components.attacks import surrogate
from neuralmark.components.attacks.surrogate import SurrogateSettings, attack_cell
from neuralmark.components.errors import InputError
from neuralmark.components.gate import GatePolicy, decide
from neuralmark.components.methods import load_bundle
from neuralmark.components.methods.output_mark.config import OutputMarkConfig
from neuralmark.components.methods.output_mark.matrix import (
    attack_pairs,
    clean_attack_pairs,
    gate_summary,
)
from neuralmark.components.methods.output_mark.seeds import (
    MATRIX_MEAN,
    attacker_settings,
    seed_matrix_rows,
)
from neuralmark.components.stats import clopper_pearson, pooled_flags
from tests.output_mark_micro import CELLS, KEY, MICRO, micro_data

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return micro_data()


def test_steps_by_arch_is_validated_and_falls_back_to_steps() -> None:
    s = SurrogateSettings(steps=150, steps_by_arch={"cnet": 2400, "unet": 1200})
    assert [s.budget(a) for a in ("cnet", "unet", "res9", "res16")] == [2400, 1200, 150, 150]
    assert s.for_arch("cnet").steps == 2400 and s.for_arch("cnet").steps_by_arch == {}
    assert SurrogateSettings(steps=7).budget("cnet") == 7   # default: no map, every cell `steps`
    config = OutputMarkConfig(**MICRO)
    with pytest.raises(InputError, match="steps_by_arch"):
        attacker_settings(config, {"steps_by_arch": {"vgg": 10}})
    with pytest.raises(InputError, match="steps_by_arch"):
        attacker_settings(config, {"steps_by_arch": {"cnet": -1}})


def test_attack_cell_trains_its_arch_s_budget(data) -> None:
    """A cell under the map is the plain run with that many steps, to the bit; an arch the
    map does not name keeps ``steps``."""
    a, b = data["train"]
    query = data["test"][0]
    base = {"width": 4, "depth": 2, "steps": 2, "batch_size": 4, "seed": 3}
    mapped = {**base, "steps_by_arch": {"res9": 5}}
    assert torch.equal(attack_cell(b, a, query, "res9", "l2", mapped),
                       attack_cell(b, a, query, "res9", "l2", {**base, "steps": 5}))
    assert torch.equal(attack_cell(b, a, query, "unet", "l2", mapped),
                       attack_cell(b, a, query, "unet", "l2", base))


def test_seed_matrix_cells_get_their_budget_and_twins_train_on_m_outputs(
        data, monkeypatch, tmp_path) -> None:
    calls: list[tuple[str, int, torch.Tensor]] = []
    real = surrogate.train_image_net

    def spy(net, inputs, targets, loss, steps, *args, **kwargs):
        calls.append((kwargs.get("desc", ""), steps, targets.clone()))
        return real(net, inputs, targets, loss, steps, *args, **kwargs)

    plain = seed_matrix_rows(0, data["train"], data["test"], MICRO, CELLS, KEY)
    monkeypatch.setattr(surrogate, "train_image_net", spy)
    rows = seed_matrix_rows(0, data["train"], data["test"], MICRO, CELLS, KEY,
                            surrogate={"steps_by_arch": {"res9": 6}}, bundle_dir=tmp_path,
                            twins=True, attacker_quality=True)
    # the matrix's last four surrogates: the two marked cells, then their twins
    matrix_calls = calls[-4:]
    assert [(d, k) for d, k, _ in matrix_calls] == [
        ("surrogate_unet_l2", 4), ("surrogate_res9_l2", 6),
        ("surrogate_unet_l2", 4), ("surrogate_res9_l2", 6)]
    assert all(k == 4 for _, k, _ in calls[:-4])   # stage 2's surrogate keeps `steps`
    method = load_bundle(tmp_path / "seed0")       # same M and H as the run's stage 1
    _, marked = attack_pairs(method, data["train"])
    _, clean = clean_attack_pairs(method, data["train"])
    for _, _, targets in matrix_calls[:2]:
        assert torch.allclose(targets, marked, atol=1e-6)
    for _, _, targets in matrix_calls[2:]:
        assert torch.allclose(targets, clean, atol=1e-6)   # M's outputs B, not B′
        assert not torch.allclose(targets, marked, atol=1e-6)

    twins = [r for r in rows if r["label"].startswith("clean_twin_")]
    assert {(r["stage"], r["label"]) for r in twins if r["metric"] == "false_positive_rate"} \
        == {(st, f"clean_twin_surrogate_{a}_l2") for st in ("stage1", "stage2")
            for a in ("unet", "res9")}
    for stage in ("stage1", "stage2"):  # the success mean is over the marked cells only
        srs = [r["value"] for r in rows if r["stage"] == stage and r["metric"] ==
               "success_rate" and r["label"] != MATRIX_MEAN]
        assert len(srs) == len(CELLS)
        mean = next(r["value"] for r in rows if r["stage"] == stage and r["label"] == MATRIX_MEAN)
        assert mean == pytest.approx(sum(srs) / len(srs))
    quality = {(r["label"], r["metric"]) for r in rows if r["stage"] == "attacker"}
    assert quality == {("none", "psnr_service_vs_target")} | {
        (f"surrogate_{a}_l2", m) for a in ("unet", "res9")
        for m in ("psnr_vs_marked", "psnr_vs_target")}
    # the unet cell (same budget as without the map) is the plain run's, twins or not
    key = ("stage2", "surrogate_unet_l2", "success_rate")
    assert {(r["stage"], r["label"], r["metric"]): r["value"] for r in rows}[key] == \
        {(r["stage"], r["label"], r["metric"]): r["value"] for r in plain}[key]
    assert not any(r["label"].startswith("clean_twin_") or r["stage"] == "attacker"
                   for r in plain)


def _rows(twin_rate: float) -> list[dict]:
    def row(label: str, metric: str, value: float, stage: str = "stage2") -> dict:
        return {"method": "output_mark", "attack": label, "strength": None, "label": label,
                "metric": metric, "value": value, "n": 64, "stage": stage}

    return [row("none", "psnr_marked", 40.0), row("none", "sr_marked", 1.0),
            row("none", "fpr_clean_B", 0.0),
            row("surrogate_unet_l2", "success_rate", 1.0),
            row("surrogate_cnet_l2", "success_rate", 0.95),
            row("clean_independent_model", "false_positive_rate", 0.0),
            row("clean_twin_surrogate_unet_l2", "false_positive_rate", twin_rate),
            row("clean_twin_surrogate_cnet_l2", "false_positive_rate", 0.0),
            row("clean_twin_surrogate_unet_l2", "false_positive_rate", 0.5, "stage1")]


def test_gate_refuses_flagged_twins_only_when_the_switch_is_on() -> None:
    policy = GatePolicy(min_psnr=30.0, min_bit_accuracy={},
                        min_detection_rate={"mean_attacked": 0.9}, max_fpr=0.05,
                        primary_metric="detection_rate_mean_attacked")
    off = gate_summary(_rows(0.19))
    assert off["fpr"] == 0.0 and off["fpr_clean_twins"] == pytest.approx(0.19)
    assert off["clean_twin_surrogate_unet_l2/false_positive_rate"] == pytest.approx(0.19)
    assert off["detection_rate_mean_attacked"] == pytest.approx(0.975)  # twins not in the mean
    assert decide(off, None, policy).promote
    on = gate_summary(_rows(0.19), twins_in_fpr=True)
    assert on["fpr"] == pytest.approx(0.19)
    refused = decide(on, None, policy)
    assert not refused.promote and any("fpr" in r for r in refused.reasons)
    assert decide(gate_summary(_rows(0.0), twins_in_fpr=True), None, policy).promote


def test_pooled_flags_of_a_twin_column_is_the_exact_interval() -> None:
    out = pooled_flags([{"k": 0, "n": 64}, {"k": 3, "n": 64}], "k", "n")
    assert out["k"] == 3 and out["n"] == 128 and out["ci95"] == list(clopper_pearson(3, 128))
    assert out["ci95"][0] < out["rate"] < out["ci95"][1]


def test_matrix_settings_twins_in_gate_needs_the_twins() -> None:
    from neuralmark.pipelines.output_mark import matrix_settings

    assert not matrix_settings({}).clean_twins and not matrix_settings({}).twins_in_gate
    assert matrix_settings({"clean_twins": True, "twins_in_gate": True}).twins_in_gate
    with pytest.raises(InputError, match="twins_in_gate needs clean_twins"):
        matrix_settings({"twins_in_gate": True})
    with pytest.raises(InputError, match="steps_by_arch"):
        matrix_settings({"surrogate": {"steps_by_arch": {"vgg": 3}}})


def test_seed_matrix_judges_each_cell_against_the_theft_bar(data) -> None:
    from neuralmark.components.methods.output_mark.matrix import (
        CONVERGED_GAIN_DB,
        TASK_MARGIN_DB,
        theft_bar_rows,
    )

    plain = seed_matrix_rows(0, data["train"], data["test"], MICRO, CELLS, KEY)
    rows = seed_matrix_rows(0, data["train"], data["test"], MICRO, CELLS, KEY,
                            surrogate={"steps_by_arch": {"res9": 3}}, theft_bar=True,
                            attacker_quality=True)
    got = {(r["stage"], r["label"], r["metric"]): r["value"] for r in rows}
    # the unet cell keeps its budget: its success rows are the plain run's, to the bit
    for stage in ("stage1", "stage2"):
        for metric in ("success_rate", "nc_mean"):
            k = (stage, "surrogate_unet_l2", metric)
            assert got[k] == next(r["value"] for r in plain
                                  if (r["stage"], r["label"], r["metric"]) == k)
    service = got[("attacker", "none", "psnr_service_vs_target")]
    for arch in ("unet", "res9"):
        name = f"surrogate_{arch}_l2"
        gain = got[("attacker", name, "bar_fidelity_gain_db")]
        margin = got[("attacker", name, "bar_task_margin_db")]
        assert margin == pytest.approx(got[("attacker", name, "psnr_vs_target")] - service)
        assert got[("attacker", name, "met_theft_bar")] == float(
            gain < CONVERGED_GAIN_DB and margin >= -TASK_MARGIN_DB)
    # the bar itself, on outputs whose PSNRs are known
    marked = torch.full((2, 3, 8, 8), 0.5)
    targets = marked + 0.01                                     # service: 40 dB
    near, nearer = marked + 0.02, marked + 0.019                # +0.45 dB by doubling
    far = marked + 0.05                                         # 26 dB from B′
    bar = theft_bar_rows([("cnet", "l2"), ("unet", "l2")], [near, far], [nearer, marked],
                         marked, targets)
    met = {r["label"]: r["value"] for r in bar if r["metric"] == "met_theft_bar"}
    assert met == {"surrogate_cnet_l2": 1.0, "surrogate_unet_l2": 0.0}  # unet gains 60+ dB
    with pytest.raises(InputError, match="doubled"):
        theft_bar_rows(CELLS, [near, far], [near], marked, targets)
    with pytest.raises(InputError, match="at least 1 step"):
        seed_matrix_rows(0, data["train"], data["test"], MICRO, CELLS, KEY,
                         surrogate={"steps_by_arch": {"res9": 0}}, theft_bar=True)
