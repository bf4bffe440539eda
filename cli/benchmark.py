"""``neuralmark benchmark``: every content method and the installed peers, same photos, same
attacks, one table (CSV, Markdown, HTML), optionally logged to MLflow."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from neuralmark.cli.common import ProgressCallback, domain_errors, err, out, progress


def _names(text: str | None) -> list[str] | None:
    """``"a,b"`` → ``["a", "b"]``; ``None`` → ``None`` (all); ``"none"`` → ``[]``."""
    if text is None:
        return None
    if text.strip().lower() == "none":
        return []
    return [t.strip() for t in text.split(",") if t.strip()]


@domain_errors
def benchmark(
    images: Path | None = typer.Option(
        None, "--images", help="Folder of photos; default: the held-out split of the sample "
                               "dataset (built under data/sample if missing)."),
    methods: str | None = typer.Option(
        None, "--methods", help="Comma-separated method keys (default: every content method; "
                                "'none' for none)."),
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
                                 help="Run the copy and removal attacks."),
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

    settings = BenchmarkSettings(methods=_names(methods), peers=_names(peers),
                                 attacks=_names(attacks), quick=quick, size=size, limit=limit,
                                 fpr_keys=fpr_keys, forgery=forgery, device=device)
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
    paths = write_reports(result, out_dir)
    console = out()
    console.print(paths["md"].read_text(), markup=False, highlight=False)
    for kind, path in paths.items():
        console.print(f"{kind}: {path}", markup=False, highlight=False)
    if tracking_uri:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from neuralmark.integrations.benchmark_tracking import record_benchmark

        run_id = record_benchmark(result, paths, tracking_uri, out_dir / "mlruns")
        console.print(f"MLflow run {run_id} at {tracking_uri}", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``benchmark`` to ``app``."""
    app.command()(benchmark)
