"""``scripts/train_shipped_anti_forward.py``: a re-calibration that cannot reach its FPR is
refused before it replaces the bundle's calibration (af9 found ``--recalibrate`` wrote such a
bundle, then crashed printing its missing threshold)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from neuralmark.components.methods import build
from neuralmark.components.methods.anti_forward import AntiForward
from tests.script_modules import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_shipped_anti_forward.py"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def script():
    return load_script("train_shipped_anti_forward")


def _calibrated(scores: int, fpr: float) -> dict:
    torch.manual_seed(0)
    method = build("anti_forward", {**AntiForward.smoke_config, "calibration_scores": scores,
                                    "fpr": fpr})
    clean = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return method.calibrate(clean, torch.Generator().manual_seed(9))


def test_a_calibration_too_small_for_its_fpr_is_refused_naming_the_scores_it_needs(
        script, tmp_path):
    cal = _calibrated(8, 1e-3)
    assert cal["threshold_statistic"] is None and cal["n_scores"] == 8
    with pytest.raises(SystemExit, match=r"8 clean scores cannot reach fpr = 0\.001 .*"
                                         r"--calibration-scores of at least 1000 .*unchanged"):
        script.require_threshold(cal, 1e-3, tmp_path / "final")


def test_a_calibration_that_reaches_its_fpr_passes(script, tmp_path):
    cal = _calibrated(40, 0.05)
    assert cal["threshold_statistic"] is not None
    script.require_threshold(cal, 0.05, tmp_path / "final")  # no exception


def test_the_shipped_card_says_what_the_seeds_71_percent_is(script):
    """af11: the card's line on the seed's APGD figure is the generator's (a soft vote
    share under a transfer attack, not a detection rate), not the old "71% kept"."""
    card = (SCRIPT.parents[1] / "components" / "pretrained" / "anti_forward"
            / "MODEL_CARD.md").read_text()
    assert script.SEED_APGD_NOTE in card
    assert "soft vote share" in script.SEED_APGD_NOTE and "noise-free" in script.SEED_APGD_NOTE
    assert "The seed reports 71% kept for its smoothed scanner under APGD." not in card
