"""The trigger_key pipeline's science, one function per stage (the steps call one each).

A ZenML step hands a method to the next as its bundle, which keeps weights, S, η and the
metrics but not the task pairs (they are in memory only). Every stage therefore takes the
dataset it came from (a ``manifest.csv`` and the test splits) and re-derives the same
pairs: :meth:`HostMark.set_task_data` draws them from the config's seed, so they are
byte-identical in every stage.

Stages: :func:`train_unmarked` (the host), :func:`train_independent` (another host, for
the null), :func:`mark_owner` (embed, calibrate η, visualizer — ``protect`` without the
fit), :func:`mark_baseline` (Base-1 / Base-2 in the same unmarked host),
:func:`attack_rows` (one attack of the shared registry on one marked method),
:func:`uniqueness_study`, :func:`fidelity_rows`, then :func:`gate_summary` and
:func:`report_markdown` over the tidy rows. :func:`check_policy_labels` refuses a policy
naming an attack the suite does not run, :func:`check_calibration_sizes` a run whose
calibrations cannot reach alpha (both before anything is trained).

Shapes: images ``C×H×W`` in [0, 1] (a list: the photos differ in size); pairs
``N×C×S×S``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from neuralmark.components.attacks.model_registry import (
    ModelAttackSettings,
    ModelSuite,
    get_model_attack,
)
from neuralmark.components.data.restoration import load_split_images
from neuralmark.components.errors import InputError
from neuralmark.components.methods.base import Callbacks, WatermarkKey
from neuralmark.components.methods.registry import build
from neuralmark.components.methods.trigger_key import analysis, calibration, tables
from neuralmark.components.methods.trigger_key.config import TriggerKeyConfig
from neuralmark.components.methods.trigger_key.evaluation import evaluate_attacks
from neuralmark.components.methods.trigger_key.host import HostMark
from neuralmark.components.methods.trigger_key.method import TriggerKey
from neuralmark.components.metrics import psnr, ssim
from neuralmark.components.nets.image_nets import apply_net

Row = dict[str, Any]
#: the two baselines, run under the same attacks as trigger_key
BASELINES = (tables.BASE1, tables.BASE2)
#: summary key prefix of the gate's per-attack verification (``detected/<label>``)
DETECTED = "detected/"


def as_trigger_key(method: Any) -> TriggerKey:
    """``method`` if it is a trigger_key method (what a step loaded), else ``InputError``."""
    if not isinstance(method, TriggerKey):
        raise InputError(f"expected a trigger_key method, got {type(method).__name__}")
    return method


def as_host_mark(method: Any) -> HostMark:
    """``method`` if it is a host watermark (trigger_key or a baseline), else ``InputError``."""
    if not isinstance(method, HostMark):
        raise InputError(f"expected a host watermark, got {type(method).__name__}")
    return method


# -- data and training --------------------------------------------------------------------------


def task_images(manifest: str | os.PathLike, test_splits: Sequence[str] = ("val", "test"),
                limit: int | None = None) -> dict[str, list[torch.Tensor]]:
    """``{"train": [...], "test": [...]}``: clean ``3×H×W`` images of a manifest's splits.

    Raises:
        InputError: no manifest, or an empty split.
    """
    test: list[torch.Tensor] = []
    for split in test_splits:
        test += load_split_images(manifest, split, limit)
    return {"train": load_split_images(manifest, "train", limit), "test": test}


def skimage_images(names: Sequence[str], n_train: int,
                   size: int = 256) -> dict[str, list[torch.Tensor]]:
    """``{"train": [...], "test": [...]}`` from scikit-image's ``data`` photos, by name.

    Each photo becomes a ``3×size×size`` tensor in [0, 1] (greyscale replicated, the top-left
    crop); the first ``n_train`` train the host, the rest test it. What the trigger_key
    research scripts fit on, so their figures stay comparable.
    """
    from skimage import data

    images = []
    for name in names:
        a = torch.tensor(getattr(data, name)()).float() / 255
        a = a[None].expand(3, -1, -1) if a.ndim == 2 else a.permute(2, 0, 1)[:3]
        images.append(a[:, :size, :size])
    return {"train": images[:n_train], "test": images[n_train:]}


def with_data(method: HostMark, manifest: str | os.PathLike,
              test_splits: Sequence[str] = ("val", "test")) -> HostMark:
    """``method`` with its task pairs set from the manifest (in place; returned)."""
    method.set_task_data(task_images(manifest, test_splits))
    return method


def train_unmarked(config: Mapping[str, Any], manifest: str | os.PathLike,
                   test_splits: Sequence[str] = ("val", "test"),
                   callbacks: Callbacks | Sequence[Any] = ()) -> tuple[TriggerKey,
                                                                       dict[str, float]]:
    """Build trigger_key from ``config`` and train its unmarked host on the manifest.

    Returns:
        ``(method, fit metrics)``: ``host_psnr``, ``input_psnr``, ``host_loss_end``.
    """
    method = build("trigger_key", dict(config))
    if not isinstance(method, TriggerKey):
        raise InputError(f"config builds {method.key}, not trigger_key")
    metrics = method.fit(task_images(manifest, test_splits), callbacks)
    return method, metrics


def train_independent(unmarked: HostMark, manifest: str | os.PathLike,
                      test_splits: Sequence[str] = ("val", "test"), seed: int = 1000,
                      callbacks: Callbacks | Sequence[Any] = ()) -> TriggerKey:
    """Another host trained on the same pairs from another init and batch order.

    Returned as an unmarked trigger_key method whose ``host`` (and ``unmarked``) is that
    host, so it travels between steps as a bundle like every method.
    """
    with_data(unmarked, manifest, test_splits)
    net = unmarked.train_independent_host(seed, callbacks)
    holder = unmarked.with_config()
    if not isinstance(holder, TriggerKey):
        raise InputError(f"expected a trigger_key host, got {holder.key}")
    holder.host.load_state_dict(net.state_dict())
    holder.unmarked.load_state_dict(net.state_dict())
    holder.fingerprint, holder.trained = "", True
    holder.metrics = {"host_psnr": unmarked.task_psnr_of(net)}
    return holder


def mark_owner(unmarked: TriggerKey, key: WatermarkKey, independent: Sequence[nn.Module],
               manifest: str | os.PathLike, test_splits: Sequence[str] = ("val", "test"),
               callbacks: Callbacks | Sequence[Any] = ()) -> TriggerKey:
    """Embed ``key`` in a copy of the unmarked host, calibrate η, train the visualizer.

    ``independent`` hosts join the calibration null and the visualizer's negatives (the
    λ = 0 fine-tuning and the unmarked host always do). ``unmarked`` is not changed.
    """
    marked = unmarked.with_config()
    assert isinstance(marked, TriggerKey)
    with_data(marked, manifest, test_splits)
    marked.embed_model(unmarked.host, key, callbacks)
    marked.calibrate(key, list(independent))
    marked.train_visualizer(key, list(independent), callbacks)
    return marked


def mark_baseline(unmarked: TriggerKey, name: str, key: WatermarkKey,
                  manifest: str | os.PathLike, test_splits: Sequence[str] = ("val", "test"),
                  callbacks: Callbacks | Sequence[Any] = ()) -> HostMark:
    """Base-1 (``trigger_key_backdoor``) or Base-2 (``trigger_key_randproj``) embedded in
    the same unmarked host with the same schedule (no λ = 0 reference run: the baselines'
    tables show their task PSNR, not a fidelity cost)."""
    if name not in BASELINES:
        raise InputError(f"unknown baseline {name!r}; expected one of {list(BASELINES)}")
    cfg = unmarked.config.model_dump(mode="json")
    baseline = build(name, {**cfg, "method": name, "lambda0_reference": False})
    if not isinstance(baseline, HostMark):
        raise InputError(f"{name} is not a host watermark")
    with_data(baseline, manifest, test_splits)
    baseline.trained = True
    baseline.embed_model(unmarked.host, key, callbacks)
    return baseline


# -- evaluation ---------------------------------------------------------------------------------


def attack_rows(name: str, method: HostMark, key: WatermarkKey, attack: str,
                strengths: Sequence[float | None], manifest: str | os.PathLike,
                test_splits: Sequence[str] = ("val", "test"),
                settings: ModelAttackSettings | None = None,
                new_manifest: str | os.PathLike | None = None,
                callbacks: Callbacks | Sequence[Any] = ()) -> list[Row]:
    """One model attack (every strength) on one marked method, plus its unattacked row.

    Returns:
        :func:`.evaluation.evaluate_attacks`' tidy rows (``label = "none"`` first).
    """
    get_model_attack(attack)  # an unknown name fails before any data is read
    with_data(method, manifest, test_splits)
    return evaluate_attacks({name: (method, key)}, [(attack, list(strengths))], settings,
                            new_manifest, callbacks)


def merge_attack_rows(parts: Iterable[Sequence[Row]]) -> list[Row]:
    """Concatenate per-attack row lists, keeping each method's unattacked rows once."""
    rows: list[Row] = []
    seen: set[tuple[str, str]] = set()
    for part in parts:
        for r in part:
            if r["label"] == "none":
                if (r["method"], r["metric"]) in seen:
                    continue
                seen.add((r["method"], r["metric"]))
            rows.append(dict(r))
    return rows


