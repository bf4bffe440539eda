"""The promotion gate is a pure function of metrics and policy."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from neuralmark.components.gate import Decision, GatePolicy, decide

POLICY = GatePolicy(
    min_psnr=35.0,
    min_bit_accuracy={"jpeg_50": 0.8, "mean_attacked": 0.85},
    min_detection_rate={"rotate_5": 0.9},
    max_fpr=0.01,
    max_regression=0.02,
)

GOOD = {
    "psnr": 38.2,
    "ssim": 0.97,
    "bit_accuracy/jpeg_50": 0.91,
    "bit_accuracy_mean_attacked": 0.93,
    "detection_rate/rotate_5": 0.97,
    "detection_rate_mean_attacked": 0.95,
    "fpr": 0.002,
}


def test_promotes_when_every_floor_is_met():
    decision = decide(GOOD, {**GOOD, "bit_accuracy_mean_attacked": 0.92}, POLICY)
    assert decision == Decision(promote=True, reasons=[], notes=[])
    assert decision.to_dict() == {"promote": True, "reasons": [], "notes": []}


def test_first_candidate_without_champion_is_promoted_with_a_note():
    decision = decide(GOOD, None, POLICY)
    assert decision.promote
    assert decision.reasons == []
    assert any("no champion" in n for n in decision.notes)


def test_refuses_with_one_reason_per_failing_floor():
    bad = {**GOOD, "psnr": 31.5, "bit_accuracy/jpeg_50": 0.62, "detection_rate/rotate_5": 0.4,
           "fpr": 0.05}
    decision = decide(bad, None, POLICY)
    assert not decision.promote
    assert len(decision.reasons) == 4
    text = "\n".join(decision.reasons)
    for metric, value, bound in [("psnr", "31.5", "floor 35"),
                                 ("bit_accuracy/jpeg_50", "0.62", "floor 0.8"),
                                 ("detection_rate/rotate_5", "0.4", "floor 0.9"),
                                 ("fpr", "0.05", "ceiling 0.01")]:
        line = next(r for r in decision.reasons if r.startswith(metric + " "))
        assert value in line and bound in line, line
    assert "bit_accuracy_mean_attacked" not in text


def test_mean_attacked_floor_reads_the_mean_key():
    decision = decide({**GOOD, "bit_accuracy_mean_attacked": 0.84}, None, POLICY)
    assert not decision.promote
    assert decision.reasons == ["bit_accuracy_mean_attacked = 0.84 is below the floor 0.85"]


@pytest.mark.parametrize("metric", ["psnr", "bit_accuracy/jpeg_50", "bit_accuracy_mean_attacked",
                                    "detection_rate/rotate_5", "fpr"])
def test_missing_required_metric_never_promotes(metric):
    candidate = {k: v for k, v in GOOD.items() if k != metric}
    decision = decide(candidate, None, POLICY)
    assert not decision.promote
    assert len(decision.reasons) == 1
    assert decision.reasons[0].startswith(f"{metric} is missing")


@pytest.mark.parametrize("bad", [math.nan, None, "n/a"])
def test_nan_or_non_numeric_fails(bad):
    decision = decide({**GOOD, "fpr": bad}, None, POLICY)
    assert not decision.promote
    assert decision.reasons[0].startswith("fpr ")
    assert "ceiling 0.01" in decision.reasons[0]
    nan_primary = decide({**GOOD, "bit_accuracy_mean_attacked": math.nan}, GOOD, POLICY)
    assert not nan_primary.promote
    assert nan_primary.reasons == ["bit_accuracy_mean_attacked is NaN (required, floor 0.85)"]


def test_regression_against_champion():
    champion = {**GOOD, "bit_accuracy_mean_attacked": 0.97}
    decision = decide(GOOD, champion, POLICY)  # 0.93 < 0.97 - 0.02
    assert not decision.promote
    assert decision.reasons == [
        "bit_accuracy_mean_attacked = 0.93 regresses vs champion 0.97 by more than 0.02 "
        "(floor 0.95)"
    ]
    within = decide(GOOD, {**GOOD, "bit_accuracy_mean_attacked": 0.945}, POLICY)
    assert within.promote


def test_regression_on_a_lower_is_better_primary_metric():
    policy = POLICY.model_copy(update={"primary_metric": "fpr", "max_regression": 0.0})
    worse = decide({**GOOD, "fpr": 0.004}, {**GOOD, "fpr": 0.001}, policy)
    assert not worse.promote and "ceiling 0.001" in worse.reasons[0]
    assert decide({**GOOD, "fpr": 0.001}, {**GOOD, "fpr": 0.004}, policy).promote


def test_missing_primary_metric_outside_the_floors_fails():
    policy = POLICY.model_copy(update={"primary_metric": "detection_rate_mean_attacked"})
    candidate = {k: v for k, v in GOOD.items() if k != "detection_rate_mean_attacked"}
    decision = decide(candidate, GOOD, policy)
    assert not decision.promote
    assert decision.reasons == [
        "detection_rate_mean_attacked is missing (required: primary metric; "
        "champion 0.95, max regression 0.02)"
    ]


def test_champion_without_primary_metric_skips_comparison_with_a_note():
    decision = decide(GOOD, {"psnr": 40.0}, POLICY)
    assert decision.promote
    assert any("regression check skipped" in n for n in decision.notes)


def test_policy_is_frozen_and_strict():
    with pytest.raises(ValidationError, match="min_psnrr"):
        GatePolicy(min_psnrr=30, min_bit_accuracy={}, max_fpr=0.01)
    with pytest.raises(ValidationError, match="jpeg_50"):
        GatePolicy(min_psnr=30, min_bit_accuracy={"jpeg_50": 80}, max_fpr=0.01)
    with pytest.raises(ValidationError):
        GatePolicy(min_psnr=30, min_bit_accuracy={}, max_fpr=1.5)
    with pytest.raises(ValidationError):
        POLICY.min_psnr = 10  # type: ignore[misc]


# The removal policy of model methods: a failed ``detected/<label>`` floor counts only when
# the attacked host kept its task quality (figures of the RED tiny run, issue #13).
MODEL_POLICY = dict(min_psnr=20.0, min_bit_accuracy={}, max_fpr=0.05,
                    primary_metric="detection_rate_mean_attacked",
                    min_metric={"detected/none": 1.0, "detected/fine_tune_original_1": 1.0})
MODEL = {"psnr": 28.31, "fpr": 0.005, "detection_rate_mean_attacked": 0.5,
         "detected/none": 1.0, "psnr/none": 28.31,
         "detected/fine_tune_original_1": 0.0, "psnr/fine_tune_original_1": 26.02}


def test_removal_policy_off_counts_every_failed_detection():
    decision = decide(MODEL, None, GatePolicy(**MODEL_POLICY))
    assert not decision.promote
    assert decision.reasons == ["detected/fine_tune_original_1 = 0 is below the floor 1"]


def test_removal_policy_excuses_an_attack_that_ruined_the_host_with_a_note():
    decision = decide(MODEL, None, GatePolicy(**MODEL_POLICY, max_removal_psnr_drop=1.0))
    assert decision.promote and decision.reasons == []
    note = next(n for n in decision.notes if n.startswith("detected/fine_tune_original_1"))
    assert "not a removal" in note and "26.02" in note and "2.29 dB below" in note


def test_removal_policy_counts_a_removal_that_kept_the_quality():
    kept = {**MODEL, "psnr/fine_tune_original_1": 27.5}  # 0.81 dB below the marked host
    decision = decide(kept, None, GatePolicy(**MODEL_POLICY, max_removal_psnr_drop=1.0))
    assert not decision.promote
    assert len(decision.reasons) == 1
    assert "kept the host's quality" in decision.reasons[0]
    # a tighter δ turns the same 0.81 dB into a ruined host
    assert decide(kept, None, GatePolicy(**MODEL_POLICY, max_removal_psnr_drop=0.5)).promote


def test_removal_policy_never_excuses_what_it_cannot_judge():
    blind = {k: v for k, v in MODEL.items() if k != "psnr/fine_tune_original_1"}
    decision = decide(blind, None, GatePolicy(**MODEL_POLICY, max_removal_psnr_drop=1.0))
    assert not decision.promote
    assert "needs psnr/fine_tune_original_1" in decision.reasons[0]
    # only detected/ floors are judged by the attacked quality; other floors stay raw
    low = {**MODEL, "detection_rate_mean_attacked": 0.5, "psnr/fine_tune_original_1": 28.0}
    policy = GatePolicy(**{**MODEL_POLICY, "min_metric": {"detection_rate_mean_attacked": 0.9}},
                        max_removal_psnr_drop=1.0)
    assert decide(low, None, policy).reasons == [
        "detection_rate_mean_attacked = 0.5 is below the floor 0.9"]
    with pytest.raises(ValidationError):
        GatePolicy(**MODEL_POLICY, max_removal_psnr_drop=-1.0)
