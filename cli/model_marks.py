"""``neuralmark mark-model`` / ``verify-model`` / ``attack-model``: trigger_key (issue #13).

* ``mark-model`` runs ``neuralmark.pipelines.trigger_key`` (train a host, mark it, attack
  it and both baselines, gate, register ``neuralmark-trigger_key-<arch>-<task>``) and
  prints its headline; with ``--host FILE --out DIR`` it marks a given host instead (a
  ``.safetensors`` state dict), calibrates η and writes a bundle, without the stack.
* ``verify-model`` checks a suspect host against the owner's key: the host of the bundle
  (``--bundle``, ``--model-uri`` or the shipped demo), its ``--unmarked`` twin, another
  bundle's host (``--suspect-bundle``) or a weights file (``--host``, safetensors, the
  bundle's architecture unless ``--arch``/``--depth``/``--width`` say otherwise). Prints
  the verdict, d, η, NCC and the p-value; ``--logo-out`` saves the visualized logo R(M′(K)).
  Exit code 0 detected, 1 not detected, 2 unreadable input or bad arguments; ``--json``.
* ``attack-model`` applies one named model attack of the shared registry
  (``attacks/model_registry``: prune, fine_tune_original, fine_tune_new, distill,
  overwrite, the keyless fine_tune_noise) to a host and writes the attacked host as
  safetensors, for audits.

Weights are read as safetensors only: a ``.pt``/``.pth``/pickle checkpoint is refused
with a message (never unpickled). torch and the library are imported inside each command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from neuralmark.cli.common import (
    DEVICE_OPTION,
    Profile,
    domain_errors,
    exit_code,
    fmt_p,
    json_default,
    load_method,
    load_pipeline,
    make_key,
    out,
    run_long,
    verdict_line,
)
from neuralmark.cli.headline import print_training

if TYPE_CHECKING:
    from torch import nn

    from neuralmark.components.methods.trigger_key.host import HostMark

METHOD = "trigger_key"

_KEY = typer.Option(..., "--key", "-k", envvar="NEURALMARK_KEY",
                    help="The owner's secret (or set NEURALMARK_KEY).")
_BUNDLE = typer.Option(None, "--bundle",
                       help="trigger_key bundle folder (default: the shipped demo host).")
_URI = typer.Option(None, "--model-uri",
                    help="Registered model, e.g. models:/neuralmark-trigger_key-dncnn-denoise"
                         "@champion.")
_HOST = typer.Option(None, "--host", help="Host weights: a .safetensors state dict.")
_ARCH = typer.Option(None, "--arch", help="Host architecture of --host: dncnn, red or vdsr.")
_DEPTH = typer.Option(None, "--depth", min=2, help="Layers of --host.")
_WIDTH = typer.Option(None, "--width", min=1, help="Feature channels of --host.")


def load_trigger_key(bundle: Path | None, model_uri: str | None,
                     device: str = "auto") -> HostMark:
    """The trigger_key method from ``--model-uri``, ``--bundle`` or the shipped demo."""
    return load_method(METHOD, bundle, model_uri, device, kind="model")  # type: ignore[return-value]


def _host_from(method: HostMark, host: Path, arch: str | None, depth: int | None,
               width: int | None) -> nn.Module:
    from neuralmark.components.methods.trigger_key.host_files import host_config, load_host_file

    c = host_config(method)
    return load_host_file(host, arch or c["arch"], c["channels"], depth or c["depth"],
                          width or c["width"])


@domain_errors
def mark_model(
    profile: Profile = typer.Option(Profile.tiny, "--profile", help="Size profile."),
    config: Path | None = typer.Option(
        None, "--config", exists=True, dir_okay=False,
        help="ZenML run config (default configs/trigger_key.yaml; trigger_key_red.yaml, "
             "trigger_key_sr.yaml)."),
    key: str | None = typer.Option(None, "--key", "-k", envvar="NEURALMARK_KEY",
                                   help="The owner's secret (default: the profile's "
                                        "evaluation.key_secret)."),
    arch: str | None = _ARCH,
    task: str | None = typer.Option(None, "--task", help="denoise or sr."),
    host: Path | None = _HOST,
    depth: int | None = _DEPTH,
    width: int | None = _WIDTH,
    out_dir: Path | None = typer.Option(None, "--out",
                                        help="With --host: the bundle folder to write."),
    steps: int | None = typer.Option(
        None, "--steps", min=1, help="With --host: optimiser steps of the embedding, the "
                                     "independent host and R (default: the profile's)."),
) -> None:
    """Train and mark a host through the pipeline (gate, registry), or mark --host FILE.

    With ``--host FILE --out DIR``: the file's host (``--arch``/``--depth``/``--width``,
    defaults from the profile) is fine-tuned with the mark on the bundled sample photos,
    η is calibrated against an independently trained host, R is trained, and the bundle is
    written to DIR (no ZenML or MLflow involved).
    """
    from neuralmark.components.errors import InputError

    overrides: dict[str, Any] = {}
    cfg = {k: v for k, v in (("arch", arch), ("task", task), ("depth", depth),
                             ("width", width)) if v is not None}
    if host is not None:
        if out_dir is None:
            raise InputError("--host needs --out DIR (where the marked bundle is written)")
        if steps is not None:
            cfg.update(embed_steps=steps, host_steps=steps, visualizer_steps=steps)
        _mark_file(host, out_dir, profile.value, cfg, key)
        return
    if out_dir is not None or steps is not None:
        raise InputError("--out and --steps are for --host; the pipeline registers the "
                         "marked host in MLflow (load it with --model-uri)")
    if cfg:
        overrides["config"] = cfg
    if key is not None:
        overrides["evaluation"] = {"key_secret": make_key(key, None).secret}
    run = load_pipeline("neuralmark.pipelines.trigger_key", "run_trigger_key",
                        "the trigger_key pipeline")

    def go(callbacks: Any = None) -> Any:
        return run(profile.value, config, overrides, callbacks=callbacks)

    result = run_long(go, label=f"marking a host model ({profile.value})")
    print_training(out(), result, f"{result['model_name']} ({profile.value})")


def _mark_file(host: Path, out_dir: Path, profile: str, cfg: dict[str, Any],
               key: str | None) -> None:
    """``mark-model --host``: protect the file's host, write the bundle."""
    from neuralmark.components.errors import InputError
    from neuralmark.components.methods.registry import build
    from neuralmark.components.methods.trigger_key.host_files import (
        load_host_file,
        sample_task_images,
    )
    from neuralmark.runtime.settings import resolve

    if key is None:
        raise InputError("--host needs --key: the owner's secret to mark the host with")
    wm_key = make_key(key, None)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InputError(f"--out {out_dir} exists and is not empty; give a new folder")
    c = resolve(METHOD, profile, config=cfg).config
    method = build(METHOD, c)
    net = load_host_file(host, c.arch, c.channels, c.depth, c.width)
    method.host.load_state_dict(net.state_dict())
    method.unmarked.load_state_dict(net.state_dict())
    method.trained = True
    metrics = run_long(lambda: method.protect(sample_task_images(), wm_key),
                       label=f"marking {host.name}")
    method.to_bundle(out_dir)
    out().print(f"marked {escape(str(host))} → [bold]{escape(str(out_dir))}[/]  "
                f"fidelity cost {metrics['fidelity_cost_db']:.3f} dB, η "
                f"{metrics.get('calibration_eta', float('nan')):.3e}, FPR "
                f"{metrics.get('calibration_fpr', float('nan')):.3g}")