def uniqueness_study(marked: TriggerKey, key: WatermarkKey, independent: nn.Module,
                     other_secrets: Sequence[str], manifest: str | os.PathLike,
                     test_splits: Sequence[str] = ("val", "test"),
                     n_keys: int | None = None,
                     pool: torch.Tensor | None = None) -> list[Row]:
    """d for every host × key: the owner's marked host and one host marked per other
    secret (each in the same unmarked host), the unmarked and the independent host.

    Each other key is calibrated as the owner was (``config.calibration_marked_keys``
    hosts marked with random keys in its null; one pool shared by the other keys): the
    owner's own pool when ``pool`` (``TriggerKey.pool_tensor``) holds it, else embedded
    here (a pool of another size than the config's is embedded again too).

    Returns:
        :func:`.analysis.uniqueness_rows` (``host, key, d, d_rel, ncc, p_value, detected, eta``).
    """
    with_data(marked, manifest, test_splits)
    owners: dict[str, tuple[TriggerKey, WatermarkKey]] = {"owner": (marked, key)}
    hosts: dict[str, nn.Module] = {"marked:owner": marked.host}
    # the other keys' calibration null gets the same other-key marked hosts as the
    # owner's (the same random keys, embedded once here for all of them)
    peers = marked.pool_from_tensor(pool) if pool is not None else []
    if other_secrets and len(peers) != marked.config.calibration_marked_keys:
        peers = marked.marked_pool(owner=key)  # an aligned pool: aligned with the owner's
    for i, secret in enumerate(other_secrets):
        other = marked.with_config(lambda0_reference=False)
        assert isinstance(other, TriggerKey)
        other.train_pairs, other.test_pairs = marked.train_pairs, marked.test_pairs
        k = WatermarkKey(secret)
        other.embed_model(marked.unmarked, k)
        other.calibrate(k, [independent], n_keys=n_keys, pool=peers)
        owners[f"key{i + 1}"] = (other, k)
        hosts[f"marked:key{i + 1}"] = other.host
    hosts.update({"unmarked": marked.unmarked, "independent": independent})
    return analysis.uniqueness_rows(owners, hosts)


