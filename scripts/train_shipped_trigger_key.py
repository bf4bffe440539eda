"""Train, mark and measure the trigger_key host shipped in ``components/pretrained/trigger_key``.

Recipe: a grey DnCNN (6 layers, 24 wide; Gaussian σ = 25/255) trained on 40×40 patches of
the photos that ship with scikit-image and scikit-learn (``components/data/sample``'s
``BUNDLED_PHOTOS``; the last three held out for fidelity), marked with the **demo key**
``neuralmark-demo`` (stated openly: anyone can verify with it, it proves nothing about
ownership), calibrated against 500 random keys, an independently trained host and the
λ = 0 fine-tuned host, the visualizer trained on the built-in © logo. ``--evaluate`` also
runs the model attack suite on it and on both baselines, the uniqueness matrix, the
capacity rows and the keyed-∇ ablation, and writes ``evaluation.md`` (the figures of the
model cards).

``--profile tiny|full|<profile.yaml>`` trains that profile's ``trigger_key`` section
instead (the pipeline's config resolution: host depth per arch, ``--run-config`` YAML's
``parameters.config`` such as ``configs/trigger_key_red.yaml``, data built from the
profile's ``data`` settings, the profile's attack suite with ``--evaluate``), on
``--device auto|cpu|cuda``, and writes ``--out``: ``bundle/``, ``summary.json`` (the
metrics) and ``MODEL_CARD.md`` (data, steps, metrics, the command). The ``full`` profile is
sized for one CUDA GPU.

Usage::

    python scripts/train_shipped_trigger_key.py --out outputs/trigger_key [--evaluate]
    python scripts/train_shipped_trigger_key.py --profile full --device auto \
        --run-config configs/trigger_key.yaml --out outputs/trigger_key_full
    cp outputs/trigger_key/bundle/* components/pretrained/trigger_key/
    # re-measure η of a bundle of this recipe (same weights and S):
    python scripts/train_shipped_trigger_key.py --bundle components/pretrained/trigger_key \
        --recalibrate --out outputs/trigger_key
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from neuralmark.components.data.sample import BUNDLED_PHOTOS, load_bundled_photo  # noqa: E402
from neuralmark.components.methods import build, load_bundle  # noqa: E402
from neuralmark.components.methods.base import WatermarkKey  # noqa: E402
from neuralmark.components.methods.trigger_key import analysis, tables  # noqa: E402
from neuralmark.components.methods.trigger_key.evaluation import evaluate_attacks  # noqa: E402

DEMO_KEY = WatermarkKey("neuralmark-demo")
RECIPE = {"task": "denoise", "arch": "dncnn", "channels": 1, "depth": 6, "width": 24,
          "patch_size": 40, "n_patches": 2048, "host_steps": 1000, "embed_steps": 1000,
          "calibration_keys": 500, "visualizer_steps": 600, "seed": 0}
#: a short attack suite (CPU): the seed's pruning grid, short fine-tuning, distillation,
#: overwriting
SUITE = [("prune", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]),
         ("fine_tune_original", [1, 3]), ("fine_tune_new", [1, 3]), ("distill", [3]),
         ("overwrite", [None])]


def photos() -> dict[str, list[torch.Tensor]]:
    imgs = [torch.from_numpy(np.array(load_bundled_photo(p))).permute(2, 0, 1).float() / 255
            for p in BUNDLED_PHOTOS]
    return {"train": imgs[:-3], "test": imgs[-3:]}


def uncalibrated_copy(bundle: Path, where: Path) -> Path:
    """A copy of ``bundle`` without its calibration (an old bundle's null is on another
    statistic and is refused on load)."""
    shutil.rmtree(where, ignore_errors=True)
    shutil.copytree(bundle, where)
    state = json.loads((where / "state.json").read_text())
    for field in ("null", "calibration", "null_statistic"):
        state.pop(field, None)
    (where / "state.json").write_text(json.dumps(state))
    return where


def recalibrate(m, out: Path) -> None:
    """η and the FPR of a bundle's marked host without training; prints the card's rows."""
    m.calibrate(DEMO_KEY)
    m.to_bundle(out / "bundle")
    wrong = [m.verify_model(m.host, WatermarkKey(f"not-the-demo-key-{i}")) for i in range(20)]
    rows = {"calibration": m.calibration,
            "marked/demo": m.verify_model(m.host, DEMO_KEY).to_dict(),
            "unmarked/demo": m.verify_model(m.unmarked, DEMO_KEY).to_dict(),
            "wrong_keys_detected": sum(v.detected for v in wrong),
            "wrong_key_d_rel_min": min(v.extra["d_rel"] for v in wrong)}
    print(json.dumps(rows, indent=2, default=str))


def profile_recipe(profile: str, run_config: Path | None, device: str
                   ) -> tuple[dict[str, Any], dict[str, list[torch.Tensor]], list[Any],
                              list[int], str]:
    """What ``--profile`` trains: ``(config, task images, attack suite, capacity sizes,
    dataset description)``, resolved as the pipeline resolves its run."""
    import yaml

    from neuralmark.components.methods.trigger_key.study import task_images
    from neuralmark.pipelines.trigger_key import resolve_trigger_key
    from neuralmark.runtime.settings import CODE_ROOT

    if profile == "shipped":
        return ({**RECIPE, "device": device}, photos(), SUITE,
                list(analysis.CAPACITY_SIZES_TINY),
                f"the {len(BUNDLED_PHOTOS)} bundled photos, the last 3 held out")
    path = Path(profile)
    name, where = ((path.stem, path.parent) if path.suffix in (".yaml", ".yml")
                   else (profile, None))
    params: dict[str, Any] = {}
    if run_config is not None:
        params = (yaml.safe_load(run_config.read_text()) or {}).get("parameters") or {}
    config = {**(params.get("config") or {}), "device": device}
    settings, study, _ = resolve_trigger_key(name, config, params.get("data"),
                                             params.get("evaluation"), params.get("policy"),
                                             params.get("study"), profiles_dir=where)
    manifest = settings.data.build(CODE_ROOT)
    d = settings.data
    return (settings.config.model_dump(mode="json"), task_images(manifest, study.test_splits),
            study.suite_for(name), study.capacity_for(name),
            f"{d.dataset} set at {manifest.parent} (size {d.size}, {d.crops_per_photo} crops "
            f"per photo, {d.n_procedural} procedural, seed {d.seed}); test = "
            f"{'+'.join(study.test_splits)} splits")


def write_card(out: Path, config: dict[str, Any], data: str, summary: dict[str, Any],
               command: str) -> None:
    """``out/MODEL_CARD.md``: the recipe's data, steps, measured metrics and command."""
    met, cal = summary["metrics"], summary["calibration"]
    v = summary["verdicts"]
    rows = [("task PSNR noisy / unmarked / λ = 0 / marked",
             " / ".join(f"{met.get(k, float('nan')):.2f}" for k in
                        ("input_psnr", "psnr_unmarked", "psnr_lambda0", "psnr_marked")) + " dB"),
            ("fidelity cost (λ = 0 − marked)", f"{met['fidelity_cost_db']:.3f} dB"),
            ("embedding steps taken / ℓ_w", f"{met['embed_steps']:.0f} / {met['embed_l_w']:.4g}"),
            (f"η (d_rel, alpha {config['alpha']})", f"{cal.get('eta', float('nan')):.4f}"),
            ("held-out FPR [95 % CI]", f"{cal.get('fpr', float('nan')):.4f} "
             f"[{cal.get('fpr_ci_low', float('nan')):.4f}, "
             f"{cal.get('fpr_ci_high', float('nan')):.4f}]"),
            *((f"{k}: detected / d_rel", f"{v[k]['detected']} / {v[k]['extra']['d_rel']:.3f}")
              for k in v),
            ("wrong keys detected (of 20)", str(summary["wrong_keys_detected"])),
            ("device / seconds", f"{summary['device']} / {summary['seconds']:.0f}")]
    text = "\n".join([
        f"# trigger_key — {config['arch']} {config['task']} ({summary['profile']} recipe)", "",
        f"Command: `{command}`", "",
        f"Host: {config['arch']} {config['depth']}×{config['width']}, {config['channels']} "
        f"channel(s), trigger {config['trigger_size'] or 'the seed default'}, λ {config['lam']}, "
        f"{config['host_steps']} host + {config['embed_steps']} embedding steps (batch "
        f"{config['batch_size']}, lr {config['lr']}), {config['n_patches']} patches of "
        f"{config['patch_size']}², {config['calibration_keys']} calibration keys, "
        f"{config['calibration_marked_keys']} other keys' marked hosts in the null, "
        f"lookahead {config['lookahead_steps']} steps.", "",
        f"Data: {data}.", "", f"Key: `{summary['key']}` (a demo key: anyone can verify with it).",
        "", "| measure | value |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows), "",
        "Every figure above was measured by this command's run; nothing is copied from the "
        "paper.", ""])
    (out / "MODEL_CARD.md").write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("outputs/trigger_key"))
    ap.add_argument("--profile", default="shipped",
                    help="shipped (the demo host's recipe), tiny, full, or a profile YAML")
    ap.add_argument("--run-config", type=Path, default=None,
                    help="a pipeline run config (configs/trigger_key*.yaml): its "
                         "parameters.config / data / study apply (not with shipped)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--evaluate", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bundle", type=Path, default=None,
                    help="skip training: evaluate this bundle (made by this recipe)")
    ap.add_argument("--recalibrate", action="store_true",
                    help="with --bundle: keep its weights and S, re-measure η and the FPR "
                         "without training (null: the marked host on the random keys, the "
                         "bundle's unmarked host on the demo trigger), write --out/bundle")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here (use --device auto or cpu)")
    if args.run_config is not None and args.profile == "shipped":
        raise SystemExit("--run-config needs --profile tiny|full|<yaml> (shipped is fixed)")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    recipe, data, suite, capacity, data_text = profile_recipe(args.profile, args.run_config,
                                                              args.device)
    if args.bundle is not None:  # evaluate a bundle made by this recipe (same data, seeds)
        m = load_bundle(uncalibrated_copy(args.bundle, args.out / "old") if args.recalibrate
                        else args.bundle)
        m.set_task_data(data)
        if args.recalibrate:
            recalibrate(m, args.out)
            return
        independent = m.train_independent_host(1000)
    else:
        m = build("trigger_key", recipe)
        fit = m.fit(data)
        independent = m.train_independent_host(1000)
        m.embed_model(m.unmarked, DEMO_KEY)
        m.calibrate(DEMO_KEY, [independent])
        m.train_visualizer(DEMO_KEY, [independent])
        m.to_bundle(args.out / "bundle")
    wrong = [WatermarkKey(f"not-the-demo-key-{i}") for i in range(20)]
    verdicts = {"marked/demo": m.verify_model(m.host, DEMO_KEY),
                "unmarked/demo": m.verify_model(m.unmarked, DEMO_KEY),
                "independent/demo": m.verify_model(independent, DEMO_KEY)}
    wrong_v = [m.verify_model(m.host, k) for k in wrong]
    summary = {"profile": args.profile, "key": DEMO_KEY.secret,
               "device": str(m.run_device()), "seconds": time.time() - start,
               "metrics": m.metrics, "calibration": m.calibration,
               "verdicts": {k: v.to_dict() for k, v in verdicts.items()},
               "wrong_keys_detected": sum(v.detected for v in wrong_v),
               "wrong_key_d_min": min(v.extra["d"] for v in wrong_v),
               "wrong_key_d_rel_min": min(v.extra["d_rel"] for v in wrong_v),
               "shown": {"marked": m.shown(m.host, DEMO_KEY),
                         "unmarked": m.shown(m.unmarked, DEMO_KEY),
                         "independent": m.shown(independent, DEMO_KEY),
                         "wrong_key_max": max(m.shown(m.host, k) for k in wrong)}}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps(summary, indent=2, default=str))
    if args.bundle is None:
        summary["metrics"] = {**fit, **m.metrics}
        write_card(args.out, m.config.model_dump(mode="json"), data_text, summary,
                   "python " + " ".join(sys.argv))
    if not args.evaluate:
        return
    bases = {}
    for name in ("trigger_key_backdoor", "trigger_key_randproj"):
        b = build(name, {**recipe, "method": name, "lambda0_reference": False})
        b.train_pairs, b.test_pairs = m.train_pairs, m.test_pairs
        b.embed_model(m.unmarked, DEMO_KEY)
        bases[name] = (b, DEMO_KEY)
    rows = evaluate_attacks({"trigger_key": (m, DEMO_KEY), **bases}, suite)
    (args.out / "attack_rows.json").write_text(json.dumps(rows, default=str))
    (args.out / "attacks.md").write_text(tables.attack_table(rows))
    print(tables.attack_table(rows), flush=True)
    other = analysis.variant(m)
    second = WatermarkKey("second owner")
    other.embed_model(m.unmarked, second)
    other.calibrate(second, [independent])
    uniq = analysis.uniqueness_rows(
        {"demo": (m, DEMO_KEY), "second": (other, second), "random": (m, wrong[0])},
        {"marked demo": m.host, "marked second": other.host, "unmarked": m.unmarked,
         "independent": independent})
    quick = analysis.variant(m, lambda0_reference=False, embed_steps=500)
    cap = analysis.capacity_rows(quick, DEMO_KEY, capacity)
    abl = analysis.keyed_gradient_ablation(quick, DEMO_KEY, wrong)
    fb = {k: fb_v for k, fb_v in tables.breaking_points(rows).items()}
    text = "\n\n".join([
        "# trigger_key evaluation (shipped recipe)", "## Attacks", tables.attack_table(rows),
        f"Pruning breaking points: {fb}", "## Uniqueness (d_rel, * detected)",
        tables.uniqueness_table(uniq), "## Capacity", tables.capacity_table(cap),
        "## Keyed ∇ ablation", "\n".join(f"- {r['gradient']} {r['metric']}: {r['value']:.4g}"
                                         for r in abl),
        "Fidelity cost against the unmarked host (same basis for all three): " + ", ".join(
            f"{n}: {b.metrics['psnr_unmarked'] - b.metrics['psnr_marked']:.3f} dB"
            for n, (b, _) in {"trigger_key": (m, DEMO_KEY), **bases}.items())])
    (args.out / "evaluation.md").write_text(text)
    (args.out / "rows.json").write_text(json.dumps(
        {"attacks": rows, "uniqueness": uniq, "capacity": cap, "ablation": abl}, default=str))
    tables.uniqueness_heatmap(uniq).savefig(args.out / "uniqueness.png")
    tables.pruning_curve(rows).savefig(args.out / "pruning.png")
    tables.capacity_curve(cap).savefig(args.out / "capacity.png")
    print(text)
    print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
