"""Variant comparison tables (neuralmark.components.comparison) and variant discovery."""

from __future__ import annotations

import math

import pytest

from neuralmark.components.comparison import tables_markdown, variant_tables

BASELINE = {"psnr": 40.7, "ssim": 0.99, "detection_rate/none": 1.0, "fpr/none": 0.0,
            "detection_rate/jpeg_50": 0.6, "fpr/jpeg_50": 0.1, "fpr": 0.002,
            "attack_success_rate/apgd_linf_8": 1.0,
            "detection_rate_adversarial/apgd_linf_8": 0.0}
SMOOTHED = {"psnr": 32.8, "ssim": 0.95, "detection_rate/none": 1.0, "fpr/none": 0.0,
            "detection_rate/jpeg_50": 0.97, "fpr/jpeg_50": 0.0,
            "attack_success_rate/apgd_linf_8": 0.29,
            "detection_rate_adversarial/apgd_linf_8": 0.71,
            "certified_accuracy/certified_l2_0.5": 0.8}


def test_tables_have_the_seed_shape():
    tables = variant_tables({"baseline": BASELINE, "rs_aug": SMOOTHED})
    assert list(tables) == ["imperceptibility", "detection", "adversarial", "certified"]
    assert tables["imperceptibility"][1] == {"variant": "rs_aug", "psnr": 32.8, "ssim": 0.95}
    jpeg = [r for r in tables["detection"] if r["attack"] == "jpeg_50"]
    assert [(r["variant"], r["stamped_detected"], r["clean_correct"]) for r in jpeg] == [
        ("baseline", 0.6, 0.9), ("rs_aug", 0.97, 1.0)]
    calibrated = [r for r in tables["detection"] if r["attack"] == "calibrated FPR"]
    assert [r["variant"] for r in calibrated] == ["baseline"]  # only it has a calibrated fpr
    assert calibrated[0]["clean_correct"] == pytest.approx(0.998)
    assert [r["attack_success_rate"] for r in tables["adversarial"]] == [1.0, 0.29]
    certified = tables["certified"]
    assert certified[0]["radius"] == "0.5" and math.isnan(certified[0]["certified_accuracy"])
    md = tables_markdown(tables)
    assert "## adversarial" in md and "| rs_aug | apgd_linf_8 | 0.29 | 0.71 | — |" in md
    assert "| baseline | 0.5 | — |" in md  # missing metric shown as a dash, not 0


def test_tables_skip_what_no_variant_has_and_refuse_nothing():
    tables = variant_tables({"only": {"psnr": 30.0, "ssim": 0.9}})
    assert list(tables) == ["imperceptibility", "detection"] and tables["detection"] == []
    assert "## detection" not in tables_markdown(tables)
    with pytest.raises(ValueError, match="no variants"):
        variant_tables({})
