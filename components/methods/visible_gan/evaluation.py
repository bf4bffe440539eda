"""The seed's measurements for DeepStamp and its baselines, side by side.

* **Dataset utility** (the seed's Table I): a fresh classifier F′ (``config.classifier``)
  is trained on the training set marked by each stamper and tested on *clean* held-out
  images; ``clean`` is the same classifier trained on unmarked images (the table's
  "Baseline" column). Measured at the end of ``fit`` (it needs the training split) and kept
  in ``fit_report``.
* **Removal**: a fresh autoencoder V′ (the attacker) is trained per stamper to restore the
  clean image from the marked one, and judged on held-out images (PSNR / SSIM of V′'s output
  against the clean image; ``removal_gain`` = PSNR after − PSNR before: what the attacker
  recovers; ``removal_left``: the share of the mark's squared error V′ leaves). Also in
  ``fit_report``. Choices: every V′ has V's architecture, the same initial weights, steps,
  learning rate (``removal_lr``, also the in-training V's) and batch indices, trains on the
  marked training split and is judged on the held-out split; DeepStamp is compared with
  each baseline per image (paired, with a standard error). A control V′ trained on unmarked
  images shows what V′ does when there is nothing to remove (measured at tiny: it learns
  the identity to ~60–70 dB, so the gain is removal, not V′ denoising the image).
* **On the evaluation images** (``visible_rows``): PSNR / SSIM of each marking against the
  static blend (how far the mark moved), the mark's contrast (mean absolute luma change
  over the mark's pixels: visibility kept), and the method's own V on each marking.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from neuralmark.components.methods.base import Callbacks, InputError, resize_square
from neuralmark.components.methods.visible_gan.classifier import accuracy, train_classifier
from neuralmark.components.methods.visible_gan.losses import contrast, removal_attack_loss
from neuralmark.components.methods.visible_gan.mark import box_mask
from neuralmark.components.methods.visible_gan.nets import RemovalNet, build_classifier
from neuralmark.components.metrics import psnr, ssim

__all__ = ["F_SEED_STRIDE", "STAMPERS", "contrast", "dataset_utility", "removal_curve",
           "removal_curve_markdown", "removal_reading", "remove_with_v", "seed_table_markdown",
           "stamp_all", "stamper_grid", "train_f_prime", "visible_rows"]

STAMPERS = ("static", "opacity", "displacement", "deepstamp")
EVALUATION_ATTACK = "visible_gan"


def stamp_all(stamper: Any, images: torch.Tensor, generator: torch.Generator,
              batch_size: int = 256) -> torch.Tensor:
    """``stamper`` over ``images`` (N×3×S×S) in batches, on the CPU: N×3×S×S."""
    with torch.no_grad():
        return torch.cat([stamper(images[i:i + batch_size], generator).detach().cpu()
                          for i in range(0, images.shape[0], batch_size)])


def _train_removal(marked: torch.Tensor, clean: torch.Tensor, width: int, steps: int,
                   batch_size: int, lr: float, seed: int, device: torch.device,
                   on_checkpoint: Callable[[int, RemovalNet], None] | None = None,
                   checkpoints: Sequence[int] = ()) -> RemovalNet:
    """A fresh V′ trained to map ``marked`` to ``clean`` (both N×3×S×S).

    Every V′ starts from the same initial weights and sees the same batch indices
    (``seed``), so the stampers differ only in what they put on the images. A V′ stopped at
    step k of a longer run is the V′ a k-step run gives (same init, batches, optimiser
    state), so ``on_checkpoint(k, net)`` (net in eval mode, set back to train after) at each
    k in ``checkpoints`` reads a learning curve off one run.
    """
    torch.manual_seed(seed)
    net = RemovalNet(width).to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    batches = torch.Generator().manual_seed(seed)
    marks = set(checkpoints)
    for step in range(1, steps + 1):
        idx = torch.randint(0, marked.shape[0], (batch_size,), generator=batches)
        loss = removal_attack_loss(net(marked[idx].to(device)), clean[idx].to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if on_checkpoint is not None and step in marks:
            on_checkpoint(step, net.eval())
            net.train()
    return net.eval()


def _restore(net: RemovalNet, marked: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``net`` over ``marked`` (N×3×S×S) in batches of 256, clamped, on the CPU."""
    with torch.no_grad():
        return torch.cat([net(marked[j:j + 256].to(device)).clamp(0, 1).cpu()
                          for j in range(0, marked.shape[0], 256)])


