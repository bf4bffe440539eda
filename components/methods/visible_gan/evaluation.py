"""The seed's measurements for DeepStamp and its baselines, side by side.

* **Dataset utility** (the seed's Table I): a fresh classifier F′ (``config.classifier``)
  is trained on the training set marked by each stamper and tested on *clean* held-out
  images; ``clean`` is the same classifier trained on unmarked images (the table's
  "Baseline" column). Measured at the end of ``fit`` (it needs the training split) and kept
  in ``fit_report``.
* **Removal**: a fresh autoencoder V′ (the attacker) is trained per stamper to restore the
  clean image from the marked one, and judged on held-out images (PSNR / SSIM of V′'s output
  against the clean image; ``removal_gain`` = PSNR after − PSNR before: what the attacker
  recovers). Also in ``fit_report``.
* **On the evaluation images** (``visible_rows``): PSNR / SSIM of each marking against the
  static blend (how far the mark moved), the mark's contrast (mean absolute luma change
  over the mark's pixels: visibility kept), and the method's own V on each marking.
"""

from __future__ import annotations

from typing import Any

import torch

from neuralmark.components.methods.base import Callbacks, resize_square
from neuralmark.components.methods.visible_gan.classifier import accuracy, train_classifier
from neuralmark.components.methods.visible_gan.nets import RemovalNet, build_classifier
from neuralmark.components.metrics import psnr, ssim

STAMPERS = ("static", "opacity", "displacement", "deepstamp")
EVALUATION_ATTACK = "visible_gan"


def stamp_all(stamper: Any, images: torch.Tensor, generator: torch.Generator,
              batch_size: int = 256) -> torch.Tensor:
    """``stamper`` over ``images`` (N×3×S×S) in batches, on the CPU: N×3×S×S."""
    with torch.no_grad():
        return torch.cat([stamper(images[i:i + batch_size], generator).detach().cpu()
                          for i in range(0, images.shape[0], batch_size)])


