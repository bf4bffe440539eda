"""Train a pgd_signer bundle from a profile and write its bundle, ``metrics.json`` and card.

One command for the GPU recipe (issue #17): the ``full`` profile on one CUDA GPU, bounded
by ``--minutes`` (EM stops after the round that passes it), then the profile's evaluation
on its held-out split (the pipeline's ``robustness_report``: attack suite, detection,
calibrated FPR). Everything lands in ``--out``::

    OUT/bundle/            config.json + weights.safetensors (+ state.json), MODEL_CARD.md
    OUT/metrics.json       the evaluation summary, the last EM round's metrics, timings
    OUT/train_log.jsonl    one line of metrics per EM round

Usage::

    python scripts/train_shipped_pgd_signer.py --profile full --device cuda --minutes 8 \\
        --out outputs/pgd_signer_full
    # the shipped bundle's recipe (a whitened decoder, 0 EM rounds, signing at 36 dB):
    python scripts/train_shipped_pgd_signer.py --profile full --device cpu --out outputs/ps \\
        --set rounds=0 --set width=24 --set psnr_target=36 --set pgd_steps=60 \\
        --set eot_samples=4 --eval limit=8 --eval fpr_keys=20
    cp -r outputs/ps/bundle/. components/pretrained/pgd_signer/   # then re-run the benchmark

``--profile`` is a profile name (``configs/profiles/<name>.yaml``) or the path of a YAML
file laid out like one (a ``pgd_signer:`` section with ``method`` / ``data`` /
``evaluation`` / ``policy``): the test runs a micro one on CPU.
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
import yaml  # noqa: E402

from neuralmark.components.data.labelled import training_data  # noqa: E402
from neuralmark.components.data.manifest import load_split  # noqa: E402
from neuralmark.components.data.sample import SampleDataConfig, build_sample_dataset  # noqa: E402
from neuralmark.components.evaluation import embed_all  # noqa: E402
from neuralmark.components.methods import build  # noqa: E402
from neuralmark.components.methods.registry import is_bundle, load_bundle  # noqa: E402
from neuralmark.components.robustness import robustness_report  # noqa: E402
from neuralmark.runtime.settings import resolve  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METHOD = "pgd_signer"


def _settings(profile: str, overrides: dict[str, Any],
              evaluation: dict[str, Any]):  # noqa: ANN202 (RunSettings)
    path = Path(profile)
    if path.suffix in {".yaml", ".yml"}:
        if not path.is_file():
            raise SystemExit(f"--profile {profile}: no such file")
        return resolve(METHOD, path.stem, config=overrides, evaluation=evaluation,
                       profiles_dir=path.parent)
    return resolve(METHOD, profile, config=overrides, evaluation=evaluation)


def _parse_set(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"{item!r}: expected FIELD=VALUE")
        out[name] = yaml.safe_load(value)
    return out


def _card(settings, cfg: dict[str, Any], metrics: dict[str, Any], command: str) -> str:  # noqa: ANN001
    s = metrics["evaluation"]
    rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in sorted(s.items()))
    fit = metrics["training"]
    return f"""# pgd_signer — bundle trained by `scripts/train_shipped_pgd_signer.py`

NeuralHash-style signer (seed 000): a decoder CNN maps an image to {cfg['n_bits']} bits;
signing is PGD under EoT against it; the decoder is trained by EM alternation; with
`keyed_decoder` ({cfg['keyed_decoder']}) each key verifies with its own decoder (stem, head
and whitening drawn from the key).

## Training
- Profile: `{settings.profile}`; data: the sample dataset at `{settings.data.root}`
  ({metrics['train_images']} train images at {cfg['working_size']} px).
- EM rounds run: {fit['rounds_run']} of {cfg['rounds']} (time budget
  {cfg['time_budget_s']:g} s); wall time {fit['seconds']:.1f} s on {metrics['device']}.
- Decoder width {cfg['width']}, working size {cfg['working_size']}, input stride
  {cfg['input_stride']}; signing budget {cfg['psnr_target']} dB, {cfg['pgd_steps']} PGD
  steps × {cfg['eot_samples']} EoT samples.
- Command: `{command}`

## Evaluation ({metrics['test_images']} held-out images of the `{settings.evaluation.split}`
split, the profile's attack suite, FPR over {settings.evaluation.fpr_keys} random keys per
image)