@torch.no_grad()
def remove_with_v(method: Any, marked: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The method's own V as an attacker's ready-made remover: ``B×3×H×W`` → same, [0, 1].

    V ships in every bundle, so whoever has the shipped files has it, untrained work
    included. It runs on the centred square at the working size (where it was trained and
    where the mark is); its change is up-sampled (bilinear) and added at full resolution,
    as ``embed`` adds W's. This is the obvious use of V, not the best one: what it removes
    is what an attacker with the shipped files gets at the least.
    """
    c = method.config
    out = []
    for i in range(0, marked.shape[0], batch_size):
        x = marked[i:i + batch_size].to(method.device)
        h, w = x.shape[-2:]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        square = (slice(None), slice(None), slice(top, top + side), slice(left, left + side))
        work = resize_square(x[square], c.working_size)
        change = method.V(work).clamp(0, 1) - work
        if side != c.working_size:
            change = torch.nn.functional.interpolate(change, size=(side, side),
                                                     mode="bilinear", align_corners=False)
        restored = x.clone()
        restored[square] = (x[square] + change).clamp(0, 1)
        out.append(restored.cpu())
    return torch.cat(out)


def removal_curve(method: Any, x_tr: torch.Tensor, x_va: torch.Tensor,
                  checkpoints: Sequence[int], generator: torch.Generator,
                  device: torch.device,
                  stampers: Sequence[str] = STAMPERS,
                  on_row: Callable[[dict[str, Any]], None] | None = None,
                  ) -> list[dict[str, Any]]:
    """V′'s learning curve per stamper: the removal figures after each number of steps.

    The V′ of ``dataset_utility`` (V's architecture, ``removal_lr``, ``batch_size``, the
    same initial weights and batches for every stamper), trained once per stamper for
    ``max(checkpoints)`` steps and judged on ``x_va`` at each checkpoint. Used to choose a
    ``removal_steps`` past the identity plateau (a fresh V′ first learns the identity and
    only later starts removing a mark; faint marks keep it there longer).

    Args:
        method: a ``VisibleGan`` (its W stamps the ``deepstamp`` column).
        x_tr, x_va: clean training / held-out images, N×3×S×S at the working size.
        checkpoints: step counts to judge V′ at (positive).
        generator: seeds the stampers' random draws.
        device: where V′ trains.
        stampers: which of ``STAMPERS`` to run.
        on_row: called with each row as it is measured (progress).

    Returns:
        One row per (stamper, steps): ``stamper``, ``steps`` and ``_removal_figures``'s
        summary (``removal_gain``, ``removal_left``, PSNR / SSIM before and after, …).
    """
    c = method.config
    if not checkpoints or min(checkpoints) < 1:
        raise ValueError(f"checkpoints must be positive step counts, got {list(checkpoints)}")
    unknown = sorted(set(stampers) - set(STAMPERS))
    if unknown:
        raise ValueError(f"unknown stampers {unknown}; expected some of {list(STAMPERS)}")
    all_stampers = method.stampers()
    s = x_va.shape[-1]
    box = box_mask(s, s, c.mark_scale)
    rows: list[dict[str, Any]] = []
    for name in stampers:
        marked_tr = stamp_all(all_stampers[name], x_tr, generator)
        marked_va = stamp_all(all_stampers[name], x_va, generator)

        def judge(step: int, net: RemovalNet, name: str = name,
                  marked_va: torch.Tensor = marked_va) -> None:
            summary, _ = _removal_figures(marked_va, _restore(net, marked_va, device), x_va,
                                          box)
            rows.append({"stamper": name, "steps": step, **summary})
            if on_row is not None:
                on_row(rows[-1])

        _train_removal(marked_tr, x_tr, c.v_width, max(checkpoints), c.batch_size,
                       c.removal_lr, c.seed + 23, device, judge, checkpoints)
    return rows


def _removal_figures(marked: torch.Tensor, restored: torch.Tensor, clean: torch.Tensor,
                     box: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
    """V′'s result on held-out images (all N×3×S×S; ``box`` 1×1×S×S, the mark's square).

    Returns the summary (PSNR / SSIM before and after; ``removal_gain``, the mean per-image
    PSNR gain; ``removal_left``, the share of the mark's squared error V′ leaves,
    ``ΣMSE(V′(x′), x) / ΣMSE(x′, x)``; ``off_mark_mse``, V′'s squared error outside the
    square, where there is nothing to remove) and the N per-image gains in dB.
    """
    before = psnr(marked, clean).clamp_max(100)
    after = psnr(restored, clean).clamp_max(100)
    err_before = ((marked - clean) ** 2).mean(dim=(1, 2, 3))
    err_after = ((restored - clean) ** 2).mean(dim=(1, 2, 3))
    off = (1 - box).expand_as(clean)
    summary = {"psnr_before": float(before.mean()), "psnr_after": float(after.mean()),
               "ssim_before": float(ssim(marked, clean).mean()),
               "ssim_after": float(ssim(restored, clean).mean()),
               "removal_gain": float((after - before).mean()),
               "removal_left": float(err_after.sum() / err_before.sum().clamp_min(1e-12)),
               "off_mark_mse": float((((restored - clean) ** 2) * off).sum() / off.sum())}
    return summary, after - before


#: how far apart two F′ seeds put F′'s RNG seeds (``train_f_prime``'s ``f_seed``)
F_SEED_STRIDE = 1000


def train_f_prime(method: Any, arch: str, marked_tr: torch.Tensor, y_tr: torch.Tensor,
                  device: torch.device, width_multiplier: float = 1.0,
                  f_seed: int = 0) -> torch.nn.Module:
    """One F′ of the seed's table: a fresh ``arch`` trained on ``marked_tr`` (N×3×S×S) /
    ``y_tr`` (N) with the config's ``utility_steps``, ``batch_size`` and ``classifier_lr``.

    Every F′ of one architecture and ``f_seed`` starts from the same weights and sees the
    same batch indices (seeded from ``config.seed``), so two markings differ only in the
    images. ``width_multiplier``: ``nets.build_classifier``'s (1: the published widths).
    ``f_seed`` (≥ 0) moves F′'s own randomness only: its initial weights, its dropout draws
    and its batch indices and flips (seeds shifted by ``F_SEED_STRIDE × f_seed``); the
    images, labels and marks are the caller's. ``f_seed`` 0 is the table's F′ as before.

    Raises:
        InputError: a negative ``f_seed``.
    """
    if f_seed < 0:
        raise InputError(f"f_seed {f_seed}: expected an integer >= 0")
    c = method.config
    shift = F_SEED_STRIDE * f_seed
    torch.manual_seed(c.seed + 17 + shift)  # before building: every F′ starts the same
    net = build_classifier(arch, method.num_classes, c.classifier_width, width_multiplier)
    train_classifier(net, marked_tr, y_tr, c.utility_steps, c.batch_size, c.classifier_lr,
                     torch.Generator().manual_seed(c.seed + 19 + shift), device,
                     flips=c.task == "labels")
    return net


def dataset_utility(method: Any, x_tr: torch.Tensor, y_tr: torch.Tensor, x_va: torch.Tensor,
                    y_va: torch.Tensor, generator: torch.Generator, device: torch.device,
                    cb: Callbacks | None = None) -> dict[str, Any]:
    """F′ accuracy and V′ removal per stamper (module docstring); the ``fit_report`` dict.

    Fair by construction: each stamper's F′ (and each V′) starts from the same weights,
    trains for the same steps on the same batch indices of the same training images, and is
    judged on the same held-out images; only the marking differs. The removal comparison is
    paired: ``removal_vs`` holds, per baseline, the mean and standard error over held-out
    images of DeepStamp's per-image PSNR gain minus the baseline's (> 0: V′ recovers more
    from DeepStamp's mark, i.e. it is easier to remove).

    Args:
        method: a ``VisibleGan`` with a trained W.
        x_tr, y_tr: the task's training images (N×3×S×S) and labels (N).
        x_va, y_va: held-out images and labels (clean).
        generator: seeds the stampers' random draws.
        device: where F′ / V′ train.
        cb: progress sink.

    Returns:
        ``classifier``, ``blend``, ``accuracy`` (stamper → clean-test accuracy, ``clean``
        included), ``contrast`` (stamper → the mark's contrast on the held-out images),
        ``accuracy_marked`` (on the marked test images), ``accuracy_by_classifier``
        (architecture of ``table_classifiers`` → stamper → accuracy, as ``accuracy``),
        ``removal`` (stamper →
        ``_removal_figures``'s summary), ``removal_control`` (a V′ trained on unmarked
        images: what V′ does when there is no mark), ``removal_vs`` and ``removal_curve``
        (rows ``stamper``, ``steps``, ``removal_gain``, ``removal_left`` at each of
        ``removal_curve_steps`` and at ``removal_steps``; empty without curve steps).
    """
    c = method.config
    stampers = method.stampers()
    report: dict[str, Any] = {"classifier": c.classifier, "blend": c.blend,
                              "utility_steps": c.utility_steps,
                              "removal_steps": c.removal_steps, "removal_lr": c.removal_lr,
                              "accuracy": {}, "accuracy_marked": {}, "removal": {},
                              "removal_vs": {}, "removal_curve": []}
    s = x_va.shape[-1]
    box = box_mask(s, s, c.mark_scale)
    support = (method.canvas(1, s, s)[:, 3:] > 0.5).float().cpu()  # the mark's pixels
    report["contrast"] = {}
    # the seed's other F′ rows (config.table_classifiers), accuracy only: V′ does not
    # depend on F′
    extra = [a for a in c.table_classifiers if a != c.classifier]
    report["accuracy_by_classifier"] = {a: {} for a in extra}
    gains: dict[str, torch.Tensor] = {}
    names = ("clean", *STAMPERS)
    for i, name in enumerate(names):
        if cb is not None:
            cb.on_progress(i, len(names), f"utility: {name}")
        if name == "clean":
            marked_tr, marked_va = x_tr, x_va
        else:
            marked_tr = stamp_all(stampers[name], x_tr, generator)
            marked_va = stamp_all(stampers[name], x_va, generator)
            report["contrast"][name] = float(contrast(marked_va, x_va, support).mean())
        for arch in (c.classifier, *extra) if c.utility_steps else ():
            net = train_f_prime(method, arch, marked_tr, y_tr, device)
            if arch == c.classifier:
                report["accuracy"][name] = accuracy(net, x_va, y_va, device)
                report["accuracy_marked"][name] = accuracy(net, marked_va, y_va, device)
            else:
                report["accuracy_by_classifier"][arch][name] = accuracy(net, x_va, y_va,
                                                                        device)
        if c.removal_steps:
            def judge(step: int, net: RemovalNet, name: str = name,
                      marked_va: torch.Tensor = marked_va) -> None:
                point, _ = _removal_figures(marked_va, _restore(net, marked_va, device), x_va,
                                            box)
                report["removal_curve"].append(
                    {"stamper": name, "steps": step, "removal_gain": point["removal_gain"],
                     "removal_left": point["removal_left"]})

            v = _train_removal(marked_tr, x_tr, c.v_width, c.removal_steps, c.batch_size,
                               c.removal_lr, c.seed + 23, device,
                               judge if name != "clean" else None, c.removal_curve_steps)
            summary, gain = _removal_figures(marked_va, _restore(v, marked_va, device), x_va,
                                             box)
            if name != "clean" and c.removal_curve_steps:
                report["removal_curve"].append(
                    {"stamper": name, "steps": c.removal_steps,
                     "removal_gain": summary["removal_gain"],
                     "removal_left": summary["removal_left"]})
            if name == "clean":
                report["removal_control"] = {"psnr_after": summary["psnr_after"],
                                             "off_mark_mse": summary["off_mark_mse"]}
            else:
                report["removal"][name] = summary
                gains[name] = gain
    if "deepstamp" in gains:
        for name in STAMPERS[:-1]:
            diff = (gains["deepstamp"] - gains[name]).double()
            se = float(diff.std() / diff.numel() ** 0.5) if diff.numel() > 1 else float("nan")
            report["removal_vs"][name] = {"gain_difference": float(diff.mean()), "se": se,
                                          "n": int(diff.numel())}
    return report


def visible_rows(method: Any, clean: torch.Tensor, seed: int = 0) -> list[dict[str, Any]]:
    """Tidy rows (``evaluation.COLUMNS``) of every DeepStamp-specific measurement.

    Attack ``visible_gan``, label = stamper. From ``fit_report``: ``accuracy``,
    ``accuracy_drop`` (clean-trained accuracy − this one), ``accuracy_<arch>`` and
    ``accuracy_drop_<arch>`` for each further F′ (``table_classifiers``), ``removal_psnr``,
    ``removal_ssim``, ``removal_gain``, ``removal_left``; for DeepStamp also
    ``removal_gain_vs_<baseline>`` and ``removal_gain_vs_<baseline>_se`` (paired per-image
    difference of the gains and its standard error: > 0 means V′ recovers more from
    DeepStamp's mark than from that baseline's) and ``removal_left_vs_<baseline>``
    (DeepStamp's ``removal_left`` minus the baseline's: > 0 means V′ leaves a larger share of
    DeepStamp's mark; scale-free, where a dB gain favours a fainter mark). On ``clean``
    (the held-out evaluation images, at the working size): ``psnr_vs_static``,
    ``ssim_vs_static``, ``contrast``, ``v_psnr``, ``v_ssim`` (the method's own V), and for
    every marking but the static one
    ``contrast_vs_static`` (its contrast over the static blend's: < 1 is fainter).
    """
    key = method.key or "visible_gan"
    rows: list[dict[str, Any]] = []

    def add(label: str, metric: str, value: float, n: int) -> None:
        rows.append({"method": key, "attack": EVALUATION_ATTACK, "strength": None,
                     "label": label, "metric": metric, "value": float(value), "n": int(n)})

    report = method.fit_report
    acc = report.get("accuracy", {})
    for name in STAMPERS:
        if name in acc and "clean" in acc:
            add(name, "accuracy", acc[name], 1)
            add(name, "accuracy_drop", acc["clean"] - acc[name], 1)
        for arch, other in report.get("accuracy_by_classifier", {}).items():
            if name in other and "clean" in other:
                add(name, f"accuracy_{arch}", other[name], 1)
                add(name, f"accuracy_drop_{arch}", other["clean"] - other[name], 1)
        rem = report.get("removal", {}).get(name)
        if rem:
            add(name, "removal_psnr", rem["psnr_after"], 1)
            add(name, "removal_ssim", rem["ssim_after"], 1)
            add(name, "removal_gain", rem.get("removal_gain",
                                              rem["psnr_after"] - rem["psnr_before"]), 1)
            if "removal_left" in rem:
                add(name, "removal_left", rem["removal_left"], 1)
    for name, vs in report.get("removal_vs", {}).items():
        add("deepstamp", f"removal_gain_vs_{name}", vs["gain_difference"], vs["n"])
        add("deepstamp", f"removal_gain_vs_{name}_se", vs["se"], vs["n"])
    # the scale-free comparison: a dB gain favours a fainter mark (less to recover), the
    # share of the mark's squared error left does not
    removal = report.get("removal", {})
    ds_left = removal.get("deepstamp", {}).get("removal_left")
    for name in STAMPERS[:-1]:
        base_left = removal.get(name, {}).get("removal_left")
        if ds_left is not None and base_left is not None:
            add("deepstamp", f"removal_left_vs_{name}", ds_left - base_left, 1)
    if "clean" in acc:
        add("clean", "accuracy", acc["clean"], 1)
    c = method.config
    work = resize_square(clean.to(method.device), c.working_size).clamp(0, 1)
    n = work.shape[0]
    g = torch.Generator().manual_seed(seed)
    stampers = method.stampers()
    static = stamp_all(stampers["static"], work, g).to(work)
    static_contrast = 0.0
    support = (method.canvas(1, c.working_size, c.working_size)[:, 3:] > 0.5).float().to(work)
    for name in STAMPERS:
        marked = stamp_all(stampers[name], work, g).to(work)
        with torch.no_grad():
            restored = method.V(marked).clamp(0, 1)
        if name != "static":
            add(name, "psnr_vs_static", float(psnr(marked, static).clamp_max(100).mean()), n)
            add(name, "ssim_vs_static", float(ssim(marked, static).mean()), n)
        visibility = float(contrast(marked, work, support).mean())
        add(name, "contrast", visibility, n)
        if name == "static":
            static_contrast = visibility
        elif static_contrast > 0:
            add(name, "contrast_vs_static", visibility / static_contrast, n)
        add(name, "v_psnr", float(psnr(restored, work).mean()), n)
        add(name, "v_ssim", float(ssim(restored, work).mean()), n)
    return rows


def seed_table_markdown(report: dict[str, Any], architecture: str | None = None,
                        reading: bool = True) -> str:
    """The seed's Table I in shape: accuracy of F′ trained on marked data, tested on clean.

    Plus the removal table (V′'s PSNR / SSIM against the clean image, per stamper) and,
    with ``reading``, ``removal_reading``'s paragraph. Empty string when ``report`` has no
    accuracies.
    """
    acc = report.get("accuracy", {})
    if not acc:
        return ""
    arch = architecture or report.get("classifier", "?")

    def row(network: str, accs: dict[str, float]) -> str:
        cells = [f"{100 * accs[n]:.2f}" if n in accs else "–" for n in ("clean", *STAMPERS)]
        return (f"| {network} | {cells[0]} | {report.get('blend', '?')} | "
                + " | ".join(cells[1:]) + " |")

    lines = ["| Network | Baseline | Blend | S | O | D | DeepStamp |",
             "|---|---|---|---|---|---|---|", row(arch, acc)]
    lines += [row(other, accs) for other, accs in
              report.get("accuracy_by_classifier", {}).items()]
    removal = report.get("removal", {})
    if removal:
        lines += ["", "| V′ removal (held-out) | S | O | D | DeepStamp |", "|---|---|---|---|---|"]
        for metric, fmt in (("psnr_before", "{:.2f} dB"), ("psnr_after", "{:.2f} dB"),
                            ("removal_gain", "{:+.2f} dB"), ("removal_left", "{:.3f}"),
                            ("ssim_before", "{:.3f}"), ("ssim_after", "{:.3f}")):
            cells = [fmt.format(removal[s][metric]) if metric in removal.get(s, {}) else "–"
                     for s in STAMPERS]
            lines.append(f"| {metric.replace('_', ' ')} | " + " | ".join(cells) + " |")
        vs = report.get("removal_vs", {})
        if vs:
            cells = [f"{vs[s]['gain_difference']:+.2f} ± {vs[s]['se']:.2f} dB" if s in vs
                     else "–" for s in STAMPERS]
            lines.append("| DeepStamp gain − this gain (paired, ± SE) | "
                         + " | ".join(cells) + " |")
        control = report.get("removal_control")
        if control:
            lines += ["", f"Control: a V′ trained on unmarked images gives back the clean "
                          f"image at {control['psnr_after']:.1f} dB (nothing to remove)."]
        curve = report.get("removal_curve")
        if curve:
            lines += ["", removal_curve_markdown(curve).rstrip("\n")]
        text = removal_reading(report) if reading else ""
        if text:
            lines += ["", text]
    return "\n".join(lines) + "\n"


def removal_curve_markdown(rows: Sequence[dict[str, Any]],
                           contrasts: dict[str, float] | None = None) -> str:
    """V′'s learning curve as a table: a line per step count, per stamper the held-out PSNR
    gain and (in brackets) the share of the mark left; ``rows`` as ``removal_curve`` gives
    them (or ``fit_report["removal_curve"]``). ``contrasts`` adds a contrast line."""
    names = [s for s in STAMPERS if any(r["stamper"] == s for r in rows)]
    by = {(r["stamper"], r["steps"]): r for r in rows}
    lines = ["| V′ steps | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    if contrasts:
        lines.append("| contrast | " + " | ".join(
            f"{contrasts[n]:.3f}" if n in contrasts else "–" for n in names) + " |")
    for k in sorted({r["steps"] for r in rows}):
        lines.append(f"| {k} | " + " | ".join(
            f"{by[(n, k)]['removal_gain']:+.2f} dB ({by[(n, k)]['removal_left']:.3f})"
            if (n, k) in by else "–" for n in names) + " |")
    return "\n".join(lines) + "\n"


#: V′ "did not remove" a marking when it leaves at least this share of the mark's squared
#: error (``removal_left``); such a row cannot tell resistance from an attacker still at the
#: identity
NOT_REMOVED = 0.9
#: DeepStamp's mark counts as faded below this fraction of the static blend's contrast
FADED = 0.8


def removal_reading(report: dict[str, Any], contrasts: dict[str, float] | None = None,
                    in_training_removed: float | None = None) -> str:
    """How far the removal rows of ``report`` (``dataset_utility``) support resistance.

    Written from the measured numbers only: which markings V′ left (``removal_left`` ≥
    ``NOT_REMOVED``: no evidence either way for those), whether DeepStamp's mark is fainter
    than the static blend (contrast below ``FADED`` × static's, so lower gains may be
    fading, not resistance), and the paired verdict against each baseline V′ did remove.

    Args:
        report: ``fit_report`` (``removal``, ``removal_vs``, ``removal_steps``, and
            ``contrast`` when measured).
        contrasts: stamper → contrast, when ``report`` has none (older reports).
        in_training_removed: the share of DeepStamp's mark the in-training V removed at the
            end of the GMAN (W's last ℒ_v, ``loss_v``, is that share), or ``None``.

    Returns:
        A markdown paragraph, or ``""`` without removal rows.
    """
    removal = report.get("removal", {})
    if not removal or "deepstamp" not in removal:
        return ""
    steps = report.get("removal_steps", "?")
    contrasts = report.get("contrast") or contrasts or {}
    left = {s: removal[s]["removal_left"] for s in STAMPERS if "removal_left" in removal.get(s, {})}
    kept = [s for s in STAMPERS[:-1] if left.get(s, 0.0) >= NOT_REMOVED]
    removed = [s for s in STAMPERS[:-1] if s in left and left[s] < NOT_REMOVED]
    out = []
    if kept:
        out.append(f"V′ at {steps} steps left the {', '.join(kept)} mark(s) in place "
                   f"(share of the mark left: "
                   f"{', '.join(f'{s} {left[s]:.3f}' for s in kept)}): for "
                   f"{'it' if len(kept) == 1 else 'them'} the attacker had not left the "
                   f"identity, so a lower gain for DeepStamp there shows nothing.")
    else:
        out.append(f"V′ at {steps} steps removed every baseline's mark (share left: "
                   f"{', '.join(f'{s} {left[s]:.3f}' for s in removed)}).")
    ds_left = left.get("deepstamp")
    if ds_left is not None:
        out.append(f"It left {ds_left:.3f} of DeepStamp's mark"
                   + (" (not removed)." if ds_left >= NOT_REMOVED else "."))
    faded = False
    if "deepstamp" in contrasts and "static" in contrasts and contrasts["static"] > 0:
        ratio = contrasts["deepstamp"] / contrasts["static"]
        faded = ratio < FADED
        verdict = ("fainter, so part of any resistance may be fading rather than a mark V′ "
                   "cannot predict" if faded else "about as visible")
        out.append(f"DeepStamp's contrast is {contrasts['deepstamp']:.3f}, {ratio:.2f}× the "
                   f"static blend's {contrasts['static']:.3f}: {verdict}.")
    vs = report.get("removal_vs", {})
    judged = [s for s in removed if s in vs]
    if judged:
        harder = [s for s in judged if vs[s]["gain_difference"] + 2 * vs[s]["se"] < 0]
        easier = [s for s in judged if vs[s]["gain_difference"] - 2 * vs[s]["se"] > 0]
        same = [s for s in judged if s not in harder and s not in easier]
        parts = []
        if harder:
            parts.append(f"harder to remove than {', '.join(harder)}")
        if easier:
            parts.append(f"easier to remove than {', '.join(easier)}")
        if same:
            parts.append(f"no different from {', '.join(same)} (within 2 SE)")
        out.append("Against the baselines V′ did remove, DeepStamp's mark is "
                   + "; ".join(parts) + " (paired per-image gains).")
        if harder:
            # one trained W, paired over its test images: says nothing about the recipe
            out.append("That is this one trained W on its test images; whether the recipe "
                       "gives a mark harder to remove than the static blend is judged over "
                       "training seeds (the seed-spread table), not by this run.")
    if ds_left is not None and ds_left >= NOT_REMOVED and (kept or faded):
        out.append("So these rows do not show resistance: V′ has not yet learnt to remove "
                   "DeepStamp's mark, and " + ("it is fainter" if faded else
                                               "it also left a baseline")
                   + "; a longer V′ budget (scripts/visible_gan_removal_curve.py) comes first.")
    if in_training_removed is not None:
        out.append(f"The in-training V, which saw W's marks from the start, removed "
                   f"{100 * in_training_removed:.0f} % of DeepStamp's mark by the end.")
    return "**Reading the removal rows (from the numbers above).** " + " ".join(out)


def stamper_grid(method: Any, clean: torch.Tensor, n: int = 4) -> Any:
    """Figure: rows clean / static / opacity / displacement / DeepStamp / V(DeepStamp)."""
    from matplotlib.figure import Figure

    c = method.config
    work = resize_square(clean[:n].to(method.device), c.working_size).clamp(0, 1)
    g = torch.Generator().manual_seed(0)
    stampers = method.stampers()
    rows = [("clean", work)]
    rows += [(name, stamp_all(stampers[name], work, g).to(work)) for name in STAMPERS]
    with torch.no_grad():
        rows.append(("V(deepstamp)", method.V(rows[-1][1]).clamp(0, 1)))
    cols = work.shape[0]
    fig = Figure(figsize=(1.8 * cols, 1.8 * len(rows)))
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for r, (title, images) in enumerate(rows):
        for j in range(cols):
            axes[r][j].imshow(images[j].permute(1, 2, 0).cpu().numpy())
            axes[r][j].axis("off")
        axes[r][0].set_title(title, fontsize=8, loc="left")
    fig.tight_layout()
    return fig
