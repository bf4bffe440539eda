"""The gate policy the micro pipeline tests run under: every gate of the profile, opened.

A micro run (a few steps on a few images) measures nothing, so its gate must pass whatever
the numbers; but it must still see every gated metric (a missing one refuses promotion), so
the test checks that the pipeline produces them. :func:`open_gate` derives the override
from the profile itself: each floor and ceiling the profile lists is kept by name and set
wide open. A gate added to ``configs/profiles/<profile>.yaml`` is listed there once and is
opened here without touching any test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from neuralmark.runtime.settings import load_profile

#: a bound no measured figure reaches (finite: the override travels through YAML / JSON)
OPEN = 1.0e9


def open_gate(method: str, profile: str = "tiny",
              profiles_dir: Path | None = None) -> dict[str, Any]:
    """A ``policy`` override that opens every gate ``profile`` sets for ``method``.

    Rates (``min_bit_accuracy``, ``min_detection_rate``) get the floor 0, ``max_fpr`` 1,
    ``max_regression`` 1, ``min_psnr`` −:data:`OPEN`; every ``min_metric`` key the floor
    −:data:`OPEN` and every ``max_metric`` key the ceiling :data:`OPEN`. The keys are the
    profile's, so deep-merged over it (``runtime.settings.resolve``) nothing stays closed.
    ``profiles_dir``: where the profile files live (default ``configs/profiles``).
    """
    policy = load_profile(profile, profiles_dir)[method]["policy"]
    return {"min_psnr": -OPEN, "max_fpr": 1.0, "max_regression": 1.0,
            "min_bit_accuracy": {k: 0.0 for k in policy.get("min_bit_accuracy") or {}},
            "min_detection_rate": {k: 0.0 for k in policy.get("min_detection_rate") or {}},
            "min_metric": {k: -OPEN for k in policy.get("min_metric") or {}},
            "max_metric": {k: OPEN for k in policy.get("max_metric") or {}}}