def capacity_study(marked: TriggerKey, key: WatermarkKey, sizes: Sequence[int],
                   manifest: str | os.PathLike, test_splits: Sequence[str] = ("val", "test"),
                   n_keys: int = 40) -> list[Row]:
    """:func:`.analysis.capacity_rows` with the pairs re-derived from the manifest."""
    with_data(marked, manifest, test_splits)
    return analysis.capacity_rows(marked, key, sizes, n_keys)


def fidelity_rows(marked: TriggerKey) -> list[Row]:
    """Task PSNR and SSIM of the noisy/LR input, the unmarked and the marked host on the
    test pairs (the seed's fidelity table), plus the λ = 0 reference's PSNR when measured.

    Needs the task pairs (:func:`with_data`). Rows: ``host, metric, value``.
    """
    _, (tx, ty) = marked.require_pairs()
    rows: list[Row] = []
    for name, net in (("input", nn.Identity()), ("unmarked", marked.unmarked),
                      ("marked", marked.host)):
        out = apply_net(net, tx).clamp(0, 1)
        rows += [{"host": name, "metric": "psnr", "value": float(psnr(out, ty).mean())},
                 {"host": name, "metric": "ssim", "value": float(ssim(out, ty).mean())}]
    if "psnr_lambda0" in marked.metrics:
        rows.append({"host": "lambda0", "metric": "psnr",
                     "value": float(marked.metrics["psnr_lambda0"])})
    return rows


# -- the gate's numbers and the report ----------------------------------------------------------


