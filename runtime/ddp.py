"""Train a method data-parallel: N processes on one node, under torchrun or launched here.

From a shell (one process per GPU; on CPU, gloo)::

    torchrun --nproc_per_node 4 -m neuralmark.runtime.ddp train pgd_signer \\
        --profile full --manifest data/prepared/manifest.csv --out bundles/pgd_signer

Every process loads the manifest's ``train`` and ``val`` splits, joins the job
(``neuralmark.components.distributed.init_from_env``: nccl on CUDA, gloo on CPU) and runs
the method's ordinary ``fit`` on its shard of every batch; rank 0 prints the metrics and
writes the bundle. ``batch_size`` is the global batch (it must split evenly).

From Python (the pipelines' training steps): ``train_in_processes(task, args, ...)`` runs a
training function in this process when ``processes`` is 1 (the path every single-GPU or CPU
run takes, unchanged) and otherwise starts ``processes`` workers on this node with
``torch.distributed.launcher.api.elastic_launch`` (what torchrun runs), each running the
same function on its shard of every batch, then loads rank 0's bundle. ``fit_method``
(``train_model``) runs a method's ``fit`` so; output_mark's steps run its stages
(``training.stage1_method`` / ``stage2_method``) and trigger_key's its host training and
embedding (``study.train_unmarked`` / ``train_independent`` / ``mark_owner`` /
``mark_baseline``) the same way. Rank 0's metrics and progress stream to the caller's
callbacks while the job runs: rank 0 appends each event as a JSON line to a file
(``EventStream``), the launch runs in a helper thread, and the calling thread tails the file
and replays each complete line as it comes (in the calling thread, where an MLflow step has
its active run). Figures (objects,
not JSON) come back with rank 0's result and are replayed when the job ends.

The cost of launching from a helper thread: torchelastic installs its SIGTERM/SIGINT
handlers only in the main thread (it logs "Failed to register signal handlers"), so a
signal to this process does not pass through the agent to the workers. In a pod that is
moot (stopping the container stops every process in it); on a bare machine, stop a job by
its process group (``kill -- -PGID``), or train with ``torchrun`` itself.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from neuralmark.components import distributed
from neuralmark.components.data.manifest import load_split
from neuralmark.components.errors import InputError
from neuralmark.components.methods.base import Callbacks, MethodConfig, WatermarkMethod
from neuralmark.components.methods.registry import build, make_config, method_class

#: seconds between two reads of rank 0's event stream while a data-parallel job runs
STREAM_POLL_S = 0.5
#: overrides the number of training processes (default: the GPUs this node shows, else 1)
PROCESSES_ENV = "NEURALMARK_TRAIN_PROCESSES"


def train_processes() -> int:
    """How many processes ``train_model`` trains with: one per visible GPU, at least 1.

    A pod that asks for ``nvidia.com/gpu: N`` sees N GPUs, so the cluster run config
    decides; ``NEURALMARK_TRAIN_PROCESSES`` overrides it (e.g. 2 gloo processes on CPU).

    Raises:
        InputError: the variable is set to something other than a whole number >= 1.
    """
    value = os.environ.get(PROCESSES_ENV, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise InputError(f"{PROCESSES_ENV}={value!r}: give a whole number of processes >= 1")
        return int(value)
    return max(1, torch.cuda.device_count())


class EventStream:
    """Rank 0's metrics and progress as JSON lines appended to ``path``, flushed per event.

    The parent of the job reads them back with ``read_events`` while the job runs; a line
    is complete once its newline is written, so a reader never sees half an event.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _write(self, hook: str, args: Sequence[Any]) -> None:
        if not distributed.is_main():
            # every rank holds the same sinks (a task's draws must not depend on its rank);
            # only rank 0's events are the job's
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"hook": hook, "args": list(args)}) + "\n")
            f.flush()

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self._write("on_metrics", (step, {k: float(v) for k, v in metrics.items()}))

    def on_progress(self, done: int, total: int, desc: str = "") -> None:
        self._write("on_progress", (done, total, desc))


