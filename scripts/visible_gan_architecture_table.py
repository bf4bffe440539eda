"""The seed's Table I with its three networks, at CPU size, for the shipped W.

For each architecture of the seed's table (AlexNet, VGG16, ResNet50; ``nets.build_classifier``
with a width multiplier: the published depth and shape, fewer channels) and each marking
(clean, DeepStamp with the shipped W, static, opacity, displacement), trains F′ as the
pipeline's table does (``evaluation.train_f_prime``: the bundle's ``utility_steps``,
``batch_size``, ``classifier_lr``, the same initial weights and batches for every marking of
one architecture) on the marked training split of the bundle's data and tests it on the
clean test split. Per cell: accuracy with its Clopper–Pearson interval; per marking the
paired drop against the clean-trained F′ of the same architecture (per-image difference,
mean ± SE, and the discordant counts). Writes ``--out`` (JSON) after every cell, so a run
cut short leaves what it measured (``complete: false``); the card's architecture section
(``card.architecture_section``) reads it.

Spread over F′ runs (opt-in): ``--f-seed S`` (repeatable) trains every cell once per F′ seed
(``train_f_prime``'s ``f_seed``: F′'s initial weights, dropout draws and batch order move;
the data, the stampers' draws and so the marked images do not); one row per network × F′
seed, each with its ``f_seed``. ``--markings clean,deepstamp,static`` trains only those
columns (the images are marked as in the full table). Seed 0 is the default table. With
two or more F′ seeds the JSON gets ``spread`` (``spread``: per network × quantity — clean
accuracy, each stamper's drop, DeepStamp's drop − static's paired by F′ seed — the mean, SD
and Student-t 95 % interval over the F′ seeds that trained every column of that network, by
``seed_spread.spread_summary``, with ``SPREAD_RULE``, the decision rule);
``--summarize JSON`` (re)computes it for a table written without it or cut short. The
card's section over F′ seeds (``card.architecture_seeds_section``) reads
``architecture_seeds.json`` beside the bundle.

The cells reproduce bit for bit on one machine, not across machines: another CPU kernel path
(another CPU, or ``ATEN_CPU_CAPABILITY``) moves F′'s weights from the first steps on and its
accuracy by points after 400 (AlexNet ×0.25, clean, seed 0: 157 correct in the shipped
table, 184 on the next machine with the same code, data and torch, 167 there with
``ATEN_CPU_CAPABILITY=default``). So the table records its ``environment`` (torch, kernel
path, CPU), and a spread over F′ seeds reruns seed 0 beside the others on one machine
rather than pooling with an older table.

Usage::

    OMP_NUM_THREADS=1 nice -n 10 python scripts/visible_gan_architecture_table.py \\
        --arch alexnet=0.25 --arch vgg16=0.25 --arch resnet50=0.0625 \\
        --out components/pretrained/visible_gan/architecture_table.json
    # over F′ seeds 0, 1 and 2 on one machine, three columns
    OMP_NUM_THREADS=1 python scripts/visible_gan_architecture_table.py --arch alexnet=0.25 \\
        --f-seed 0 --f-seed 1 --f-seed 2 --markings clean,deepstamp,static --out seeds.json
    python scripts/visible_gan_architecture_table.py --summarize seeds.json  # adds ``spread``
    # more F′ seeds later, on the same machine: run them, then merge the runs
    python scripts/visible_gan_architecture_table.py --merge seeds.json seeds34.json \\
        --out merged.json   # refuses another machine, recipe, or a seed measured twice
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from neuralmark.components.data.labelled import training_data
from neuralmark.components.environment import environment
from neuralmark.components.methods import load_bundle
from neuralmark.components.methods.visible_gan.card import SEED_TABLE
from neuralmark.components.methods.visible_gan.classifier import correct
from neuralmark.components.methods.visible_gan.evaluation import stamp_all, train_f_prime
from neuralmark.components.seed_spread import CONFIDENCE, spread_summary
from neuralmark.components.stats import clopper_pearson
from neuralmark.runtime.settings import DataSettings

ROOT = Path(__file__).resolve().parents[1]
#: the table's columns, in the order they are trained (clean first: the drops pair with it)
MARKINGS = ("clean", "deepstamp", "static", "opacity", "displacement")
#: the label of DeepStamp's drop − static's, paired by F′ seed (the same clean F′)
DIFFERENCE = "deepstamp-static"
#: the decision rule over F′ seeds, stated (vg9 report, 20:16 UTC) before any seed-1/2 result
SPREAD_RULE = ("a drop is distinguishable from 0 across F′ seeds iff its Student-t 95 % "
               "interval over the seeds (mean ± t(0.975, n−1)·SD/√n) excludes 0; DeepStamp "
               "costs less / more than static on a network iff the t-interval of DeepStamp's "
               "drop − static's, paired by F′ seed (the same clean F′), lies wholly below / "
               "above 0, otherwise no difference is established; nothing pooled over networks "
               "decides; each drop's SD over seeds is set beside the seed's reported drops "
               "(an SD above a reported drop: one F′ run cannot resolve that drop).")


def parse_arch(text: str) -> tuple[str, float]:
    """``NAME=MULTIPLIER`` → ``(name, multiplier)``."""
    name, _, mult = text.partition("=")
    if name not in ("alexnet", "vgg16", "resnet50") or not mult:
        raise argparse.ArgumentTypeError(f"--arch {text!r}: expected alexnet|vgg16|resnet50="
                                         "MULTIPLIER, e.g. vgg16=0.25")
    try:
        value = float(mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--arch {text!r}: {mult!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"--arch {text!r}: the multiplier must be in (0, 1]")
    return name, value


def cell(hits: torch.Tensor) -> dict:
    """Accuracy of one F′ on the clean test images (``hits``: N bools) with its 95 % CI."""
    k, n = int(hits.sum()), int(hits.numel())
    lo, hi = clopper_pearson(k, n)
    return {"correct": k, "n": n, "accuracy": k / n, "ci95": [lo, hi]}


def paired_drop(clean: torch.Tensor, marked: torch.Tensor) -> dict:
    """Clean-trained minus marked-trained accuracy over the same images (N bools each):
    the mean per-image difference, its standard error, and the discordant counts."""
    diff = clean.double() - marked.double()
    n = diff.numel()
    return {"drop": float(diff.mean()), "se": float(diff.std() / n ** 0.5) if n > 1 else 0.0,
            "clean_only": int((clean & ~marked).sum()),
            "marked_only": int((marked & ~clean).sum())}


def check_plan(f_seeds: Sequence[int], markings: Sequence[str]) -> None:
    """Refuse F′ seeds that are not distinct integers ≥ 0, and markings that do not start
    with ``clean`` or name a column twice or one not in ``MARKINGS`` (``ValueError``)."""
    if not f_seeds or any(s < 0 for s in f_seeds) or len(set(f_seeds)) != len(f_seeds):
        raise ValueError(f"F′ seeds {list(f_seeds)}: expected distinct integers >= 0")
    unknown = [k for k in markings if k not in MARKINGS]
    if unknown:
        raise ValueError(f"markings {', '.join(unknown)}: not a column (the columns: "
                         f"{', '.join(MARKINGS)})")
    if not markings or markings[0] != "clean" or len(set(markings)) != len(markings):
        raise ValueError(f"markings {','.join(markings)}: expected clean first (the drops pair "
                         "with it), then each other column at most once")


def spread(table: dict) -> dict:
    """Mean, SD and Student-t interval over F′ seeds, per network × quantity.

    A network's F′ seeds are the rows that trained every column of ``table["markings"]``
    (a seed cut short is left out); a network with fewer than two is left out. Quantities
    (``label``, ``metric``): (``clean``, ``accuracy``), (marking, ``drop``) for each other
    column, and (``DIFFERENCE``, ``drop``): DeepStamp's drop − static's per F′ seed, where
    both were trained. Returns ``rule`` (``SPREAD_RULE``), ``confidence`` and ``networks``:
    ``network``, ``width_multiplier``, ``f_seeds`` and ``quantities`` (``spread_summary``'s
    dicts: ``n_seeds``, ``mean``, ``std``, ``ci_low``, ``ci_high``, ``min``, ``max``,
    ``values`` in F′-seed order), all as fractions (points = × 100).
    """
    networks: dict[tuple[str, float], list[dict]] = {}
    for row in table["rows"]:
        if all(k in row["cells"] for k in table["markings"]):
            networks.setdefault((row["network"], row["width_multiplier"]), []).append(row)
    out = []
    for (network, mult), rows in networks.items():
        if len(rows) < 2:
            continue
        tidy = []
        for row in rows:
            values = {("clean", "accuracy"): row["cells"]["clean"]["accuracy"]}
            values.update({(k, "drop"): d["drop"] for k, d in row["drops"].items()})
            if {"deepstamp", "static"} <= row["drops"].keys():
                values[(DIFFERENCE, "drop")] = (row["drops"]["deepstamp"]["drop"]
                                               - row["drops"]["static"]["drop"])
            tidy += [{"seed": row["f_seed"], "stage": network, "label": label, "metric": metric,
                      "value": v} for (label, metric), v in values.items()]
        quantities = [{k: v for k, v in q.items() if k != "stage"} for q in spread_summary(tidy)]
        out.append({"network": network, "width_multiplier": mult,
                    "f_seeds": sorted(r["f_seed"] for r in rows), "quantities": quantities})
    return {"rule": SPREAD_RULE, "confidence": CONFIDENCE, "networks": out}


def summarize(path: Path) -> dict:
    """Add (or renew) ``spread`` in the table at ``path``; the table."""
    table = json.loads(path.read_text())
    if any("f_seed" not in r for r in table["rows"]) or "markings" not in table:
        raise ValueError(f"{path}: its rows carry no f_seed (a table from before --f-seed)")
    table["spread"] = spread(table)
    if not table["spread"]["networks"]:
        raise ValueError(f"{path}: no network has two F′ seeds with every column trained")
    _write(path, table)
    return table


#: the ``environment`` keys that name the machine's float path; two runs merge only when
#: both record them and every key both record is equal (a newer ``environment`` adds keys,
#: e.g. ``threads`` and the float-path variables, that an older table lacks)
MACHINE = ("torch", "cpu_capability", "cpu", "python")
#: what two runs must share for their rows to be one table (besides the machine)
SAME_RECIPE = ("data", "train_images", "test_images", "utility_steps", "batch_size",
               "classifier_lr", "blend", "threads", "markings")


def merge(paths: Sequence[Path], out: Path) -> dict:
    """One table over F′ seeds from several runs on one machine; written to ``out``.

    Each run's rows are kept as measured; ``runs`` records every run's command, seeds,
    networks, wall seconds, start, end and whether it completed (a run cut short keeps
    the cells it wrote; ``spread`` leaves out an F′ seed missing a column), and ``spread``
    is computed over all rows; ``environment`` keeps the keys every run recorded. Runs merge
    only from the same machine (the ``MACHINE`` keys in both and every key both record
    equal: cells move across machines) and the same recipe (``SAME_RECIPE``), and no
    network × F′ seed may come twice (a rerun would count one F′ twice).

    Raises:
        ValueError: fewer than two runs, a run from before ``--f-seed``, another
            environment or recipe, or a network × F′ seed in two runs.
    """
    if len(paths) < 2:
        raise ValueError("--merge needs two or more tables")
    tables = [json.loads(p.read_text()) for p in paths]
    first, runs, seen = tables[0], [], {}
    for path, t in zip(paths, tables, strict=True):
        if any("f_seed" not in r for r in t["rows"]) or "markings" not in t:
            raise ValueError(f"{path}: its rows carry no f_seed (a table from before --f-seed)")
        env, env0 = t.get("environment") or {}, first.get("environment") or {}
        shared = sorted(env.keys() & env0.keys())
        if not set(MACHINE) <= set(shared) or any(env[k] != env0[k] for k in shared):
            raise ValueError(f"{path}: measured on {env}, {paths[0]} on {env0}: cells do not "
                             f"pool across machines (compared: {', '.join(shared)})")
        differ = [k for k in SAME_RECIPE if t.get(k) != first.get(k)]
        if differ:
            raise ValueError(f"{path}: another recipe than {paths[0]} ({', '.join(differ)})")
        for r in t["rows"]:
            key = (r["network"], r["width_multiplier"], r["f_seed"])
            if key in seen:
                raise ValueError(f"{r['network']} ×{r['width_multiplier']:g} F′ seed "
                                 f"{r['f_seed']}: in {seen[key]} and in {path}")
            seen[key] = path
        runs += t.get("runs") or [{
            "command": t["command"], "f_seeds": t["f_seeds"],
            "networks": sorted({f"{r['network']}={r['width_multiplier']:g}" for r in t["rows"]}),
            "wall_seconds": t["wall_seconds"], "started": t.get("started"),
            "finished": t.get("finished"), "bundle": t["bundle"],
            "complete": bool(t.get("complete"))}]
    table = {**first, "command": "; ".join(r["command"] for r in runs), "runs": runs,
             "environment": {k: v for k, v in first["environment"].items()
                             if all(k in t["environment"] for t in tables)},
             "f_seeds": sorted({r["f_seed"] for t in tables for r in t["rows"]}),
             "rows": [r for t in tables for r in t["rows"]],
             "wall_seconds": round(sum(r["wall_seconds"] for r in runs), 1),
             "complete": all(r["complete"] for r in runs), "started": runs[0]["started"],
             "finished": runs[-1]["finished"]}
    table["spread"] = spread(table)
    _write(out, table)
    return table


def measure(bundle: Path, archs: list[tuple[str, float]], out: Path, command: str,
            data_root: Path | None = None, steps: int | None = None,
            f_seeds: Sequence[int] = (0,), markings: Sequence[str] = MARKINGS) -> dict:
    """Run the table and write ``out`` after every cell; the finished table.

    ``steps``: F′ steps instead of the bundle's ``utility_steps`` (tests shrink it).
    ``f_seeds``: F′ seeds (``train_f_prime``'s ``f_seed``: F′'s initial weights, dropout and
    batch order; the data, the stampers' draws and so the marked images stay fixed); one
    row per network × F′ seed, network by network (all of a network's seeds before the
    next network, so a run cut short leaves whole networks). ``markings``: the columns
    trained, ``clean`` first (the drops pair with it).
    """
    check_plan(f_seeds, markings)
    method = load_bundle(bundle)
    if steps is not None:
        method.config = method.config.model_copy(update={"utility_steps": steps})
    c = method.config
    m = json.loads((bundle / "metrics.json").read_text())
    fields = dict(m["data"])
    if data_root is not None:
        fields["root"] = str(data_root)
    settings = DataSettings(**fields, version_with_dvc=False)
    data = training_data(settings.build(ROOT), size=c.working_size)
    x_tr, y_tr = data["train"], data["train_labels"]
    x_te, y_te = data["test"], data["test_labels"]
    device = torch.device("cpu")
    method.to(device)
    stampers = method.stampers()
    # every stamper draws as in the full table (all of MARKINGS, in order), whatever
    # ``markings`` trains: a narrowed run marks the images exactly as the full one did
    g = torch.Generator().manual_seed(c.seed)
    marked = {"clean": x_tr}
    marked.update({name: stamp_all(stampers[name], x_tr, g) for name in MARKINGS[1:]})
    table = {"command": command, "bundle": str(bundle), "data": m["data"],
             "train_images": int(x_tr.shape[0]), "test_images": int(x_te.shape[0]),
             "utility_steps": c.utility_steps, "batch_size": c.batch_size,
             "classifier_lr": c.classifier_lr, "blend": c.blend, "threads":
             torch.get_num_threads(), "environment": environment(), "f_seeds": list(f_seeds),
             "markings": list(markings),
             "seed_reports": SEED_TABLE, "rows": [], "complete": False,
             "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    start = time.time()
    for arch, mult in archs:
        for f_seed in f_seeds:
            row = {"network": arch, "width_multiplier": mult, "f_seed": f_seed, "cells": {},
                   "drops": {}}
            table["rows"].append(row)
            hits_clean = None
            for name in markings:
                t0 = time.time()
                net = train_f_prime(method, arch, marked[name], y_tr, device, mult, f_seed)
                row["parameters"] = sum(p.numel() for p in net.parameters())
                hits = correct(net, x_te, y_te, device)
                row["cells"][name] = {**cell(hits), "seconds": round(time.time() - t0, 1),
                                      "load_1min": round(os.getloadavg()[0], 2)}
                if name == "clean":
                    hits_clean = hits
                else:
                    row["drops"][name] = paired_drop(hits_clean, hits)
                table["wall_seconds"] = round(time.time() - start, 1)
                if len(f_seeds) > 1:
                    table["spread"] = spread(table)
                _write(out, table)
                print(arch, f"f_seed={f_seed}", name, row["cells"][name], flush=True)
    table["complete"] = True
    table["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    _write(out, table)
    return table


def _write(out: Path, table: dict) -> None:
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(table, indent=1))
    tmp.replace(out)  # atomic: a reader never sees half a table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "components/pretrained/visible_gan")
    ap.add_argument("--arch", type=parse_arch, action="append", metavar="NAME=MULTIPLIER")
    ap.add_argument("--data-root", type=Path, default=None,
                    help="folder of the procedural classes (default: the bundle's data root)")
    ap.add_argument("--steps", type=int, default=None,
                    help="F′ steps (default: the bundle's utility_steps; tests shrink it)")
    ap.add_argument("--f-seed", type=int, action="append", default=None, dest="f_seeds",
                    metavar="S", help="an F′ seed (repeatable; default 0, the shipped table): "
                    "moves F′'s initial weights, dropout and batch order, not the data or marks")
    ap.add_argument("--markings", default=",".join(MARKINGS),
                    help=f"comma-separated columns, clean first (default {','.join(MARKINGS)})")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--summarize", type=Path, metavar="JSON",
                    help="only add the spread over F′ seeds to this table (trains nothing)")
    ap.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                    help="merge runs of one machine into --out, with the spread over "
                    "all their F′ seeds (trains nothing)")
    args = ap.parse_args()
    if args.merge is not None:
        if args.out is None:
            ap.error("--merge needs --out")
        missing = [str(p) for p in args.merge if not p.is_file()]
        if missing:
            ap.error(f"--merge {' '.join(missing)}: no such file")
        try:
            table = merge(args.merge, args.out)
        except ValueError as e:
            ap.error(str(e))
        print(json.dumps(table["spread"]["networks"], indent=1))
        return
    if args.summarize is not None:
        if not args.summarize.is_file():
            ap.error(f"--summarize {args.summarize}: no such file")
        try:
            table = summarize(args.summarize)
        except ValueError as e:
            ap.error(str(e))
        print(json.dumps(table["spread"]["networks"], indent=1))
        return
    if not args.arch or args.out is None:
        ap.error("--arch and --out are required (or --summarize JSON)")
    torch.set_num_threads(args.threads)
    if not (args.bundle / "metrics.json").is_file():
        raise SystemExit(f"{args.bundle}: no metrics.json (the table reads the bundle's data "
                         "settings from it)")
    command = " ".join(["python", "scripts/visible_gan_architecture_table.py", *sys.argv[1:]])
    f_seeds = args.f_seeds or [0]
    markings = [k.strip() for k in args.markings.split(",")]
    try:
        check_plan(f_seeds, markings)
    except ValueError as e:
        ap.error(str(e))
    measure(args.bundle, args.arch, args.out, command, args.data_root, args.steps, f_seeds,
            markings)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