def prune_survived_max(rows: Sequence[Row], method: str = tables.OURS) -> float:
    """The largest pruning rate up to which every tried rate still verifies (0 when the
    smallest already fails, or no pruning was run)."""
    tried = sorted((float(r["strength"]), bool(r["value"])) for r in rows
                   if r["method"] == method and r["attack"] == "prune"
                   and r["metric"] == "detected")
    best = 0.0
    for rate, detected in tried:
        if not detected:
            break
        best = rate
    return best


def gate_summary(attacks: Sequence[Row], fidelity: Sequence[Row], uniqueness: Sequence[Row],
                 marked: TriggerKey) -> dict[str, float]:
    """Flat metrics the gate (``components.gate.decide``) and MLflow read.

    Keys: ``psnr`` / ``ssim`` (marked host, task), ``psnr_unmarked``, ``ssim_unmarked``,
    ``fidelity_cost_db`` (λ = 0 reference − marked), ``fpr`` with ``fpr_ci_high``, ``eta``,
    ``fpr_marked_hosts`` (held-out other keys' marked-host trials alone; NaN without them),
    ``detected/<label>`` and ``psnr/<label>`` of trigger_key per attack label,
    ``detection_rate_mean_attacked`` (share of attacked labels still verified),
    ``prune_survived_max``, ``<baseline>/detection_rate_mean_attacked``, and
    ``uniqueness_false_matches`` (host × key pairs detected that are not a key's own
    marked host).
    """
    fid = {(r["host"], r["metric"]): float(r["value"]) for r in fidelity}
    out: dict[str, float] = {
        "psnr": fid[("marked", "psnr")], "ssim": fid[("marked", "ssim")],
        "psnr_unmarked": fid[("unmarked", "psnr")], "ssim_unmarked": fid[("unmarked", "ssim")],
        "fidelity_cost_db": float(marked.metrics.get("fidelity_cost_db", math.nan)),
        "fpr": float(marked.calibration.get("fpr", math.nan)),
        "fpr_ci_high": float(marked.calibration.get("fpr_ci_high", math.nan)),
        "eta": float(marked.calibration.get("eta", math.nan)),
        "fpr_marked_hosts": float(marked.calibration.get("marked_fpr", math.nan)),
        "prune_survived_max": prune_survived_max(attacks),
    }
    for method in (tables.OURS, *BASELINES):
        attacked = [float(r["value"]) for r in attacks if r["method"] == method
                    and r["metric"] == "detected" and r["label"] != "none"]
        prefix = "" if method == tables.OURS else f"{method}/"
        out[f"{prefix}detection_rate_mean_attacked"] = (sum(attacked) / len(attacked)
                                                        if attacked else math.nan)
    for r in attacks:
        if r["method"] == tables.OURS and r["metric"] in ("detected", "psnr"):
            out[f"{r['metric']}/{r['label']}"] = float(r["value"])
    out["uniqueness_false_matches"] = float(sum(
        1 for r in uniqueness if r["detected"] and r["host"] != f"marked:{r['key']}"))
    return out


def fidelity_table(rows: Sequence[Row]) -> str:
    """Markdown: task PSNR / SSIM per host on the test split."""
    cell = {(r["host"], r["metric"]): float(r["value"]) for r in rows}
    hosts = list(dict.fromkeys(r["host"] for r in rows))
    lines = ["| host | task PSNR (dB) | SSIM |", "|---|---|---|"]
    for h in hosts:
        s = cell.get((h, "ssim"))
        lines.append(f"| {h} | {cell[(h, 'psnr')]:.2f} | {'–' if s is None else f'{s:.4f}'} |")
    return "\n".join(lines)


def report_markdown(title: str, summary: Mapping[str, float], fidelity: Sequence[Row],
                    attacks: Sequence[Row], uniqueness: Sequence[Row],
                    capacity: Sequence[Row]) -> str:
    """The run report: fidelity, FPR with its CI, each attack table with both baselines,
    pruning breaking points, uniqueness and capacity (the seed's tables in shape)."""
    breaks = tables.breaking_points(attacks)
    brk = ", ".join(f"{m}: {'none up to the largest rate tried' if math.isinf(v) else v}"
                    for m, v in breaks.items()) or "no pruning run"
    parts = [f"# {title}", "", "## Fidelity (test split)", "", fidelity_table(fidelity), "",
             f"Fidelity cost (λ = 0 reference − marked): {summary['fidelity_cost_db']:.3f} dB.",
             "", "## Detection threshold and false positives", "",
             f"η = {summary['eta']:.4g} (on d_rel = d / d of the unmarked host); "
             f"FPR = {summary['fpr']:.4g} (95% CI upper "
             f"{summary['fpr_ci_high']:.4g}) on held-out random keys, null hosts and other "
             f"keys' marked hosts (those alone: "
             f"{summary.get('fpr_marked_hosts', math.nan):.4g}).", "",
             "## Attacks (trigger_key with Base-1 and Base-2)", "", tables.attack_table(attacks),
             "", f"Pruning breaking point (first rate not verified): {brk}.", "",
             "## Uniqueness (d_rel, * = detected)", "", tables.uniqueness_table(uniqueness)]
    if capacity:
        parts += ["", "## Capacity", "", tables.capacity_table(capacity)]
    return "\n".join(parts) + "\n"


