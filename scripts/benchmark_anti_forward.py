"""anti_forward's card figures, measured by ``neuralmark benchmark`` (the one way to measure).

A thin wrapper: it runs the benchmark on the held-out split with the shipped scanner as
deployed (smoothed, certified), its fast rule (``anti_forward[smoothing=false]``: the
service hot path) and its smoothing at other sample counts (``anti_forward[n=N]``: the cost
certification adds grows with N), timed at the batch sizes and sides given, then rewrites the
benchmark section of ``components/pretrained/anti_forward/MODEL_CARD.md`` from the run's
table (``--card anti_forward``). The timing rows (``embed_ms``, ``verify_ms``,
``peak_mem_mb`` per side) and everything else are in
``<out>/benchmark.csv``.

Usage: ``python scripts/benchmark_anti_forward.py [--limit N] [--batches 1,32]
[--sizes 256,400] [--smoothing-n 1000] [--quick] [--out DIR] [--no-card]``; what it runs is
printed first. Set ``OMP_NUM_THREADS`` for the thread count (the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import shlex

os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def command(argv: list[str] | None = None) -> list[str]:
    """The ``neuralmark benchmark`` arguments this script runs."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=8, help="held-out photos (256×256)")
    ap.add_argument("--batches", default="1,32", help="batch sizes timed")
    ap.add_argument("--sizes", default="256,400", help="sides timed at batch 1")
    ap.add_argument("--smoothing-n", default="1000",
                    help="estimation noise samples of extra smoothed variants ('' for none)")
    ap.add_argument("--fpr-keys", type=int, default=200, help="random keys per clean photo")
    ap.add_argument("--quick", action="store_true", help="three strengths per attack")
    ap.add_argument("--out", default="benchmark-out/anti_forward")
    ap.add_argument("--no-card", action="store_true", help="do not rewrite the model card")
    args = ap.parse_args(argv)
    methods = ["anti_forward", "anti_forward[smoothing=false]"] + [
        f"anti_forward[n={int(n)}]" for n in args.smoothing_n.split(",") if n.strip()]
    out = ["benchmark", "--methods", ",".join(methods), "--model-methods", "none",
           "--limit", str(args.limit), "--fpr-keys", str(args.fpr_keys),
           "--batch-sizes", args.batches, "--resolutions", args.sizes, "--out", args.out]
    if args.quick:
        out.append("--quick")
    if not args.no_card:
        out += ["--card", "anti_forward"]
    return out


def main(argv: list[str] | None = None) -> None:
    from neuralmark.cli.app import app

    args = command(argv)
    print("neuralmark " + shlex.join(args), flush=True)
    app(args)


if __name__ == "__main__":
    main()
