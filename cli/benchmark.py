"""``neuralmark benchmark``: every content method and the installed peers, same photos, same
attacks, one table (CSV, Markdown, HTML), the model methods through the model attacks,
optionally logged to MLflow; ``--card METHOD`` rewrites that method's model card section
from the table (``--from-csv`` does it from an earlier run without measuring again)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from neuralmark.cli.common import ProgressCallback, domain_errors, err, out, progress


def _names(text: str | None) -> list[str] | None:
    """``"a,b[x=1,y=2]"`` → ``["a", "b[x=1,y=2]"]``; ``None`` → ``None`` (all);
    ``"none"`` → ``[]``."""
    from neuralmark.components.benchmark.entrants import split_names

    if text is None:
        return None
    if text.strip().lower() == "none":
        return []
    return split_names(text)


def _ints(text: str | None, option: str) -> list[int] | None:
    from neuralmark.components.errors import InputError

    if text is None:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise InputError(f"{option} takes comma-separated whole numbers, got {text!r}") from None


def _write_cards(cards: list[str], csv_path: Path) -> None:
    from neuralmark.components.benchmark.cards import write_card_section
    from neuralmark.components.errors import InputError
    from neuralmark.components.methods.registry import method_class, shipped_bundle

    for method in cards:
        method_class(method)  # InputError listing the registered methods
        bundle = shipped_bundle(method)
        if bundle is None:
            raise InputError(f"{method} ships no bundle, so it has no model card to write")
        path = write_card_section(bundle / "MODEL_CARD.md", csv_path, method)
        out().print(f"card: {path} (benchmark section rewritten from {csv_path})",
                    markup=False, highlight=False)


@domain_errors
def benchmark(
    images: Path | None = typer.Option(
        None, "--images", help="Folder of photos; default: the held-out split of the sample "
                               "dataset (built under data/sample if missing)."),
    methods: str | None = typer.Option(
        None, "--methods", help="Comma-separated method keys, each optionally with config "
                                "changes: pgd_signer[psnr_target=40] (default: every content "
                                "method; 'none' for none)."),
    peers: str | None = typer.Option(
        None, "--peers", help="Comma-separated peers: dwtDct, dwtDctSvd, rivaGan, "
                              "blind_watermark (default: all; 'none' for none)."),
    attacks: str | None = typer.Option(
        None, "--attacks", help="Comma-separated attacks to sweep (default: jpeg, crop, "
                                "rotate, resize, blur, noise, brightness, contrast)."),
    out_dir: Path = typer.Option(Path("benchmark-out"), "--out", help="Where the reports go."),
    quick: bool = typer.Option(False, "--quick", help="Three strengths per attack, fewer "
                                                      "timing points."),
    size: int = typer.Option(256, "--size", help="Side of the benchmark photos, px."),
    limit: int = typer.Option(8, "--limit", help="At most this many photos."),
    fpr_keys: int = typer.Option(200, "--fpr-keys", help="Random keys per clean photo for "
                                                         "the calibrated FPR."),
    forgery: bool = typer.Option(True, "--forgery/--no-forgery",
                                 help="Run the copy and removal attacks (black and white box)."),
    forgery_targets: int = typer.Option(
        0, "--forgery-targets", min=0,
        help="Forge this many separate clean targets (photo crops and procedural images) "
             "from the first 10 marked photos, and run the surrogate-learning attack on "
             "keyed decoders (0: forgeries leave-one-out over the benchmark photos)."),
    batch_sizes: str | None = typer.Option(
        None, "--batch-sizes", help="Comma-separated batch sizes timed (default 1,4; --quick "
                                    "1,2)."),
    resolutions: str | None = typer.Option(
        None, "--resolutions", help="Comma-separated sides timed at batch 1 (default "
                                    "256,512,1024,2048; --quick 256,512)."),
    whitebox_steps: int = typer.Option(20, "--whitebox-steps",
                                       help="APGD iterations of the white-box removal."),
    model_methods: str | None = typer.Option(
        None, "--model-methods", help="Comma-separated model methods whose shipped host goes "
                                      "through the model attacks (default: every model "
                                      "method; 'none' for none)."),
    model_attacks: str | None = typer.Option(
        None, "--model-attacks", help="Comma-separated model attacks (default: prune, "
                                      "fine_tune_original, fine_tune_new, distill, overwrite; "
                                      "--quick: no distill; fine_tune_noise only when "
                                      "named)."),
    card: str | None = typer.Option(
        None, "--card", help="Comma-separated methods whose MODEL_CARD.md benchmark section is "
                             "rewritten from this run's table."),
    from_csv: Path | None = typer.Option(
        None, "--from-csv", help="With --card: write the card section from this earlier "
                                 "benchmark.csv (benchmark.json beside it) instead of "
                                 "measuring."),
    tracking_uri: str | None = typer.Option(
        None, "--tracking-uri", envvar="MLFLOW_TRACKING_URI",
        help="Log the run to this MLflow store (e.g. sqlite:////abs/mlflow.db)."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
) -> None:
    """Benchmark watermarks side by side: PSNR/SSIM, bit accuracy and TPR along strength
    sweeps, FPR on clean photos, speed and memory, forgery and removal.

    A peer that is not installed, a method without shipped weights, or a photo that cannot
    be read or is too small is a row of the table saying so; the run goes on.
    """
    from neuralmark.components.benchmark import (
        BenchmarkSettings,
        load_folder,
        load_heldout,
        run_benchmark,
    )
    from neuralmark.components.benchmark.report import write_reports
    from neuralmark.components.errors import InputError

    cards = _names(card) or []
    if from_csv is not None:
        if not cards:
            raise InputError("--from-csv only writes model cards: name them with --card")
        _write_cards(cards, from_csv)
        return
    settings = BenchmarkSettings(methods=_names(methods), peers=_names(peers),
                                 attacks=_names(attacks), quick=quick, size=size, limit=limit,
                                 fpr_keys=fpr_keys, forgery=forgery,
                                 forgery_targets=forgery_targets,
                                 whitebox_steps=whitebox_steps,
                                 batch_sizes=_ints(batch_sizes, "--batch-sizes"),
                                 resolutions=_ints(resolutions, "--resolutions"),
                                 model_methods=_names(model_methods),
                                 model_attacks=_names(model_attacks), device=device)
    if images is not None:
        photos = load_folder(images, size=size, limit=limit)
    else:
        from neuralmark.components.data.sample import build_sample_dataset

        with err().status("building the sample dataset (held-out split)"):
            manifest = build_sample_dataset(Path("data/sample"))
        photos = load_heldout(manifest, size=size, limit=limit)
    with progress() as bar:
        callback = ProgressCallback(bar)
        result = run_benchmark(settings, photos, progress=callback.on_progress)
    paths = write_reports(result, out_dir, None if images is None else str(images))
    console = out()
    console.print(paths["md"].read_text(), markup=False, highlight=False)
    for kind, path in paths.items():
        console.print(f"{kind}: {path}", markup=False, highlight=False)
    if tracking_uri:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from neuralmark.integrations.benchmark_tracking import record_benchmark

        run_id = record_benchmark(result, paths, tracking_uri, out_dir / "mlruns")
        console.print(f"MLflow run {run_id} at {tracking_uri}", markup=False, highlight=False)
    _write_cards(cards, paths["csv"])


def register(app: typer.Typer) -> None:
    """Add ``benchmark`` to ``app``."""
    app.command()(benchmark)
