"""``scripts/anti_forward_apgd_curve.py``: the APGD curve over ε under the card's and the
seed's protocols, on a micro scanner and real photo crops (af10)."""

from __future__ import annotations

import argparse

import pytest
import torch

from neuralmark.components.methods import build
from neuralmark.components.methods.anti_forward import AntiForward
from tests.photo_crops import crops
from tests.script_modules import load_script

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def script():
    return load_script("anti_forward_apgd_curve")


def test_eps_lists_keep_their_order_and_refuse_bad_values(script):
    assert script.parse_eps("8,4, 2,4,1") == [8.0, 4.0, 2.0, 1.0]
    for bad in ("", "0,2", "-1", "two"):
        with pytest.raises(argparse.ArgumentTypeError):
            script.parse_eps(bad)
    assert [a[1:] for a in script.attacks_of("card", 20, 4)] == [("apgd", 20, 0),
                                                                  ("apgd_eot", 20, 4)]
    assert script.attacks_of("seed", 20, 4) == [("seed APGD-CE", "apgd", 100, 0)]
    with pytest.raises(ValueError, match="protocol"):
        script.attacks_of("paper", 20, 4)


def test_curve_attacks_within_eps_judges_three_ways_and_writes_card_and_figure(
        script, photo, tmp_path, monkeypatch):
    torch.manual_seed(0)
    method = build("anti_forward", {**AntiForward.smoke_config, "sigma": 0.25,
                                    "payload_bits": 0, "message_bits": 0})
    clean = crops(photo, 2)
    method.calibrate(crops(photo, 4), torch.Generator().manual_seed(9))
    with torch.no_grad():
        marked = method.embed(clean, None)
    monkeypatch.setattr(script, "SEED_STEPS", 3)  # the seed's 100 iterations, made micro
    save = tmp_path / "results.json"
    results = script.curve(method, clean, marked, [4.0, 2.0], ["card", "seed"], steps=2,
                           eot=2, save=save)
    assert save.exists()
    rows = results["curve"]
    assert [(r["attack"], r["eps_255"]) for r in rows] == [
        ("APGD", 4.0), ("APGD-EoT", 4.0), ("seed APGD-CE", 4.0),
        ("APGD", 2.0), ("APGD-EoT", 2.0), ("seed APGD-CE", 2.0)]
    for r in rows:
        for goal in ("remove", "forge"):
            assert r[goal]["linf_255"] <= r["eps_255"] + 1e-3   # never past ε
            assert set(r[goal]) >= {"smoothed", "verify", "vote", "plain"}
            assert len(r[goal]["verify"]) == 2
            assert all(d in (0, 1, None) for d in r[goal]["smoothed"])
            # the vote share is read from the smoothed judge's n draws: a multiple of 1/n
            assert all(0 <= v <= 1 and (v * method.config.n) % 1 == 0
                       for v in r[goal]["vote"])
    with pytest.raises(ValueError, match="differ"):
        script.curve(method, clean, marked[:1], [2.0], ["card"], steps=1, eot=1)

    figure = tmp_path / "curve.png"
    script.plot(results, figure)
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = script.section(results, "fig.png")
    assert lines[0] == script.BEGIN and lines[-1] == script.END
    table = [x for x in lines if x.startswith("| ")]
    assert len(table) == 1 + 1 + len(rows)                     # header, none, rows
    assert "seed APGD-CE (3 steps) | 2 |" in "\n".join(table)
    assert "Figure: `fig.png`." in lines
