"""Train, measure and bundle a protected derain model for ``components/pretrained/output_mark``.

One command for every size (issue #19)::

    python scripts/train_shipped_output_mark.py --profile tiny --device cpu --out outputs/om
    python scripts/train_shipped_output_mark.py --profile full --device cuda --minutes 8 \
        --out outputs/om-full
    python scripts/train_shipped_output_mark.py --profile my_profile.yaml --out outputs/om-x
    cp outputs/om/bundle/* components/pretrained/output_mark/

It builds the profile's derain pairs (rain synthesised on the sample photos, split by
photo), trains M, stage 1 and stage 2 with the **demo key** ``neuralmark-demo`` (stated
openly: anyone can extract with it, so it proves nothing about ownership; retrain with
your own key), then trains the attacker's matrix on stage 1's B′ (one surrogate per
cell, the attacker's own seed) and an independent model, and scores both extractors.
(``scripts/output_mark_seed_matrix.py`` defaults to the profile's evaluation key, as
``neuralmark protect --seeds`` does; with ``--key neuralmark-demo`` it trains the same
models and cells as this script for a seed.)
``--out`` receives ``bundle/`` (the method bundle: config, weights with M, H, R, D and
the logo, state with the key fingerprint and the null scores), ``metrics.json`` (the
tidy rows, the flat summary, the run's recipe, seconds, device, the cuts of
``--minutes``) and ``MODEL_CARD.md`` (the measured tables, the command).

``--minutes`` bounds the wall time: the training loops stop early when their share of it
(:data:`SHARES`) is spent (``neuralmark.components.time_budget``) and ``metrics.json``
lists every loop that was cut, so a bounded run says what it really trained; 0 (the
default on CPU) leaves the step counts alone and the run reproducible to the bit.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402

from neuralmark.components.attacks.surrogate import matrix_cells  # noqa: E402
from neuralmark.components.data import pairs  # noqa: E402
from neuralmark.components.methods.base import WatermarkKey, pick_device  # noqa: E402
from neuralmark.components.methods.output_mark.matrix import (  # noqa: E402
    attack_pairs,
    cell_outputs,
    evaluation_rows,
    gate_summary,
    independent_model_outputs,
)
from neuralmark.components.methods.output_mark.seeds import (  # noqa: E402
    attacker_settings,
    seeded_config,
)
from neuralmark.components.methods.output_mark.tables import report_markdown  # noqa: E402
from neuralmark.components.methods.output_mark.training import (  # noqa: E402
    clean_variety_images,
    stage1_method,
    stage2_method,
)
from neuralmark.components.time_budget import time_budget  # noqa: E402
from neuralmark.runtime.settings import CODE_ROOT, resolve_profile  # noqa: E402

DEMO_KEY = "neuralmark-demo"
#: this script, as the card's command names it
RECIPE = "scripts/train_shipped_output_mark.py"
#: share of ``--minutes`` each phase may spend (the rest: data, scoring, writing)
SHARES = {"model": 0.08, "stage1": 0.40, "stage2": 0.17, "matrix": 0.25, "independent": 0.04}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="tiny",
                   help="tiny, full, or the path of a profile YAML with an output_mark section")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--minutes", type=float, default=None,
                   help="wall-time bound (default: 8 on CUDA, none on CPU; 0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--key", default=DEMO_KEY, help="whose logo to hide (default: the demo key)")
    p.add_argument("--config", default="{}", help="JSON overrides of the output_mark config")
    p.add_argument("--clean-variety", action="store_true",
                   help="shorthand for --config '{\"clean_variety\": true}': R's clean term "
                        "also sees varied clean images of the training photos, procedural "
                        "images and generic operations' outputs (the config field the "
                        "pipeline honours too)")
    p.add_argument("--cells", default=None, help='JSON [[arch, loss], ...] (default: nine)')
    p.add_argument("--rewrite-card", action="store_true",
                   help="train nothing: write --out/MODEL_CARD.md again from --out/metrics.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rewrite_card:
        record = json.loads((args.out / "metrics.json").read_text())
        (args.out / "MODEL_CARD.md").write_text(model_card(record, record["rows"]))
        return 0
    device = pick_device(args.device)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    minutes = args.minutes if args.minutes is not None else (8.0 if device.type == "cuda"
                                                              else 0.0)
    overrides = {**json.loads(args.config), "task": "derain", "device": device.type}
    if args.clean_variety:
        overrides["clean_variety"] = True
    settings = resolve_profile("output_mark", args.profile, config=overrides,
                               data={"version_with_dvc": False})
    cfg = seeded_config(settings.config, args.seed)
    key = WatermarkKey(args.key)
    total = minutes * 60 if minutes > 0 else None

    def share(phase: str) -> float | None:
        return None if total is None else SHARES[phase] * total

    start = time.time()
    with time_budget(total) as budget:
        manifest = settings.data.build(CODE_ROOT)
        train, groups, test = pairs.synthesised_pairs(manifest, "derain", settings.data.size)
        clean = clean_variety_images(cfg, str(manifest))  # None unless config.clean_variety
        with time_budget(share("model") + share("stage1") if total else None):
            stage1, m1 = stage1_method(train, cfg, key, groups=groups, clean=clean)
        with time_budget(share("stage2")):
            stage2, m2 = stage2_method(stage1, train, clean=clean)
        bundle = stage2.to_bundle(args.out / "bundle")
        print(f"bundle {bundle} after {time.time() - start:.0f} s", flush=True)
        cells = matrix_cells(json.loads(args.cells) if args.cells else None)
        a, marked = attack_pairs(stage1, train)
        query, _ = stage1.working_pairs(test, "test pairs")
        schedule = attacker_settings(cfg).model_copy(update={"device": device.type})
        outputs = []
        for arch, loss in cells:
            with time_budget(share("matrix") / len(cells) if total else None):
                outputs.append(cell_outputs(marked, a, query, arch, loss, schedule,
                                            cfg.cpu_threads))
        with time_budget(share("independent")):
            independent = independent_model_outputs(train, test[0], cfg)
    rows = evaluation_rows(stage1, stage2, None, key, test, cells, outputs, [], independent)
    summary = gate_summary(rows)
    command = [RECIPE, *(sys.argv[1:] if argv is None else argv)]  # the arguments parsed
    record = {"argv": command, "seconds": time.time() - start, "device": str(device),
              "device_name": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
              "torch_threads": cfg.cpu_threads, "minutes": minutes,
              "cuts": {} if budget is None else {k: list(v) for k, v in budget.cuts.items()},
              "profile": args.profile, "seed": args.seed, "key": args.key,
              "config": cfg.model_dump(mode="json"),
              "attacker": schedule.model_dump(mode="json"),
              "n_train": int(train[0].shape[0]), "n_test": int(test[0].shape[0]),
              "n_clean_variety": 0 if clean is None else int(clean[0].shape[0]),
              "training": {"stage1": m1, "stage2": m2}, "summary": summary, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.json").write_text(json.dumps(record, indent=1, default=float))
    (args.out / "MODEL_CARD.md").write_text(model_card(record, rows))
    print(report_markdown(rows, "derain"))
    print(f"total {time.time() - start:.0f} s", flush=True)
    return 0


def stopping_rule(record: dict[str, Any]) -> str:
    """One card line: which checkpoints the stopping rule kept (``output_mark.selection``)."""
    c, t = record["config"], record["training"]
    if not c.get("select_every"):
        return "- Stopping rule: off (the last step of each stage ships)."
    parts = []
    for stage, prefix, steps in (("stage 1", "", c["steps"]),
                                 ("stage 2", "stage2_", c["stage2_steps"])):
        m = t["stage2" if prefix else "stage1"]
        step = m.get(f"{prefix}selected_step", -1)
        scored = int(m.get(f"{prefix}checkpoints_scored", 0))
        qualified = int(m.get(f"{prefix}checkpoints_qualified", 0))
        kept = (f"kept step {int(step)} of {steps}" if step >= 0
                else "no checkpoint qualified, the last step ships")
        parts.append(f"{stage} {kept} ({qualified} of {scored} checkpoints qualified)")
    return (f"- Stopping rule (every {c['select_every']} steps on the held-out part: B′ ≥ "
            f"{c['psnr_target']} dB, no clean image read, ≥ {100 * c['select_min_read']:.0f}% "
            f"of B′ read): {'; '.join(parts)}.")


def clean_variety(record: dict[str, Any]) -> str:
    """One card line: the extra clean images of R's clean term and the resize round trip."""
    c, n = record["config"], record.get("n_clean_variety", 0)
    extra = (f"{n} varied clean images (crops of the training photos at scales 0.1–1, "
             "procedural images, half of them through a generic blur / sharpen / JPEG / "
             "denoise; those of held-out photos dropped)" if n else "no extra clean images")
    trip = (f"{100 * c.get('resize_roundtrip', 0):.0f}% of B′ through the service's resize "
            f"round trip (factors {c.get('roundtrip_factors')}, 8-bit)"
            if c.get("resize_roundtrip") else "no resize round trip")
    return f"- R's clean term: {extra}; {trip}."


