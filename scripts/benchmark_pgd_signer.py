"""pgd_signer's card figures, measured by ``neuralmark benchmark`` (the one way to measure).

A thin wrapper: it runs the benchmark on the held-out split with the shipped decoder, its
signing budgets side by side (``pgd_signer[psnr_target=B]``: the robustness /
imperceptibility trade-off), its verify-time re-synchronisation search
(``pgd_signer[sync_search=true]``) and the installed peers, then rewrites the benchmark
section of ``components/pretrained/pgd_signer/MODEL_CARD.md`` from the run's table
(``--card pgd_signer``). Every number of that section is in ``<out>/benchmark.csv``.

Usage: ``python scripts/benchmark_pgd_signer.py [--limit N] [--budgets 34,40] [--quick]
[--out DIR] [--no-card]``; what it runs is printed first.
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
    ap.add_argument("--budgets", default="34,40",
                    help="extra signing budgets, dB, as config variants ('' for none)")
    ap.add_argument("--fpr-keys", type=int, default=200, help="random keys per clean photo")
    ap.add_argument("--quick", action="store_true", help="three strengths per attack")
    ap.add_argument("--out", default="benchmark-out/pgd_signer")
    ap.add_argument("--no-card", action="store_true", help="do not rewrite the model card")
    args = ap.parse_args(argv)
    methods = ["pgd_signer", "pgd_signer[sync_search=true]"] + [
        f"pgd_signer[psnr_target={float(b):g}]" for b in args.budgets.split(",") if b.strip()]
    out = ["benchmark", "--methods", ",".join(methods), "--model-methods", "none",
           "--limit", str(args.limit), "--fpr-keys", str(args.fpr_keys), "--out", args.out]
    if args.quick:
        out.append("--quick")
    if not args.no_card:
        out += ["--card", "pgd_signer"]
    return out


def main(argv: list[str] | None = None) -> None:
    from neuralmark.cli.app import app

    args = command(argv)
    print("neuralmark " + shlex.join(args), flush=True)
    app(args)


if __name__ == "__main__":
    main()