def _train_removal(marked: torch.Tensor, clean: torch.Tensor, width: int, steps: int,
                   batch_size: int, lr: float, generator: torch.Generator,
                   device: torch.device) -> RemovalNet:
    from neuralmark.components.methods.visible_gan.losses import removal_attack_loss

    net = RemovalNet(width).to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, marked.shape[0], (batch_size,), generator=generator)
        loss = removal_attack_loss(net(marked[idx].to(device)), clean[idx].to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def dataset_utility(method: Any, x_tr: torch.Tensor, y_tr: torch.Tensor, x_va: torch.Tensor,
                    y_va: torch.Tensor, generator: torch.Generator, device: torch.device,
                    cb: Callbacks | None = None) -> dict[str, Any]:
    """F′ accuracy and V′ removal per stamper (module docstring); the ``fit_report`` dict.

    Args:
        method: a ``VisibleGan`` with a trained W.
        x_tr, y_tr: the task's training images (N×3×S×S) and labels (N).
        x_va, y_va: held-out images and labels (clean).
        generator: seeds the stampers' draws, the F′ / V′ batches.
        device: where F′ / V′ train.
        cb: progress sink.

    Returns:
        ``classifier``, ``blend``, ``accuracy`` (stamper → clean-test accuracy, ``clean``
        included), ``accuracy_marked`` (on the marked test images), ``removal``
        (stamper → ``psnr_before``, ``psnr_after``, ``ssim_before``, ``ssim_after``).
    """
    c = method.config
    stampers = method.stampers()
    report: dict[str, Any] = {"classifier": c.classifier, "blend": c.blend,
                              "utility_steps": c.utility_steps,
                              "removal_steps": c.removal_steps, "accuracy": {},
                              "accuracy_marked": {}, "removal": {}}
    names = ("clean", *STAMPERS)
    for i, name in enumerate(names):
        if cb is not None:
            cb.on_progress(i, len(names), f"utility: {name}")
        if name == "clean":
            marked_tr, marked_va = x_tr, x_va
        else:
            marked_tr = stamp_all(stampers[name], x_tr, generator)
            marked_va = stamp_all(stampers[name], x_va, generator)
        if c.utility_steps:
            net = build_classifier(c.classifier, method.num_classes, c.classifier_width)
            torch.manual_seed(c.seed + 17)
            train_classifier(net, marked_tr, y_tr, c.utility_steps, c.batch_size,
                             c.classifier_lr, generator, device, flips=c.task == "labels")
            report["accuracy"][name] = accuracy(net, x_va, y_va, device)
            report["accuracy_marked"][name] = accuracy(net, marked_va, y_va, device)
        if name != "clean" and c.removal_steps:
            v = _train_removal(marked_tr, x_tr, c.v_width, c.removal_steps, c.batch_size,
                               c.lr * 5, generator, device)
            with torch.no_grad():
                restored = torch.cat([v(marked_va[j:j + 256].to(device)).clamp(0, 1).cpu()
                                      for j in range(0, marked_va.shape[0], 256)])
            report["removal"][name] = {
                "psnr_before": float(psnr(marked_va, x_va).mean()),
                "psnr_after": float(psnr(restored, x_va).mean()),
                "ssim_before": float(ssim(marked_va, x_va).mean()),
                "ssim_after": float(ssim(restored, x_va).mean())}
    return report


def contrast(marked: torch.Tensor, clean: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Mean absolute luma change over the mark's pixels, per image (visibility).

    Args:
        marked, clean: ``B×3×H×W`` in [0, 1].
        support: ``B×1×H×W`` (or ``1×1×H×W``) 0/1 mask of the mark's pixels.
    """
    weights = torch.tensor([0.299, 0.587, 0.114], device=marked.device).view(1, 3, 1, 1)
    change = ((marked - clean) * weights).sum(1, keepdim=True).abs()          # b 1 h w
    support = support.expand_as(change)
    return (change * support).sum(dim=(1, 2, 3)) / support.sum(dim=(1, 2, 3)).clamp_min(1)


def visible_rows(method: Any, clean: torch.Tensor, seed: int = 0) -> list[dict[str, Any]]:
    """Tidy rows (``evaluation.COLUMNS``) of every DeepStamp-specific measurement.

    Attack ``visible_gan``, label = stamper. From ``fit_report``: ``accuracy``,
    ``accuracy_drop`` (clean-trained accuracy − this one), ``removal_psnr``,
    ``removal_ssim``, ``removal_gain``. On ``clean`` (the held-out evaluation images, at
    the working size): ``psnr_vs_static``, ``ssim_vs_static``, ``contrast``, ``v_psnr``,
    ``v_ssim`` (the method's own V).
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
        rem = report.get("removal", {}).get(name)
        if rem:
            add(name, "removal_psnr", rem["psnr_after"], 1)
            add(name, "removal_ssim", rem["ssim_after"], 1)
            add(name, "removal_gain", rem["psnr_after"] - rem["psnr_before"], 1)
    if "clean" in acc:
        add("clean", "accuracy", acc["clean"], 1)
    c = method.config
    work = resize_square(clean.to(method.device), c.working_size).clamp(0, 1)
    n = work.shape[0]
    g = torch.Generator().manual_seed(seed)
    stampers = method.stampers()
    static = stamp_all(stampers["static"], work, g).to(work)
    support = (method.canvas(1, c.working_size, c.working_size)[:, 3:] > 0.5).float().to(work)
    for name in STAMPERS:
        marked = stamp_all(stampers[name], work, g).to(work)
        with torch.no_grad():
            restored = method.V(marked).clamp(0, 1)
        if name != "static":
            add(name, "psnr_vs_static", float(psnr(marked, static).clamp_max(100).mean()), n)
            add(name, "ssim_vs_static", float(ssim(marked, static).mean()), n)
        add(name, "contrast", float(contrast(marked, work, support).mean()), n)
        add(name, "v_psnr", float(psnr(restored, work).mean()), n)
        add(name, "v_ssim", float(ssim(restored, work).mean()), n)
    return rows


def seed_table_markdown(report: dict[str, Any], architecture: str | None = None) -> str:
    """The seed's Table I in shape: accuracy of F′ trained on marked data, tested on clean.

    Plus the removal table (V′'s PSNR / SSIM against the clean image, per stamper).
    Empty string when ``report`` has no accuracies.
    """
    acc = report.get("accuracy", {})
    if not acc:
        return ""
    arch = architecture or report.get("classifier", "?")

    def pct(name: str) -> str:
        return f"{100 * acc[name]:.2f}" if name in acc else "–"

    lines = ["| Network | Baseline | Blend | S | O | D | DeepStamp |",
             "|---|---|---|---|---|---|---|",
             f"| {arch} | {pct('clean')} | {report.get('blend', '?')} | {pct('static')} | "
             f"{pct('opacity')} | {pct('displacement')} | {pct('deepstamp')} |"]
    removal = report.get("removal", {})
    if removal:
        lines += ["", "| V′ removal (held-out) | S | O | D | DeepStamp |", "|---|---|---|---|---|"]
        for metric, fmt in (("psnr_before", "{:.2f} dB"), ("psnr_after", "{:.2f} dB"),
                            ("ssim_before", "{:.3f}"), ("ssim_after", "{:.3f}")):
            cells = [fmt.format(removal[s][metric]) if s in removal else "–" for s in STAMPERS]
            lines.append(f"| {metric.replace('_', ' ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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