def pipeline_recipe(record: dict[str, Any]) -> dict[str, Any] | None:
    """The output_mark pipeline's ``parameters`` that train this run's bundle, or ``None``.

    The recipe's ``--config`` (with ``clean_variety``, ``device``, and ``seed`` for the
    method and stage-2 surrogate), the key as ``evaluation.key_secret``, the recipe's matrix
    (no spread-spectrum cells, no ablations). ``None`` for a profile given as a file (the
    pipeline reads named profiles) or a run cut by ``--minutes``.
    """
    try:
        args = parse_args([str(a) for a in record["argv"][1:]])
    except SystemExit:  # a record of another command line
        return None
    if Path(args.profile).suffix in (".yaml", ".yml") or record["cuts"]:
        return None
    config = {**json.loads(args.config), "device": record["config"]["device"]}
    if record["config"].get("clean_variety"):
        config["clean_variety"] = True
    if args.seed:
        config["seed"] = args.seed
        config["surrogate"] = {**config.get("surrogate", {}), "seed": args.seed}
    matrix: dict[str, Any] = {"baseline": False, "ablations": []}
    if args.cells:
        matrix["cells"] = json.loads(args.cells)
    return {"task": "derain", "profile": args.profile, "config": config,
            "evaluation": {"key_secret": args.key}, "matrix": matrix}


