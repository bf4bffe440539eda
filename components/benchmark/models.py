"""The model section of the benchmark: model watermarks through the shared model attacks.

A model method (``trigger_key``, ``output_mark`` and the trigger_key baselines) marks a
network, not images, so its rows are its own table: for each model method whose shipped
files hold a marked host, every (attack, strength) of the model sweep
(``attacks.model_registry``: pruning, fine-tuning on the host's data and on new data,
distillation, overwriting) is run on a copy of the host, and the attacked copy is verified
with the owner's key (``trigger_key.evaluation.evaluate_attacks``, what ``attack-model`` and
the trigger_key pipeline run). Rows: ``model_detected`` (1 / 0), ``task_psnr`` (the host's
own task on its test patches: a "removal" that ruins the host shows as such), ``p_value``,
``d_rel`` / ``ncc`` where the method reports them. A model method without shipped files is a
row saying so.

The host's task data are the photos bundled with the package
(``trigger_key.host_files.sample_task_images``, what ``attack-model`` trains on).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from neuralmark.components.attacks.model_registry import (
    ModelAttackSettings,
    ModelSuite,
    get_model_attack,
)
from neuralmark.components.errors import InputError
from neuralmark.components.methods.base import WatermarkKey
from neuralmark.components.methods.registry import (
    available,
    load_bundle,
    method_class,
    shipped_bundle,
)

Row = dict[str, Any]

#: model attack → strengths (pruning rate, training epochs; ``None``: no knob)
MODEL_SWEEPS: dict[str, list[float | None]] = {
    "prune": [0.1, 0.25, 0.5, 0.75],
    "fine_tune_original": [1.0, 5.0],
    "fine_tune_new": [1.0, 5.0],
    "distill": [1.0],
    "overwrite": [None],
}
#: ``--quick``: cheap points (a quarter epoch of fine-tuning); no distillation and no
#: overwriting (a whole re-embedding and re-calibration of the host: minutes on a CPU)
QUICK_MODEL_SWEEPS: dict[str, list[float | None]] = {
    "prune": [0.25, 0.5],
    "fine_tune_original": [0.25],
    "fine_tune_new": [0.25],
}
#: swept only when named (``--model-attacks fine_tune_noise``), never by default, so the
#: default benchmark keeps its length: the keyless noise fine-tuning (tk11), at the plain
#: fine-tuning's points (its epochs count the task data, so it costs as many steps)
OPTIONAL_MODEL_SWEEPS: dict[str, list[float | None]] = {
    "fine_tune_noise": [1.0, 5.0],
}
#: ``--quick`` points of the optional attacks
QUICK_OPTIONAL_MODEL_SWEEPS: dict[str, list[float | None]] = {
    "fine_tune_noise": [0.25],
}
#: what the model table reports of ``evaluate_attacks``' rows (``psnr`` is the task's)
_METRICS = {"detected": "model_detected", "psnr": "task_psnr", "p_value": "p_value",
            "d_rel": "d_rel", "ncc": "ncc"}


def model_methods() -> list[str]:
    """Registered methods that mark networks (``kind == "model"``)."""
    return [k for k in available() if method_class(k).kind == "model"]


def model_suite(attacks: Sequence[str] | None = None, quick: bool = False) -> ModelSuite:
    """The model sweep of the chosen attacks (``None``: every one of the default sweep table;
    the optional ones, :data:`OPTIONAL_MODEL_SWEEPS`, only when named).

    Raises:
        InputError: an unknown model attack, or one without a sweep (the message lists them).
    """
    default = QUICK_MODEL_SWEEPS if quick else MODEL_SWEEPS
    table = {**default, **(QUICK_OPTIONAL_MODEL_SWEEPS if quick else OPTIONAL_MODEL_SWEEPS)}
    chosen = list(default) if attacks is None else []
    for name in attacks or ():
        key = get_model_attack(name).name  # InputError listing the model attacks
        if key not in table:
            raise InputError(f"model attack {name!r} has no {'quick ' if quick else ''}sweep; "
                             f"swept: {', '.join(table)}")
        if key not in chosen:
            chosen.append(key)
    return [(key, list(table[key])) for key in chosen]


def check_model_methods(keys: Sequence[str]) -> None:
    """``InputError`` for a name that is not a registered model method."""
    for key in keys:
        if method_class(key).kind != "model":  # InputError listing the registered methods
            raise InputError(f"{key!r} is a content method, not a model method; model "
                             f"methods: {', '.join(model_methods())}")


def _unavailable(key: str, note: str) -> Row:
    return {"method": key, "family": "model", "attack": "none", "strength": None,
            "label": "model", "metric": "unavailable", "value": None, "n": 0, "note": note}


def model_rows(key: str, secret: str, suite: ModelSuite, *, seed: int = 0,
               device: str = "cpu") -> list[Row]:
    """The model table's rows of method ``key``: its shipped host through ``suite``.

    Args:
        key: a registered model method.
        secret: the key the shipped host was marked under (the demo key its card states).
        suite: ``[(model attack, [strength, ...]), ...]`` (``model_suite``).
        seed: seeds the attacker's batch draws.
        device: where the attacks train.

    Returns:
        Tidy rows (``runner.COLUMNS``), the unattacked host first; one ``unavailable`` row
        when no shipped files hold a host to attack.
    """
    from neuralmark.components.methods.trigger_key.evaluation import evaluate_attacks
    from neuralmark.components.methods.trigger_key.host import HostMark
    from neuralmark.components.methods.trigger_key.host_files import sample_task_images

    bundle = shipped_bundle(key)
    if bundle is None:
        return [_unavailable(key, "no shipped files: no marked host of this method ships "
                                  "with the package to attack")]
    method = load_bundle(bundle, device=device)
    if not isinstance(method, HostMark):
        return [_unavailable(key, "its shipped files hold no host network to attack")]
    method.set_task_data(sample_task_images())
    settings = ModelAttackSettings(seed=seed, device=device)
    rows = evaluate_attacks({key: (method, WatermarkKey(secret))}, suite, settings)
    out = []
    for r in rows:
        if r["metric"] not in _METRICS:
            continue
        strength = r["strength"]
        out.append({"method": key, "family": "model", "attack": r["attack"],
                    "strength": None if strength != strength else strength,  # NaN: no knob
                    "label": r["label"], "metric": _METRICS[r["metric"]], "value": r["value"],
                    "n": 1, "note": f"shipped host components/pretrained/{key}, key {secret!r}"
                                    if r["attack"] == "none" else ""})
    return out
