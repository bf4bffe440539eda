"""``scripts/anti_forward_verify_stages.py``: ``verify``'s two stages judged apart, and the
scan statistic's reductions re-judged from stored margins (af11)."""

from __future__ import annotations

import pytest
import torch

from neuralmark.components.methods import build
from neuralmark.components.methods.anti_forward import AntiForward
from tests.photo_crops import crops
from tests.script_modules import load_script

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def script():
    return load_script("anti_forward_verify_stages")


def _side(margins: list[list[float]], cert: list[int | None]) -> dict:
    return {"margins": margins, "plain_margin": [0.0] * len(margins), "cert_label": cert,
            "cert_p_lower": [0.9] * len(margins), "vote": [0.8] * len(margins),
            "verify": [0] * len(margins)}


def test_judge_counts_each_stage_and_recalibrates_each_reduction(script):
    # 2000 clean views whose margins are all ≤ 0 except one draw of one view: the mean
    # margin's threshold is the clean maximum mean, the vote share's 1/4
    cal = [[-1.0, -1.0, -1.0, -1.0]] * 1999 + [[3.0, -1.0, -1.0, -1.0]]
    # stamped after an attack: large mean margin but few positive draws (image 0), many
    # small positive draws (image 1: a high vote, a low mean), all positive (image 2)
    attacked = [[9.0, -1.0, -1.0, -1.0], [0.2, 0.2, 0.2, -0.7], [5.0, 5.0, 5.0, 5.0]]
    results = {"deployed_k": 4, "bank": 4, "fpr": 5e-4, "deployed_threshold": 0.0,
               "calibration": cal, "heldout_clean": [[-1.0] * 4] * 3,
               "heldout_stamped": attacked,
               "unattacked": {"remove": _side(attacked, [1, 1, 1]),
                              "forge": _side([[-1.0] * 4] * 3, [0, 0, None])},
               "attacks": [{"eps_255": 2.0, "seconds": 1.0,
                            "remove": _side(attacked, [1, None, 1]),
                            "forge": _side([[-1.0] * 4] * 3, [0, 0, 0])}],
               "images": 3, "n": 256, "steps": 1, "eot": 1, "deployed_n_scores": 2000,
               "calibration_seconds": 1.0}
    assert [name for name, _ in [(script.name_of(h, k), k) for h, k in
                                 script.candidates(4, 4)]] == [
        "mean_margin K=4", "mean_probability K=4", "vote_share K=4"]
    judged = script.judge(results)
    mean, vote = judged["mean_margin K=4"], judged["vote_share K=4"]
    assert mean["threshold"] == pytest.approx(0.0)   # the clean max of the means
    assert vote["threshold"] == pytest.approx(0.25)  # the clean max of the vote shares
    assert judged["deployed (bundle's threshold)"]["threshold"] == 0.0
    # mean margin passes images 0 (mean 1.5) and 2; the vote share passes 1 and 2
    assert mean["sets"]["2"]["remove"]["stage1"] == 2
    assert vote["sets"]["2"]["remove"]["stage1"] == 2
    # verify = stage 1 AND the certificate: image 1's certificate abstains under attack
    assert mean["sets"]["2"]["remove"]["verify"] == 2
    assert vote["sets"]["2"]["remove"]["verify"] == 1
    assert vote["sets"]["0"]["remove"]["verify"] == 2
    assert mean["heldout_stamped"] == 2 and mean["heldout_clean"] == 0
    lines = script.section(results, judged)
    assert lines[0] == script.BEGIN and lines[-1] == script.END
    assert sum(line.startswith("| vote_share K=4 | 0.25 |") for line in lines) == 1
    # where the statistic sits: 1 of the 2000 clean views has a positive draw, none a majority
    assert any("0 have a majority of the 4 noisy draws" in line for line in lines)
    assert any(line.startswith("- stamped, APGD-EoT 2/255: deployed statistic median")
               for line in lines)
    record = script.card_record(results, judged)
    assert "calibration" not in record and record["judged"]["vote_share K=4"]["threshold"] == 0.25


def test_stages_of_a_micro_scanner_on_photo_crops(script, photo):
    torch.manual_seed(0)
    method = build("anti_forward", {**AntiForward.smoke_config, "payload_bits": 0,
                                    "message_bits": 0, "score_noise_samples": 2})
    wide = method.with_config(score_noise_samples=5)
    x = crops(photo, 3, 32)
    stages = script.judge_stages(method, wide, x)
    assert len(stages["margins"]) == 3 and len(stages["margins"][0]) == 5
    # the wide bank starts with the deployed one: its first K margins are the statistic's
    first = torch.tensor(stages["margins"])[:, :2].mean(1)
    assert torch.allclose(first, method.scan_statistic(x), atol=1e-5)
    assert stages["verify"] == [0, 0, 0]  # uncalibrated: never "detected"
    assert all(0 <= v <= 1 for v in stages["vote"])