def pipeline_line(record: dict[str, Any]) -> str:
    """One card line: the same training through the ZenML pipeline."""
    params = pipeline_recipe(record)
    if params is None:
        return ("- Through the pipeline: not expressible (a profile file or a run cut by "
                "`--minutes`).")
    return ("- The same training through the ZenML pipeline (stage 1 and 2 are the same "
            "library calls on the same pairs and clean images): a run config with "
            f"`parameters: {json.dumps(params)}` (for the shipped model: "
            "`configs/output_mark_shipped.yaml`), run by `neuralmark protect --task derain "
            f"--profile {params['profile']} --config FILE` or `zenml pipeline run "
            "neuralmark.pipelines.output_mark.output_mark_pipeline -c FILE`.")


def model_card(record: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The shipped bundle's card: recipe, command, data, the measured tables."""
    c, s = record["config"], record["summary"]
    archs = c["stage2_archs"] or [c["surrogate"]["arch"]]
    names = {"unet": "UNet", "res9": "Res9", "res16": "Res16", "cnet": "CNet"}
    held_in = ", ".join(f"{names.get(a, a)}·L2" for a in archs)
    cuts = record["cuts"] or "none (every loop ran its configured steps)"
    return "\n".join([
        "# output_mark — shipped protected derain model", "",
        "What `neuralmark extract IMAGE --key neuralmark-demo` and `neuralmark audit "
        "--suspect-outputs DIR --key neuralmark-demo` read when no `--bundle` is given. "
        "The key is the public **demo key** `neuralmark-demo`: anyone can extract and "
        "audit with it, so a detection proves that an output came from this demo service "
        "(or a model trained on its outputs), never who owns anything. Protect your own "
        "model with your own key (`neuralmark protect --task derain`).", "",
        "## Training", "",
        f"- Command: `python {shlex.join(record['argv'])}` "
        f"({record['seconds'] / 60:.1f} min on {record['device_name']}, "
        f"{record['torch_threads']} torch thread(s); `--minutes` cuts: {cuts}).",
        f"- Data: the derain pairs of profile `{record['profile']}`: rain synthesised on "
        "crops of the photos that ship with scikit-image / scikit-learn plus procedural "
        f"images, {record['n_train']} training pairs split by photo into the H/R part and "
        f"the held-out part (stage 2's surrogate, calibration), {record['n_test']} test "
        "pairs from other photos (every figure below is on them).",
        f"- Recipe: seed {record['seed']}, working size {c['working_size']}², M "
        f"{c['model_steps']} steps, stage 1 {c['steps']} steps (λ1 {c['lambda_mse']}, jitter "
        f"{c['jitter']}), stage 2 {c['stage2_steps']} steps on the surrogates "
        f"{', '.join(archs)} (L2, {c['surrogate']['steps']} steps each) with their clean "
        "counterparts; calibrated on the held-out part's clean images.",
        stopping_rule(record),
        clean_variety(record),
        pipeline_line(record),
        "- Files: `weights.safetensors` (M, H, R, D, the logo δ), `config.json`, "
        "`state.json` (the key's fingerprint, the null NC scores).", "",
        "## Measured (test pairs)", "",
        f"- B′ PSNR {s['psnr']:.1f} dB, SSIM {s['ssim']:.3f}; marked outputs read "
        f"{100 * s['detection_rate/none']:.0f}% (NC > {c['threshold']}).",
        f"- False positives (FPR): clean outputs B flagged {100 * s['fpr_clean_B']:.1f}%, "
        f"clean inputs A {100 * s['fpr_clean_A']:.1f}%, targets "
        f"{100 * s['fpr_clean_target']:.1f}%; outputs of an independently trained model "
        f"{100 * s['clean_independent_model/false_positive_rate']:.1f}%.",
        f"- Surrogate matrix mean: stage 1 (†) {100 * s['sr_mean/stage1']:.0f}% → stage 2 "
        f"{100 * s['sr_mean/stage2']:.0f}%. Not held out (same arch and loss as a stage-2 "
        f"surrogate, only the seed differs): {held_in}. The attacker's surrogates train "
        f"{record['attacker']['steps']} steps with seed {record['attacker']['seed']}.", "",
        report_markdown(rows, "derain"), ""])


if __name__ == "__main__":
    raise SystemExit(main())