| metric | value |
|---|---|
{rows}

Figures as measured by this command, not tuned.
"""


def _evaluate_bundle(bundle: Path, settings, manifest, out: Path) -> dict[str, Any]:  # noqa: ANN001
    """The recipe's evaluation (same split, suite, key and FPR keys) of an existing bundle."""
    if not is_bundle(bundle):
        raise SystemExit(f"--bundle {bundle}: not a bundle (config.json + weights.safetensors)")
    method = load_bundle(bundle, device="cpu")
    ev = settings.evaluation
    clean = load_split(manifest, ev.split, size=method.config.working_size, limit=ev.limit)
    start = time.time()
    marked = embed_all(method, clean, ev.key(), batch_size=ev.batch_size)
    embed_s = time.time() - start
    report = robustness_report(method, clean, marked, ev)
    metrics = {"profile": settings.profile, "bundle": str(bundle), "device": "cpu",
               "test_images": int(len(clean)), "embed_seconds": embed_s,
               "evaluation": {k: float(v) for k, v in report.summary.items()}}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"evaluated {bundle} on {len(clean)} images; metrics in {out / 'metrics.json'}")
    return metrics


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="full",
                    help="profile name (configs/profiles) or a YAML file laid out like one")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--minutes", type=float, default=8.0,
                    help="EM stops after the round that passes this (0: no bound)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="method config override (repeatable)")
    ap.add_argument("--eval", action="append", default=[], metavar="FIELD=VALUE",
                    help="evaluation settings override (repeatable), e.g. limit=4")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--bundle", type=Path, default=None,
                    help="evaluate this bundle (e.g. components/pretrained/pgd_signer) with "
                         "its own config and today's signing defaults instead of training "
                         "one: only metrics.json is written")
    args = ap.parse_args(argv)
    if args.bundle is not None and args.set:
        raise SystemExit("--bundle evaluates a bundle as it is: --set does not apply")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    torch.set_num_threads(args.threads)
    overrides = {**_parse_set(args.set), "device": args.device,
                 "time_budget_s": args.minutes * 60}
    settings = _settings(args.profile, overrides, _parse_set(args.eval))
    data_root = Path(settings.data.root)
    data_root = data_root if data_root.is_absolute() else ROOT / data_root
    manifest = build_sample_dataset(data_root, SampleDataConfig(
        **{f: getattr(settings.data, f) for f in SampleDataConfig.model_fields}))
    args.out.mkdir(parents=True, exist_ok=True)
    if args.bundle is not None:
        return _evaluate_bundle(args.bundle, settings, manifest, args.out)
    cfg = settings.config
    data = training_data(manifest, size=cfg.working_size)
    log = args.out / "train_log.jsonl"
    log.write_text("")

    class Log:
        def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
            with log.open("a") as fh:
                fh.write(json.dumps({"round": step, **metrics}) + "\n")

    method = build(METHOD, cfg.model_dump())
    start = time.time()
    final = method.fit(data, [Log()])
    seconds = time.time() - start
    rounds_run = sum(1 for line in log.read_text().splitlines() if line.strip())
    method.calibration = {"em_rounds": rounds_run, "train_seconds": round(seconds, 1),
                          "profile": settings.profile}
    ev = settings.evaluation
    clean = load_split(manifest, ev.split, size=cfg.working_size, limit=ev.limit)
    marked = embed_all(method, clean, ev.key(), batch_size=ev.batch_size)
    report = robustness_report(method, clean, marked, ev)
    metrics = {"profile": settings.profile, "device": str(method.device),
               "train_images": int(data["train"].shape[0]), "test_images": int(len(clean)),
               "training": {"rounds_run": rounds_run, "seconds": seconds,
                            "last_round": {k: float(v) for k, v in final.items()}},
               "evaluation": {k: float(v) for k, v in report.summary.items()}}
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    bundle = method.to(torch.device("cpu")).to_bundle(args.out / "bundle")
    command = shlex.join(["python", "scripts/train_shipped_pgd_signer.py",
                          *(argv if argv is not None else sys.argv[1:])])
    (bundle / "MODEL_CARD.md").write_text(
        _card(settings, cfg.model_dump(), metrics, command))
    print(f"{rounds_run} EM rounds in {seconds:.1f} s; bundle, card and metrics in {args.out}")
    return metrics


if __name__ == "__main__":
    main()