@domain_errors
def verify_model(
    key: str = _KEY,
    bundle: Path | None = _BUNDLE,
    model_uri: str | None = _URI,
    host: Path | None = _HOST,
    suspect_bundle: Path | None = typer.Option(
        None, "--suspect-bundle", help="Verify the host of another trigger_key bundle."),
    unmarked: bool = typer.Option(False, "--unmarked",
                                  help="Verify the bundle's unmarked host (a negative)."),
    arch: str | None = _ARCH,
    depth: int | None = _DEPTH,
    width: int | None = _WIDTH,
    logo_out: Path | None = typer.Option(None, "--logo-out",
                                         help="Save the visualized logo R(M′(K)) here."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
    device: str = DEVICE_OPTION,
) -> None:
    """Is a host marked with KEY? Prints the verdict, d, η, NCC and the p-value.

    Exit code: 0 detected, 1 not detected, 2 unreadable input or bad arguments.
    """
    from neuralmark.components.errors import InputError
    from neuralmark.components.methods.base import Status

    wm_key = make_key(key, None)
    if sum(x is not None and x is not False for x in (host, suspect_bundle, unmarked)) > 1:
        raise InputError("give one suspect: --host, --suspect-bundle or --unmarked")
    method = load_trigger_key(bundle, model_uri, device)
    if host is not None:
        suspect, what = _host_from(method, host, arch, depth, width), str(host)
    elif suspect_bundle is not None:
        from neuralmark.components.methods.trigger_key.study import as_host_mark

        other = as_host_mark(load_method(None, suspect_bundle, None, device, kind="model"))
        suspect, what = other.host, str(suspect_bundle)
    elif unmarked:
        suspect, what = method.unmarked, f"{method.key} bundle (unmarked host)"
    else:
        suspect, what = method.host, f"{method.key} bundle (marked host)"
    verdict = method.verify_model(suspect, wm_key)
    notes = []
    if logo_out is not None and verdict.status != Status.UNREADABLE:
        from neuralmark.components.imageio import save_image

        logo_out.parent.mkdir(parents=True, exist_ok=True)
        image = method.visualize(suspect, wm_key)
        notes += save_image(image[None].expand(-1, 3, -1, -1), logo_out)
        notes.append(f"visualized logo saved to {logo_out}")
    extra = verdict.extra
    if as_json:
        record = {"suspect": what, **verdict.to_dict(), "d": extra.get("d"),
                  "d_rel": extra.get("d_rel"), "eta": extra.get("eta"), "ncc": extra.get("ncc"),
                  "notes": notes}
        typer.echo(json.dumps(record, default=json_default))
    else:
        console = out()
        console.print(verdict_line(Path(what), verdict))
        if verdict.status != Status.UNREADABLE:
            eta = extra.get("eta")
            console.print(f"  d_rel = {extra['d_rel']:.4f}   η = "
                          f"{'n/a' if eta is None else f'{eta:.4f}'}   d = {extra['d']:.4e}"
                          f"   NCC = {extra['ncc']:.4f}"
                          f"   p-value = {fmt_p(verdict.p_value)}")
        for note in notes:
            console.print(f"  [dim]note: {escape(note)}[/]")
    raise typer.Exit(exit_code(verdict))


@domain_errors
def attack_model(
    attack: str = typer.Option(..., "--attack",
                               help="prune, fine_tune_original, fine_tune_new, distill, "
                                    "overwrite or fine_tune_noise (keyless: task data plus "
                                    "noise images)."),
    out_path: Path = typer.Option(..., "--out", help="Where to write the attacked host "
                                                     "(.safetensors)."),
    strength: float | None = typer.Option(
        None, "--strength", help="Pruning rate in [0, 1] or training epochs (default: the "
                                 "attack's)."),
    host: Path | None = _HOST,
    bundle: Path | None = _BUNDLE,
    model_uri: str | None = _URI,
    arch: str | None = _ARCH,
    depth: int | None = _DEPTH,
    width: int | None = _WIDTH,
    device: str = DEVICE_OPTION,
) -> None:
    """Apply a named model attack to a host and write the attacked host (for audits).

    The host is --host FILE (safetensors) or the bundle's marked host; the bundle gives
    the task and schedule; training attacks use the bundled sample photos.
    """
    from neuralmark.components.errors import InputError
    from neuralmark.components.methods.trigger_key.host_files import (
        attack_host,
        sample_task_images,
        save_host_file,
    )

    if out_path.suffix.lower() != ".safetensors":
        raise InputError(f"--out {out_path}: the attacked host is written as .safetensors")
    method = load_trigger_key(bundle, model_uri, device)
    target = _host_from(method, host, arch, depth, width) if host is not None else method.host
    attacked, params = run_long(lambda: attack_host(method, target, attack, strength,
                                                    sample_task_images()),
                                label=f"attack {attack}")
    save_host_file(attacked, out_path)
    psnr = method.task_psnr_of(attacked)
    out().print(f"{escape(params['label'])}: wrote [bold]{escape(str(out_path))}[/]  "
                f"task PSNR {psnr:.2f} dB (before {method.task_psnr_of(target):.2f} dB)")


def register(app: typer.Typer) -> None:
    """Add ``mark-model``, ``verify-model`` and ``attack-model`` to ``app``."""
    app.command("mark-model")(mark_model)
    app.command("verify-model")(verify_model)
    app.command("attack-model")(attack_model)