class FigureRecorder:
    """Keeps rank 0's figures for the end of the job (methods draw only for such sinks)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[Any, ...]]] = []

    def on_figure(self, step: int, name: str, figure: Any) -> None:
        self.events.append(("on_figure", (step, name, figure)))


def read_events(path: str | Path, offset: int) -> tuple[list[tuple[str, tuple[Any, ...]]], int]:
    """The complete events ``EventStream`` wrote to ``path`` from byte ``offset`` on.

    Returns:
        ``(events, new offset)``: ``(hook, args)`` pairs, and where the next read starts
        (after the last complete line; a line still being written is left for later).
    """
    path = Path(path)
    if not path.exists():
        return [], offset
    with path.open("rb") as f:
        f.seek(offset)
        chunk = f.read()
    end = chunk.rfind(b"\n") + 1
    events = []
    for line in chunk[:end].decode("utf-8").splitlines():
        if line.strip():
            item = json.loads(line)
            events.append((str(item["hook"]), tuple(item["args"])))
    return events, offset + end


def _launched(task: Callable[..., Any], arguments: tuple[tuple[Any, ...], dict[str, Any]],
              out: str, figures: bool, events: str
              ) -> tuple[str, list[tuple[str, tuple[Any, ...]]], dict[str, float]]:
    """One worker of a ``train_in_processes`` job: run ``task(*args, **kwargs, callbacks=...)``.

    Rank 0 streams its metrics and progress to the file ``events``, writes the trained
    method's bundle to ``out`` and returns the method's registry key, its figures and final
    metrics (the other ranks return nothing). Methods among the arguments arrive as bundles
    (``_BundleArg``) and are loaded here, as a pipeline step loads its inputs.
    """
    device = distributed.init_from_env()
    if device.type == "cpu":
        # the node's cores shared among the workers, not each worker taking them all
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // distributed.world_size()))
    try:
        kept = FigureRecorder()
        sinks: list[Any] = [EventStream(events)] + ([kept] if figures else [])
        args, kwargs = _from_parent(arguments)
        model, final = _method_and_metrics(task(*args, **kwargs, callbacks=sinks))
        if not distributed.is_main():
            return "", [], {}
        model.to("cpu").to_bundle(out)
        return model.key, kept.events, {k: float(v) for k, v in final.items()}
    finally:
        distributed.shutdown()


def _fit(method: str, config: dict[str, Any], data: dict[str, Any],
         callbacks: Sequence[Any] = ()) -> tuple[WatermarkMethod, dict[str, float]]:
    """Build ``method`` and ``fit`` it (``fit_method``'s task)."""
    model = build(method, config)
    return model, model.fit(data, callbacks)


def _method_and_metrics(result: Any) -> tuple[WatermarkMethod, dict[str, float]]:
    """A task's result as ``(method, metrics)``: it returns one, or a method alone."""
    model, final = result if isinstance(result, tuple) else (result, {})
    if not isinstance(model, WatermarkMethod):
        raise TypeError(f"a training task must return a WatermarkMethod (or one with its "
                        f"metrics), got {type(model).__name__}")
    return model, dict(final)


def fit_method(method: str, config: MethodConfig | Mapping[str, Any],
               data: Mapping[str, torch.Tensor], callbacks: Sequence[Any] = (),
               processes: int = 1) -> tuple[WatermarkMethod, dict[str, float]]:
    """Build ``method`` and ``fit`` it, in this process or data-parallel on this node.

    Args:
        method: registry key.
        config: its config (or the fields of one).
        data: what the method's ``fit`` takes (``{"train": N×3×S×S, "val": …}``; for
            output_mark ``(A, B)`` pairs).
        callbacks: progress / metrics / figures sinks; with ``processes`` > 1 they receive
            rank 0's metrics and progress while the job runs (``EventStream``), its
            figures when it has ended.
        processes: 1: train here (unchanged single-process path); N > 1: N workers
            (one per GPU with nccl, or gloo on CPU).

    Returns:
        The trained method and the final metrics ``fit`` returned (rank 0's, the method
        loaded from its bundle, when ``processes`` > 1).

    Raises:
        InputError: ``processes`` < 1, several processes for a method whose ``fit`` is not
            data-parallel, or more processes than GPUs on a GPU node.
    """
    cfg = config if isinstance(config, MethodConfig) else make_config(method, dict(config))
    if processes == 1:
        model = build(method, cfg)
        return model, model.fit(dict(data), callbacks)
    return train_in_processes(_fit, (method, cfg.model_dump(mode="json"), dict(data)),
                              method=method, callbacks=callbacks, processes=processes)


def train_in_processes(task: Callable[..., Any], args: Sequence[Any],
                       kwargs: Mapping[str, Any] | None = None, *, method: str,
                       callbacks: Sequence[Any] = (), processes: int = 1
                       ) -> tuple[WatermarkMethod, dict[str, float]]:
    """Run a training function in this process or data-parallel in ``processes`` on this node.

    What every training step uses (``train_model`` through ``fit_method``; output_mark's
    stages, trigger_key's host training and embedding with their own library functions).
    ``task(*args, **kwargs, callbacks=...)`` trains and returns the trained method, or
    ``(method, metrics)``; with ``processes`` > 1 every worker runs it on its shard of each
    batch (the function's loops are data-parallel: ``neuralmark.components.distributed``).

    Args:
        task: a module-level function (the workers are spawned: it must pickle).
        args, kwargs: its arguments. With several processes, tensors travel as they are,
            networks as CPU copies, and methods as bundles (``to_bundle`` here,
            ``from_bundle`` in each worker, as a pipeline step receives them).
        method: registry key of what it trains (must be data-parallel for ``processes`` > 1).
        callbacks: progress / metrics / figures sinks; with ``processes`` > 1 they receive
            rank 0's metrics and progress while the job runs (``EventStream``), its
            figures when it has ended.
        processes: 1: ``task`` runs here, with ``callbacks`` (the single-process path);
            N > 1: N workers (one per GPU with nccl, or gloo on CPU), launched with
            ``elastic_launch``.

    Returns:
        ``(trained method, metrics)``: with several processes, the method loaded from
        rank 0's bundle and rank 0's metrics (``{}`` for a task returning a method alone).

    Raises:
        InputError: ``processes`` < 1, several processes for a method whose training is
            not data-parallel, or more processes than GPUs on a GPU node.
    """
    if processes < 1:
        raise InputError(f"processes must be >= 1, got {processes}")
    if processes > 1 and not method_class(method).data_parallel:
        raise InputError(f"{method} does not train data-parallel (its fit runs in one "
                         f"process): give its training step 1 GPU, not {processes}")
    if processes == 1:
        return _method_and_metrics(task(*args, **(kwargs or {}), callbacks=callbacks))
    gpus = torch.cuda.device_count()
    if gpus and processes > gpus:
        raise InputError(f"{processes} training processes but {gpus} GPU(s) on this node: "
                         "one process per GPU")
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    sinks = Callbacks.of(callbacks)
    figures = any(callable(getattr(c, "on_figure", None)) for c in sinks.callbacks)
    launch = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes,
                          run_id=f"neuralmark-{uuid.uuid4().hex[:8]}", rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=1.0)
    with tempfile.TemporaryDirectory(prefix="neuralmark-ddp-") as tmp:
        out, stream = str(Path(tmp) / "bundle"), Path(tmp) / "events.jsonl"
        sent = _for_workers((tuple(args), dict(kwargs or {})), Path(tmp) / "inputs")
        job: dict[str, Any] = {}

        def launch_job() -> None:
            try:
                job["results"] = elastic_launch(launch, _launched)(
                    task, sent, out, figures, str(stream))
            except BaseException as err:  # re-raised in the calling thread
                job["error"] = err

        runner = threading.Thread(target=launch_job, name="neuralmark-ddp-launch")
        runner.start()
        offset = 0
        while runner.is_alive():
            runner.join(STREAM_POLL_S)
            events, offset = read_events(stream, offset)
            for hook, args_ in events:
                getattr(sinks, hook)(*args_)
        if "error" in job:
            raise job["error"]
        key, figure_events, final = job["results"][0]
        for hook, args_ in figure_events:
            getattr(sinks, hook)(*args_)
        return method_class(key).from_bundle(out), final


