"""visible_gan's removal judgement over several seeds: mean ± 95 % interval, never one run.

The gate's removal figures (``removal_left/<stamper>``, ``removal_left_vs_<baseline>/
deepstamp``, ``removal_gain_vs_static/deepstamp``) and the visibility one
(``contrast_vs_static/deepstamp``) come from one W and one V′ per marking; one run says
little (issue #14). For each seed this trains the tiny profile's W (its
``visible_gan.method`` config with ``seed`` set, ``--set key=value`` overrides) on the tiny
profile's data (the ten procedural classes at 32², 1400 train / 300 val / 300 test), runs
the seed's V′ removal on the test split (``fit_report``; F′ skipped: ``utility_steps`` 0,
accuracy is not part of the removal judgement) and scores it with ``evaluation.visible_rows``
(the rows the pipeline's gate reads), on all 300 test images. What a seed changes:
``config.seed`` (F, W, V, D, every V′'s initial weights and batches); the data stay fixed.

Seeds may run in separate processes (``--seeds 1``, ``--seeds 2`` …, same ``--out``); each
writes ``seed_<n>.json``; ``--summarize`` reduces every ``seed_*.json`` in ``--out`` to
``summary.json`` and ``summary.md`` (mean, Student-t 95 % interval, min, max per metric;
``seed_spread.spread_summary``, the house's seed reduction).

``--stampers static,deepstamp`` (or ``deepstamp``) trains V′ on those markings only
(``evaluation.removal_curve``: the same V′ as ``fit``'s table): the judgement at a half or
a fifth of the cost. Every seed file also carries ``removability``'s figures (what share of
each mark the best local linear inverse leaves, W's image-dependent share). To compare a
recipe with another (``--set`` levers), ``--summarize --baseline DIR`` pairs each seed
with DIR's run of the same seed (``removal_left_vs_baseline``) and, for a run without a
static V′, takes DIR's: a static V′ depends on the seed and V′'s settings, not on W.
``--set utility_steps=400`` adds the F′ accuracy figures (``accuracy_drop``: a lever's
accuracy cost, over seeds); ``--baseline`` then pairs them too (``accuracy_drop_vs_baseline``:
this recipe's DeepStamp drop − the baseline's, same seed, same clean F′). ``--skip-removal``
trains no V′ at all (no ``removal_*`` figures; W's contrast and ``removability``'s
linear-inverse figures, which train nothing, stay): for measuring accuracy only, when the
removal figures of both recipes are already measured; it needs ``utility_steps`` > 0.

Usage::

    OMP_NUM_THREADS=1 python scripts/visible_gan_seed_spread.py --seeds 0,1,2 --out runs/vg_seeds
    python scripts/visible_gan_seed_spread.py --summarize --out runs/vg_seeds
    OMP_NUM_THREADS=1 python scripts/visible_gan_seed_spread.py --seeds 0,1,2 \
        --out runs/vg_lever --stampers deepstamp --set removal_warmup_steps=1200
    python scripts/visible_gan_seed_spread.py --summarize --out runs/vg_lever \
        --baseline runs/vg_seeds
    OMP_NUM_THREADS=1 python scripts/visible_gan_seed_spread.py --seeds 0 \
        --out runs/vg_acc_base --skip-removal --set utility_steps=400
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402

from neuralmark.components.data.labelled import (  # noqa: E402
    ProceduralClassesConfig,
    build_procedural_classes,
    training_data,
)
from neuralmark.components.methods.base import resize_square  # noqa: E402
from neuralmark.components.methods.visible_gan.evaluation import (  # noqa: E402
    STAMPERS,
    removal_curve,
    stamp_all,
    visible_rows,
)
from neuralmark.components.methods.visible_gan.mark import box_mask  # noqa: E402
from neuralmark.components.methods.visible_gan.method import VisibleGan  # noqa: E402
from neuralmark.components.methods.visible_gan.removability import (  # noqa: E402
    image_dependent_share,
    local_linear_left,
)
from neuralmark.components.seed_spread import spread_summary  # noqa: E402
from neuralmark.runtime.settings import load_profile, parse_overrides  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: the figures only ``--summarize --baseline`` adds (a seed compared with another recipe's)
BASELINE_FIGURES = [("deepstamp", "removal_left_vs_baseline"),
                    ("deepstamp", "contrast_vs_baseline"),
                    ("deepstamp", "accuracy_drop_vs_baseline")]
#: the F′ figures a run has only with ``--set utility_steps=N`` (the accuracy cost)
ACCURACY_FIGURES = [("deepstamp", "accuracy_drop"), ("static", "accuracy_drop"),
                    ("opacity", "accuracy_drop"), ("displacement", "accuracy_drop"),
                    ("clean", "accuracy")]
#: the figures the judgement reads (label, metric), in the order the summary lists them
JUDGED = [("deepstamp", "contrast_vs_static"), ("deepstamp", "removal_left_vs_static"),
          ("deepstamp", "removal_left_vs_opacity"),
          ("deepstamp", "removal_left_vs_displacement"),
          ("deepstamp", "removal_gain_vs_static"),
          ("static", "removal_left"), ("opacity", "removal_left"),
          ("displacement", "removal_left"), ("deepstamp", "removal_left"),
          ("static", "removal_psnr"), ("deepstamp", "removal_psnr"),
          ("static", "contrast"), ("deepstamp", "contrast"),
          ("deepstamp", "image_dependent_share"), ("static", "local_linear_left"),
          ("deepstamp", "local_linear_left"), *BASELINE_FIGURES, *ACCURACY_FIGURES]



def _only_stampers(method: VisibleGan, data: dict, stampers: list[str],
                   removal_steps: int) -> list[dict]:
    """V′ for ``stampers`` only (``evaluation.removal_curve``: the V′ ``fit_report`` trains,
    same initial weights, batches and judging): the removal rows ``visible_rows`` reads."""
    size = method.config.working_size
    x_tr = resize_square(data["train"], size).clamp(0, 1)
    x_te = resize_square(data["test"], size).clamp(0, 1)
    got = {r["stamper"]: r for r in removal_curve(
        method, x_tr, x_te, [removal_steps], torch.Generator().manual_seed(0),
        method.device, stampers)}
    rows = []
    for name, r in got.items():
        rows += [{"label": name, "metric": "removal_left", "value": r["removal_left"]},
                 {"label": name, "metric": "removal_gain", "value": r["removal_gain"]},
                 {"label": name, "metric": "removal_psnr", "value": r["psnr_after"]}]
    if "deepstamp" in got:
        rows += [{"label": "deepstamp", "metric": f"removal_left_vs_{name}",
                  "value": got["deepstamp"]["removal_left"] - r["removal_left"]}
                 for name, r in got.items() if name != "deepstamp"]
    return rows


def _removability(method: VisibleGan, data: dict) -> list[dict]:
    """``removability``'s figures on the test split: W's per-image share and, per stamper,
    what the best local linear inverse (fitted on the train split) leaves."""
    size, scale = method.config.working_size, method.config.mark_scale
    x_tr = resize_square(data["train"], size).clamp(0, 1)
    x_te = resize_square(data["test"], size).clamp(0, 1)
    g = torch.Generator().manual_seed(0)
    marked = {n: (stamp_all(st, x_tr, g), stamp_all(st, x_te, g))
              for n, st in method.stampers().items()}
    rows = [{"label": n, "metric": "local_linear_left",
             "value": local_linear_left({"clean": x_tr, "marked": tr},
                                        {"clean": x_te, "marked": te}, scale)}
            for n, (tr, te) in marked.items()]
    rows.append({"label": "deepstamp", "metric": "image_dependent_share",
                 "value": image_dependent_share(marked["static"][1], marked["deepstamp"][1],
                                                box_mask(size, size, scale))})
    return rows


def run_seed(seed: int, data: dict, overrides: dict,
             stampers: list[str] | None = None, removal: bool = True) -> dict:
    """Train one W for ``seed`` and score it: ``{"seed", "config", "rows", "seconds"}``.

    ``stampers``: train V′ for these markings only (``None``: every one, through ``fit``).
    ``removal``: ``False`` trains no V′ (accuracy only: needs ``utility_steps`` > 0); the
    seed file then says ``stampers`` ``[]`` and ``removal_steps`` 0.
    """
    start = time.time()
    recipe = {**load_profile("tiny")["visible_gan"]["method"], "utility_steps": 0,
              **overrides, "seed": seed}
    if not removal and (stampers is not None or recipe["utility_steps"] <= 0):
        raise SystemExit("skipping the removal part measures F′ accuracy only: give "
                         "utility_steps > 0 and no stampers")
    removal_steps = recipe["removal_steps"] if removal else 0
    if stampers is not None or not removal:
        recipe.update(removal_steps=0, removal_curve_steps=[])
    method = VisibleGan(VisibleGan.Config.model_validate(recipe))
    final = method.fit(data)
    rows = visible_rows(method, data["test"])
    if stampers is not None:
        rows += _only_stampers(method, data, stampers, removal_steps)
    rows += _removability(method, data)
    kept = [{"label": r["label"], "metric": r["metric"], "value": r["value"], "seed": seed,
             "stage": "tiny"} for r in rows]
    return {"seed": seed, "config": {**method.config.model_dump(mode="json"),
                                     "removal_steps": removal_steps},
            "stampers": (stampers or list(STAMPERS)) if removal else [],
            "final_training": final, "rows": kept,
            "seconds": round(time.time() - start, 1)}


#: the V′ settings two runs must share for one's static V′ to stand for the other's
V_PRIME = ("v_width", "batch_size", "removal_lr", "removal_steps")
#: the F′ settings two runs must share for their accuracy drops to be paired (the clean
#: F′ then is the same network: its initial weights and batches depend on the seed only)
F_PRIME = ("classifier", "classifier_width", "utility_steps", "batch_size", "classifier_lr",
           "task")


def against_baseline(run: dict, base: dict) -> list[dict]:
    """Rows comparing ``run``'s W with the ``base`` run's W of the same seed.

    ``removal_left_vs_baseline/deepstamp`` (this W's share left − the baseline W's) where
    both trained V′; ``contrast_vs_baseline/deepstamp``; where ``run`` trained no static V′
    (``--stampers deepstamp``), the baseline's ``removal_left/static`` and this run's
    ``removal_left_vs_static/deepstamp``: the static V′ depends only on the seed and
    ``V_PRIME`` (not on W), so the baseline's is this run's. Where both trained F′
    (``utility_steps`` > 0), ``accuracy_drop_vs_baseline/deepstamp`` (this W's accuracy drop
    − the baseline W's; both runs must share ``F_PRIME``).
    """
    if run["seed"] != base["seed"]:
        raise SystemExit(f"seed {run['seed']}: the baseline file is seed {base['seed']}")
    mine = {(r["label"], r["metric"]): r["value"] for r in run["rows"]}
    theirs = {(r["label"], r["metric"]): r["value"] for r in base["rows"]}
    rows = [("deepstamp", "contrast_vs_baseline",
             mine[("deepstamp", "contrast")] - theirs[("deepstamp", "contrast")])]
    key = ("deepstamp", "removal_left")
    if key in mine and key in theirs:
        if any(run["config"][k] != base["config"][k] for k in V_PRIME):
            raise SystemExit(f"seed {run['seed']}: the baseline run differs in V′ "
                             f"settings {V_PRIME}; its V′ does not stand for this one")
        rows.append(("deepstamp", "removal_left_vs_baseline", mine[key] - theirs[key]))
        if ("static", "removal_left") not in mine:
            static = theirs[("static", "removal_left")]
            rows += [("static", "removal_left", static),
                     ("deepstamp", "removal_left_vs_static", mine[key] - static)]
    key = ("deepstamp", "accuracy_drop")
    if key in mine and key in theirs:
        if any(run["config"].get(k) != base["config"].get(k) for k in F_PRIME):
            raise SystemExit(f"seed {run['seed']}: the baseline run differs in F′ "
                             f"settings {F_PRIME}; its accuracy drop is not paired")
        rows.append(("deepstamp", "accuracy_drop_vs_baseline", mine[key] - theirs[key]))
    return [{"label": label, "metric": metric, "value": value, "seed": run["seed"],
             "stage": "tiny"} for label, metric, value in rows]


def summarize(out: Path, baseline: Path | None = None) -> list[dict]:
    """Reduce ``out/seed_*.json`` to ``summary.json`` / ``summary.md``; the judged rows.

    ``baseline``: another recipe's seed files, compared seed by seed (``against_baseline``).
    """
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("seed_*.json"))]
    if len(runs) < 2:
        raise SystemExit(f"{out}: {len(runs)} seed file(s); a spread needs two")
    if baseline is not None:
        for run in runs:
            path = baseline / f"seed_{run['seed']}.json"
            if not path.exists():
                raise SystemExit(f"{path}: no baseline run for seed {run['seed']}")
            run["rows"] = run["rows"] + against_baseline(run, json.loads(path.read_text()))
    # the judged figures that at least two seeds measured (runs with fewer markings, or
    # older seed files, lack some)
    rows = [r for run in runs for r in run["rows"] if (r["label"], r["metric"]) in JUDGED]
    seen = Counter((r["label"], r["metric"]) for r in rows)
    summary = {(s["label"], s["metric"]): s for s in spread_summary(
        [r for r in rows if seen[(r["label"], r["metric"])] >= 2])}
    judged = [summary[k] for k in JUDGED if k in summary]
    seeds = [run["seed"] for run in runs]
    recipe = {k: v for k, v in runs[0]["config"].items()
              if k in ("w_width", "v_width", "d_width", "classifier_width", "classifier_steps",
                       "steps", "batch_size", "removal_steps", "removal_lr",
                       "lambda_visibility", "visibility_floor", "utility_steps",
                       "lambda_f", "lambda_v", "lambda_d", "max_delta",
                       "removal_warmup_steps", "v_updates_per_step")}
    recipe["stampers"] = runs[0].get("stampers", list(STAMPERS))
    lines = [f"| figure (seeds {', '.join(map(str, seeds))}) | mean | 95 % interval | min | max "
             "| per seed |", "|---|---|---|---|---|---|"]
    for s in judged:
        per = ", ".join(f"{v:.3f}" for v in s["values"])
        lines.append(f"| {s['metric']}/{s['label']} | {s['mean']:.3f} | "
                     f"{s['ci_low']:.3f} – {s['ci_high']:.3f} | {s['min']:.3f} | "
                     f"{s['max']:.3f} | {per} |")
    (out / "summary.json").write_text(json.dumps(
        {"seeds": seeds, "recipe": recipe, "baseline": None if baseline is None else
         str(baseline), "seconds": [run["seconds"] for run in runs],
         "judged": judged}, indent=1))
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return judged


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds to run")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "vg_seeds")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override of the tiny recipe (JSON values), repeatable")
    ap.add_argument("--data-root", type=Path, default=ROOT / "data" / "classes-tiny")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stampers", default=None,
                    help="comma-separated markings to train V′ on (default: all four); "
                         "e.g. static,deepstamp for a cheaper removal judgement")
    ap.add_argument("--skip-removal", action="store_true",
                    help="train no V′ (accuracy only; needs --set utility_steps=N): for a "
                         "recipe whose removal figures are already measured")
    ap.add_argument("--summarize", action="store_true",
                    help="only reduce the seed_*.json already in --out")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="with --summarize: a folder of another recipe's seed files to "
                         "compare with seed by seed (and take the static V′ from)")
    args = ap.parse_args()
    if args.summarize:
        summarize(args.out, args.baseline)
        return
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError as e:
        raise SystemExit(f"--seeds must be comma-separated integers, got {args.seeds!r}") from e
    stampers = None
    if args.stampers is not None:
        stampers = [x.strip() for x in args.stampers.split(",") if x.strip()]
        unknown = sorted(set(stampers) - set(STAMPERS))
        if unknown or "deepstamp" not in stampers or len(set(stampers)) != len(stampers):
            raise SystemExit(f"--stampers must include deepstamp and name only "
                             f"{list(STAMPERS)}; got {args.stampers!r}")
    torch.set_num_threads(args.threads)
    data_cfg = load_profile("tiny")["visible_gan"]["data"]
    manifest = build_procedural_classes(args.data_root, ProceduralClassesConfig(
        size=data_cfg["size"], images_per_class=data_cfg["images_per_class"]))
    data = training_data(manifest, size=data_cfg["size"])
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        result = run_seed(seed, data, parse_overrides(args.set), stampers,
                          removal=not args.skip_removal)
        tmp = args.out / f".seed_{seed}.json.tmp"
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(args.out / f"seed_{seed}.json")
        print(f"seed {seed}: {result['seconds']:.0f} s; " + ", ".join(
            f"{r['metric']}/{r['label']} {r['value']:.3f}" for r in result["rows"]
            if (r["label"], r["metric"]) in JUDGED), flush=True)


if __name__ == "__main__":
    main()
