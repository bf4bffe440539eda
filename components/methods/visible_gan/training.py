"""DeepStamp's one training sequence: F → GMAN (W against F, V, D) → calibration → table.

``VisibleGan.fit`` runs it; the shipped-weight script and the pipeline's training step
go through ``fit``, so there is one sequence.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch

from neuralmark.components import distributed
from neuralmark.components.methods.base import Callbacks, InputError, pick_device, resize_square
from neuralmark.components.methods.visible_gan.classifier import (
    accuracy,
    task_dataset,
    train_classifier,
)
from neuralmark.components.methods.visible_gan.evaluation import dataset_utility, stamper_grid
from neuralmark.components.methods.visible_gan.losses import removal_attack_loss
from neuralmark.components.metrics import psnr


def _train_removal_alone(method: Any, x_tr: torch.Tensor, steps: int,
                         opt_v: torch.optim.Optimizer, g: torch.Generator,
                         device: torch.device) -> None:
    """``steps`` updates of V alone on W's current marks of fresh batches (W not trained)."""
    c = method.config
    for _ in range(steps):
        xb = x_tr[distributed.batch_rows(x_tr.shape[0], c.batch_size, g)].to(device)
        with torch.no_grad(), distributed.autocast(device):
            marked, _ = method.stamp_working(xb)
        with distributed.autocast(device):
            loss = removal_attack_loss(method.V(marked), xb)
        opt_v.zero_grad()
        loss.backward()
        distributed.average_gradients(method.V)
        opt_v.step()


def fit_visible_gan(method: Any, data: Mapping[str, torch.Tensor],
                    cb: Callbacks) -> dict[str, float]:
    """Train ``method`` (a ``VisibleGan``) in place; see ``VisibleGan.fit``."""
    c = method.config
    cb = distributed.main_only(cb)
    if "train" not in data or data["train"].shape[0] == 0:
        raise InputError("visible_gan.fit needs a non-empty 'train' tensor")
    device = pick_device(c.device)
    method.to(device)
    g = torch.Generator().manual_seed(c.seed)
    has_val = "val" in data and data["val"].shape[0] > 0
    raw_val = data["val"] if has_val else data["train"]
    train = resize_square(data["train"], c.working_size).clamp(0, 1).cpu()
    val = resize_square(raw_val, c.working_size).clamp(0, 1).cpu()
    x_tr, y_tr = task_dataset(train, data.get("train_labels"), c.task)
    x_va, y_va = task_dataset(val, data.get("val_labels" if has_val else "train_labels"),
                              c.task)
    # the seed's table tests F′ on the held-out test split when one is given (else val)
    has_test = "test" in data and data["test"].shape[0] > 0
    if has_test:
        test = resize_square(data["test"], c.working_size).clamp(0, 1).cpu()
        x_te, y_te = task_dataset(test, data.get("test_labels"), c.task)
    else:
        x_te, y_te = x_va, y_va
    for name, labels in (("train", y_tr), ("val", y_va), ("test", y_te)):
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= method.num_classes):
            raise InputError(f"visible_gan: {name} labels span {int(labels.min())}.."
                             f"{int(labels.max())}, outside F's 0..{method.num_classes - 1} "
                             f"(num_classes {method.num_classes})")
    start = time.time()
    figures = any(callable(getattr(x, "on_figure", None)) for x in cb.callbacks)

    # 1. the task classifier F, then frozen
    cb.on_progress(0, c.steps, "training F")
    train_classifier(method.F, x_tr, y_tr, c.classifier_steps, c.batch_size,
                     c.classifier_lr, g, device, flips=c.task == "labels")
    method.F.requires_grad_(False)
    f_accuracy = accuracy(method.F, x_va, y_va, device)
    cb.on_metrics(0, {"f_val_accuracy": f_accuracy})

    # 2. GMAN: W against F (frozen), V and D
    opt_w = torch.optim.Adam(method.W.parameters(), lr=c.lr, betas=(0.5, 0.999))
    opt_v = torch.optim.Adam(method.V.parameters(), lr=c.removal_lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(method.D.parameters(), lr=c.lr, betas=(0.5, 0.999))
    method.W.train()
    method.V.train()
    method.D.train()
    metrics: dict[str, float] = {}
    steps_done = 0
    # data-parallel: this process's rows of each global batch, the gradients averaged
    # (W, V and D are in two backward passes a step; BatchNorm: VisibleGan.fit)
    for m in (method.W, method.V, method.D):
        distributed.broadcast_state(m)
    if c.removal_warmup_steps:
        cb.on_progress(0, c.steps, "V warm-up")
        _train_removal_alone(method, x_tr, c.removal_warmup_steps, opt_v, g, device)
    for step in range(c.steps):
        xb = x_tr[distributed.batch_rows(x_tr.shape[0], c.batch_size, g)].to(device)
        with distributed.autocast(device):
            terms = method.loss_terms(xb)
        opt_w.zero_grad()
        terms["w"].backward()
        distributed.average_gradients(method.W)
        opt_w.step()
        opt_v.zero_grad()
        opt_d.zero_grad()
        (terms["v_attack"] + terms["d_disc"]).backward()
        distributed.average_gradients(method.V, method.D)
        opt_v.step()
        opt_d.step()
        if c.v_updates_per_step > 1:
            _train_removal_alone(method, x_tr, c.v_updates_per_step - 1, opt_v, g, device)
        steps_done = step + 1
        out_of_time = bool(c.max_train_seconds) and distributed.agree(
            time.time() - start > c.max_train_seconds)
        if step % c.log_every == 0 or step == c.steps - 1 or out_of_time:
            metrics = distributed.mean_over_processes(
                {f"loss_{k}": float(v.detach()) for k, v in terms.items()})
            metrics["elapsed_s"] = time.time() - start
            cb.on_metrics(step, metrics)
            cb.on_progress(step + 1, c.steps, "GMAN")
        if out_of_time:
            break
    for m in (method.W, method.V, method.D):
        m.eval()

    # 3. the detector's clean null, on held-out images at their own size
    if "calibration" in data and data["calibration"].shape[0] > 0:
        method.calibrate(data["calibration"], g, source="calibration images")
    else:
        method.calibrate(raw_val, g, source="val" if has_val else "train (no val split given)")

    # 4. the seed's table: F′ trained on each marking, V′ removing each marking
    with torch.no_grad():
        marked_va, _ = method.stamp_working(x_va[:64].to(device))
        restored = method.V(marked_va).clamp(0, 1)
        v_psnr = float(psnr(restored, x_va[:64].to(device)).mean())
    method.fit_report = dataset_utility(method, x_tr, y_tr, x_te, y_te, g, device, cb)
    method.fit_report.update({"task": c.task, "utility_test": "test" if has_test else "val",
                              "utility_test_images": int(x_te.shape[0]),
                              "f_val_accuracy": f_accuracy, "gman_steps": steps_done,
                              "fit_seconds": round(time.time() - start, 1),
                              "train_images": int(train.shape[0]),
                              "task_images": int(x_tr.shape[0])})
    final = {**metrics, "f_val_accuracy": f_accuracy, "v_restoration_psnr": v_psnr,
             "calibration_scores": float(method.calibration["n_scores"]),
             "steps_done": float(steps_done), "train_seconds": time.time() - start}
    for name, acc in method.fit_report.get("accuracy", {}).items():
        final[f"utility_accuracy_{name}"] = acc
    if figures:
        cb.on_figure(steps_done, "visible_gan_examples", stamper_grid(method, raw_val[:4]))
    cb.on_metrics(steps_done, final)
    cb.on_progress(c.steps, c.steps, "calibrated")
    return final