@dataclass(frozen=True)
class _BundleArg:
    """A method argument on its way to the workers: its registry key and bundle folder."""

    key: str
    path: str


def _for_workers(value: Any, folder: Path) -> Any:
    """``value`` made ready for spawned workers: tensors contiguous, networks CPU copies,
    methods written as bundles under ``folder`` (a tuple/list/dict of them, item by item)."""
    if isinstance(value, torch.Tensor):
        return value.contiguous()
    if isinstance(value, WatermarkMethod):
        path = folder / f"{value.key}-{uuid.uuid4().hex[:8]}"
        value.to_bundle(path)
        return _BundleArg(value.key, str(path))
    if isinstance(value, torch.nn.Module):
        return copy.deepcopy(value).cpu()
    if isinstance(value, tuple | list):
        return type(value)(_for_workers(v, folder) for v in value)
    if isinstance(value, dict):
        return {k: _for_workers(v, folder) for k, v in value.items()}
    return value


def _from_parent(value: Any) -> Any:
    """``_for_workers`` undone in a worker: bundles loaded back as methods."""
    if isinstance(value, _BundleArg):
        return method_class(value.key).from_bundle(value.path)
    if isinstance(value, tuple | list):
        return type(value)(_from_parent(v) for v in value)
    if isinstance(value, dict):
        return {k: _from_parent(v) for k, v in value.items()}
    return value


# -- torchrun entry point -----------------------------------------------------------
class _PrintMetrics:
    """Rank 0's metrics as JSON lines on stdout."""

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        print(json.dumps({"step": step, **metrics}), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m neuralmark.runtime.ddp train <method> ...``, under torchrun."""
    parser = argparse.ArgumentParser(prog="python -m neuralmark.runtime.ddp",
                                     description="train a method data-parallel (torchrun)")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="fit a method on a manifest's train/val splits")
    train.add_argument("method")
    train.add_argument("--profile", default="tiny", help="configs/profiles/<profile>.yaml")
    train.add_argument("--manifest", required=True, help="a prepared manifest.csv")
    train.add_argument("--out", required=True, help="bundle directory (written by rank 0)")
    train.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                       help="override a method config field (value parsed as JSON)")
    args = parser.parse_args(argv)
    from neuralmark.runtime.settings import parse_overrides, resolve

    settings = resolve(args.method, args.profile, config=parse_overrides(args.set))
    cfg = settings.config
    size = getattr(cfg, "working_size", None)
    data = {split: load_split(args.manifest, split, size=size) for split in ("train", "val")}
    device = distributed.init_from_env()
    try:
        model = build(args.method, cfg)
        model.fit(data, [_PrintMetrics()])
        if distributed.is_main():
            model.to("cpu").to_bundle(args.out)
            print(f"rank 0 of {distributed.world_size()} ({device}): bundle written to "
                  f"{args.out}", file=sys.stderr)
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