def jsonable_rows(rows: Sequence[Row]) -> list[Row]:
    """``rows`` with non-finite floats as ``None`` (a report's JSON allows no NaN / inf)."""
    return [{k: None if isinstance(v, float) and not math.isfinite(v) else v
             for k, v in r.items()} for r in rows]


def check_calibration_sizes(config: TriggerKeyConfig, other_keys: int,
                            uniqueness_keys: int | None, capacity_sizes: Sequence[int],
                            capacity_keys: int, independent_hosts: int = 1) -> None:
    """Refuse, before anything is trained, a pipeline whose calibrations cannot reach
    ``config.alpha`` (``calibrate`` would refuse them only after training the host).

    The three calibrations :func:`mark_owner`, :func:`uniqueness_study` and
    :func:`capacity_study` run, counted as ``TriggerKey.calibrate`` counts them
    (``calibration.null_size``):

    * the owner's: the marked host, the ``independent_hosts`` and the λ = 0 host (when
      ``lambda0_reference``) on ``calibration_keys``, plus ``calibration_marked_keys``;
    * each other key's (when ``other_keys``): its marked host and the independent one (no
      λ = 0 run) on ``uniqueness_keys`` (default ``calibration_keys``), plus the same pool;
    * each trigger size's (when ``capacity_sizes``): its marked host and its λ = 0 host
      on ``capacity_keys``, no pool.

    Raises:
        InputError: the first too small, as ``calibration.require_reachable`` words it,
            naming the step and the setting to raise.
    """
    c, pool = config, config.calibration_marked_keys
    lambda0 = int(c.lambda0_reference)
    more = "config.calibration_marked_keys, or config.alpha"
    plan = [("calibrate (the owner's mark, step embed_owner_mark)", "config.calibration_keys",
             c.calibration_keys, 1 + independent_hosts + lambda0, pool, more)]
    if other_keys:
        plan.append(("calibrate (each other key, step uniqueness)",
                     "study.uniqueness_keys" if uniqueness_keys else "config.calibration_keys",
                     uniqueness_keys or c.calibration_keys, 1 + independent_hosts, pool, more))
    if capacity_sizes:  # no pool there: only its keys or alpha add trials
        plan.append(("calibrate (each trigger size, step capacity)", "study.capacity_keys",
                     capacity_keys, 1 + lambda0, 0, "or config.alpha"))
    for where, field, n_keys, hosts, marked, more in plan:
        calibration.require_null_size(c.alpha, n_keys, hosts, marked, where, field, more)


def check_policy_labels(metric_keys: Iterable[str], suite: ModelSuite) -> None:
    """Every ``detected/<label>`` / ``psnr/<label>`` a policy names must be run by the suite.

    Raises:
        InputError: naming the label and the suite's labels.
    """
    labels = {"none"} | {get_model_attack(a).label(s) for a, strengths in suite
                         for s in strengths}
    for key in metric_keys:
        head, _, label = key.partition("/")
        if head in ("detected", "psnr") and label and label not in labels:
            raise InputError(f"invalid policy config: {key}: {label!r} is not an attack label "
                             f"of the suite; run: {', '.join(sorted(labels))}")


__all__ = ["BASELINES", "as_host_mark", "as_trigger_key", "attack_rows", "capacity_study",
           "check_calibration_sizes", "check_policy_labels", "fidelity_rows", "fidelity_table",
           "gate_summary",
           "jsonable_rows", "mark_baseline", "mark_owner", "merge_attack_rows",
           "prune_survived_max", "report_markdown", "task_images", "train_independent",
           "train_unmarked", "uniqueness_study", "with_data"]
