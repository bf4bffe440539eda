"""How many other keys' marked hosts the calibration null needs (issue #13: the default pool).

The tiny pipeline's host (``--arch``/``--task``/``--lam``, 300 host steps, 200 embedding
steps, 100 calibration keys, the tiny sample set) is trained and marked with the owner's
key; ``--pool-max + --test-keys`` other random keys are embedded into the same unmarked
host with the owner's schedule (``TriggerKey.marked_pool``, the pipeline's draws). For each
pool size P, η is calibrated with the first P of them (the pipeline's calibration); then
every **test** key — never in any calibration — is probed on every marked host that does
not carry it (the owner's and all the other pool hosts), and every test key's host on the
owner's key: the trials the uniqueness table runs. Printed per P: η, how many test trials
fall below η (false matches), the smallest test trial, and the embeddings P costs a
pipeline run (2·P: the owner's calibration and the uniqueness study each build it) with
their measured seconds. ``--references unmarked,lambda0`` repeats the table with d_rel taken
relative to the λ = 0 host (the same embedding fine-tuning without the mark, whose batches
every pool host shares) instead of the unmarked host. ``--calibration-pool aligned`` draws
the keys as that opt-in pool does (tk13: the most aligned with the owner's of
``--candidates`` random ones, most aligned first), so the first P are the aligned pool of
size P and the test keys the next most aligned; ``--config`` overrides host fields (e.g.
micro sizes).

    python scripts/measure_trigger_key_pool_size.py --sample /tmp/sample-tiny \
        --arch vdsr --task sr --lam 1e-3
    python scripts/measure_trigger_key_pool_size.py --sample /tmp/sample-tiny \
        --calibration-pool aligned --candidates 2000
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402

from neuralmark.components.data.sample import (  # noqa: E402
    SampleDataConfig,
    build_sample_dataset,
)
from neuralmark.components.errors import InputError  # noqa: E402
from neuralmark.components.methods.base import WatermarkKey  # noqa: E402
from neuralmark.components.methods.registry import build  # noqa: E402
from neuralmark.components.methods.trigger_key import calibration  # noqa: E402
from neuralmark.components.methods.trigger_key.calibration import (  # noqa: E402
    host_relative_distances,
)
from neuralmark.components.methods.trigger_key.study import task_images  # noqa: E402


def parse_fields(text: str) -> dict[str, int | float | str]:
    """``field=value,…`` → ``{field: int, float or text}``; ``SystemExit`` naming a
    malformed item."""
    out: dict[str, int | float | str] = {}
    for item in filter(None, text.split(",")):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key or not value:
            raise SystemExit(f"--config: expected field=value,…, got {item!r}")
        for kind in (int, float):
            try:
                out[key] = kind(value)
                break
            except ValueError:
                continue
        else:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample", required=True, help="build / reuse the tiny sample set here")
    ap.add_argument("--arch", default="dncnn")
    ap.add_argument("--task", default="denoise")
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--lam", type=float, default=1e-2)
    ap.add_argument("--pool-max", type=int, default=12)
    ap.add_argument("--test-keys", type=int, default=4)
    ap.add_argument("--sizes", default="0,2,4,6,8,12")
    ap.add_argument("--references", default="unmarked",
                    help="M_ref of d_rel, comma-separated: unmarked (the bundle's) and/or "
                         "lambda0 (the same fine-tuning without the mark)")
    ap.add_argument("--calibration-pool", choices=("random", "aligned"), default="random",
                    help="how the other keys are drawn (TriggerKeyConfig.calibration_pool)")
    ap.add_argument("--candidates", type=int, default=2000,
                    help="aligned: the random keys ranked by alignment "
                         "(calibration_candidates)")
    ap.add_argument("--config", default="",
                    help="field=value,… over the host's TriggerKeyConfig (after the options)")
    ap.add_argument("--independent-steps", type=int, default=1000,
                    help="training steps of the independently trained null host")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    n_keys = args.pool_max + args.test_keys
    if args.pool_max < 0 or args.test_keys < 1:
        raise SystemExit(f"need --pool-max >= 0 and --test-keys >= 1, got {args.pool_max}, "
                         f"{args.test_keys}")
    if args.calibration_pool == "aligned" and args.candidates < n_keys:
        raise SystemExit(f"--calibration-pool aligned ranks --candidates {args.candidates} "
                         f"keys: need at least --pool-max + --test-keys = {n_keys}")
    config = {"channels": 1, "arch": args.arch, "task": args.task, "depth": args.depth,
              "lam": args.lam, "host_steps": 300, "embed_steps": 200, "visualizer_steps": 0,
              "calibration_keys": 100, "calibration_marked_keys": args.pool_max,
              "calibration_pool": args.calibration_pool,
              "calibration_candidates": args.candidates, **parse_fields(args.config)}
    m = build("trigger_key", config)  # a bad field fails here, before any data or training
    # every table row calibrates on the marked host, the other reference and the independent
    # host (3 hosts) with P = its pool size: the smallest P must reach alpha before training
    sizes = [int(v) for v in args.sizes.split(",")]
    try:
        calibration.require_null_size(m.config.alpha, m.config.calibration_keys, 3, min(sizes),
                                      where=f"--sizes {min(sizes)}",
                                      keys_field="--config calibration_keys")
    except InputError as err:
        raise SystemExit(str(err)) from None
    torch.set_num_threads(args.threads)
    start = time.time()
    manifest = build_sample_dataset(args.sample, SampleDataConfig(size=128, crops_per_photo=4,
                                                                  n_procedural=12))
    m.fit(task_images(manifest))
    independent = m.train_independent_host(args.independent_steps)
    owner = WatermarkKey("neuralmark-eval")
    m.embed_model(m.unmarked, owner)
    t0 = time.time()
    everyone = m.marked_pool(n_keys, owner=owner)
    per_embedding = (time.time() - t0) / len(everyone)
    test = everyone[args.pool_max:]
    x_owner, s_owner, _ = m.reference(owner)
    hosts = [m.host, *(h for h, _, _ in everyone)]
    c = m.config
    references = {"unmarked": m.unmarked, "lambda0": m.lambda0_host}
    for name in args.references.split(","):
        ref = references[name]
        trials: list[float] = []
        for i, (_, x, s) in enumerate(test):
            own = everyone.index(test[i])
            trials += [d for j, h in enumerate(hosts) if j != own + 1
                       for d in host_relative_distances(h, ref, x, s)]
        for h, _, _ in test:
            trials += host_relative_distances(h, ref, x_owner, s_owner)
        print(f"{args.arch} {args.task} λ {args.lam} pool {c.calibration_pool} reference {name}: "
              f"fidelity cost {m.metrics['fidelity_cost_db']:.2f} dB; {len(test)} test keys, "
              f"{len(trials)} test trials (smallest {min(trials):.3f}, median "
              f"{sorted(trials)[len(trials) // 2]:.3f}); {per_embedding:.0f} s per embedding "
              f"({time.time() - start:.0f} s so far)", flush=True)
        print("| P | η | calibrating marked trials | held-out FPR (pipeline's split) | test "
              "trials below η | embeddings per run (s) |\n|---|---|---|---|---|---|")
        for p in sizes:
            # the null of TriggerKey.calibrate, with M_ref = this reference (the λ = 0 host:
            # the unmarked host joins the null hosts in its place)
            others = [m.lambda0_host] if name == "unmarked" else [m.unmarked]
            null = calibration.null_distances(
                m.host, ref, [*others, independent], x_owner, s_owner, c.calibration_keys, 1,
                c.trigger_side, c.channels, c.task, c.scale, c.keyed_gradient, everyone[:p])
            cal = calibration.calibrate(null, c.alpha, c.calibration_keys)
            eta = cal["eta"]
            below = sum(1 for d in trials if d < eta)
            n_marked = p * (p + 1) - int(cal.get("marked_trials", 0))
            print(f"| {p} | {eta:.3f} | {n_marked} | {cal['fpr']:.4f} ({int(cal['fp'])}/"
                  f"{int(cal['trials'])}) | {below}/{len(trials)} | {2 * p} "
                  f"({2 * p * per_embedding:.0f}) |", flush=True)
    print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
