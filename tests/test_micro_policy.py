"""``tests/micro_policy.open_gate``: every gate of every profile opened, none forgotten."""

from __future__ import annotations

import pytest

from neuralmark.components.gate import GatePolicy, decide, metric_key
from neuralmark.runtime.settings import PROFILES_DIR, deep_merge, load_profile, resolve
from tests.micro_policy import OPEN, open_gate

SECTIONS = [(profile, method) for profile in ("tiny", "full")
            for method in load_profile(profile)]


def _worst_candidate(policy: GatePolicy) -> dict[str, float]:
    """Every gated metric present, each as far on the wrong side as a run could put it."""
    worst = {"psnr": -1e6, "fpr": 1.0, policy.primary_metric: 0.0}
    worst |= {metric_key("bit_accuracy", k): 0.0 for k in policy.min_bit_accuracy}
    worst |= {metric_key("detection_rate", k): 0.0 for k in policy.min_detection_rate}
    worst |= {k: -1e6 for k in policy.min_metric}
    worst |= {k: 1e6 for k in policy.max_metric}
    return worst


@pytest.mark.parametrize(("profile", "method"), SECTIONS)
def test_the_opened_profile_policy_passes_any_run_that_reports_every_gated_metric(profile,
                                                                                 method):
    closed = GatePolicy(**load_profile(profile)[method]["policy"])
    opened = GatePolicy(**deep_merge(closed.model_dump(), open_gate(method, profile)))
    # the same gates by name: none dropped, none added
    assert set(opened.min_metric) == set(closed.min_metric)
    assert set(opened.max_metric) == set(closed.max_metric)
    assert set(opened.min_detection_rate) == set(closed.min_detection_rate)
    assert set(opened.min_bit_accuracy) == set(closed.min_bit_accuracy)
    worst = _worst_candidate(closed)
    assert decide(worst, None, opened).promote, decide(worst, None, opened).reasons
    # ... and still refuses a run that leaves a gated metric out
    for key in [*closed.min_metric, *closed.max_metric]:
        missing = {k: v for k, v in worst.items() if k != key}
        refused = decide(missing, None, opened)
        assert not refused.promote and any(r.startswith(f"{key} is missing")
                                           for r in refused.reasons)


def test_a_gate_added_to_the_profile_is_opened_without_naming_it(tmp_path):
    text = (PROFILES_DIR / "tiny.yaml").read_text()
    # a new floor in visible_gan's policy, as a later session would add it
    patched = text.replace("      accuracy/clean: 0.4", "      accuracy/clean: 0.4\n"
                           "      new_gate/deepstamp: 0.99", 1)
    assert patched != text
    (tmp_path / "tiny.yaml").write_text(patched)
    assert load_profile("tiny", tmp_path)["visible_gan"]["policy"]["min_metric"][
        "new_gate/deepstamp"] == 0.99
    opened = open_gate("visible_gan", "tiny", tmp_path)
    assert opened["min_metric"]["new_gate/deepstamp"] == -OPEN


def test_the_visible_gan_micro_settings_resolve_with_the_opened_gate():
    settings = resolve("visible_gan", "tiny", evaluation={"attacks": ["none", "jpeg"]},
                       policy=open_gate("visible_gan"))
    assert settings.policy.min_metric["removal_left_vs_static/deepstamp"] == -OPEN
    assert settings.policy.max_metric["removal_left/static"] == OPEN
    assert settings.policy.min_detection_rate == {"none": 0.0}
