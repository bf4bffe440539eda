"""Which of a host's responses does training leave alone? A drift spectrum (issue #13, tk10)

No mark is embedded. The tiny DnCNN cell of ``measure_trigger_key_finetune_aware.py`` (5×16
grey DnCNN, 300 host steps; data: the tiny pipeline's sample set, ``--sample DIR``) is
trained once (the unmarked host U), then attacked as the marks were attacked (tk6–tk9):

* ``original`` — the library's fine-tuning, one epoch on the owner's pairs (fresh Adam at lr
  1e-3, BatchNorm in train mode: its statistics move);
* ``original_bn_frozen`` — the same epoch with BatchNorm frozen (``embed_into_host`` at
  λ = 0, as an embedding or overwrite runs): weight changes only;
* ``new`` — the library's fine-tuning, one epoch on new data (procedural textures);
* ``overwrite`` — the library's overwriting attacker (``ATTACKER_SECRET``, the public plain
  recipe: λ 1e-2, 200 steps, BatchNorm frozen).

For every probe family P (all ``40×40``, the denoising trigger's side) and attack, with
``Δ = M′(P) − M(P)``:

* ``rel`` = ‖Δ‖ / ‖M(P)‖ (the brief's measure; M(P) ≈ P for a residual denoiser, so it is
  dominated by the probe's mean and small everywhere);
* ``res`` = ‖Δ‖ / ‖P − M(P)‖: the change against what the host *does* to P (DnCNN's
  ``body(P)``), the scale a trigger mark lives on (S − U(K) is a change of body(K));
* ``sel`` = ‖Δ‖ / ‖M_ξ(P) − M(P)‖, ξ a random weight change with the attack's per-tensor
  norms (mean of 3 draws; BatchNorm statistics U's): 1 = training moves this response as
  much as a random step of the same size would; < 1 = training leaves it alone more than
  chance (the responses a mark should live in); > 1 = training concentrates there.

Probe families: the ``filter`` trigger (K ~ U(0, 1), 8 keys), the ``band`` trigger (8 keys),
narrow-band noise (``trigger.band_noise``, std 0.2) at radius 0.05 … 0.5 cycle/px and
orientation 0°, 45°, 90° (4 draws each) and at std 0.05 / 0.1 at two radii, flat patches
(0.1 … 0.9), in-distribution noise (0.5 + N(0, σ²), σ the task's), the test pairs (noisy and
clean), and the Base-2 statistic (its 8-bit projection of the 16×16-pooled output on its 16
U(0, 1) set inputs, 4 keys; with its sign flips). Then the response to the ``filter`` K split
by output frequency, and the first conv layer: ‖ΔŴ₁(ω)‖ / ‖Ŵ₁(ω)‖ per radial frequency bin
beside the power spectrum of the training inputs (a linear first layer's gradient lies in
the span of the input patches); first, without training, where each key family's mark
S0 − K = −∇K puts its energy by output band (``--kernels``), and how other keys' maps align
with the owner's on its K (``--survey``, tk8's predictor of a cross-key match). Findings:
the trigger_key MODEL_CARD, session tk10. ``--marked filter,midband`` then embeds the owner's
key with each family (one embedding each, the tk6 cell's recipe) and splits the attacked
marks' d_rel by output band: does the mark survive where the unmarked response drifts least?
``--sr`` runs the drift part on the tiny VDSR ×2 host instead (its inputs are band-limited).

    python scripts/diagnose_trigger_key_drift.py --sample /tmp/sample [--csv drift.csv]
        [--kernels-only] [--marked filter,midband] [--sr]
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import time

os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from neuralmark.components.attacks.model_registry import (  # noqa: E402
    ModelAttackSettings,
    get_model_attack,
)
from neuralmark.components.data.sample import SampleDataConfig, build_sample_dataset  # noqa: E402
from neuralmark.components.methods.base import WatermarkKey  # noqa: E402
from neuralmark.components.methods.registry import build  # noqa: E402
from neuralmark.components.methods.trigger_key.embedding import embed_into_host  # noqa: E402
from neuralmark.components.methods.trigger_key.evaluation import attacker_data  # noqa: E402
from neuralmark.components.methods.trigger_key.study import task_images  # noqa: E402
from neuralmark.components.methods.trigger_key.trigger import (  # noqa: E402
    apply_gradient,
    band_noise,
    band_trigger,
    gradient_kernel,
    host_input,
    key_material,
    midband_kernel,
    ncc,
    trigger,
)
from neuralmark.components.nets.image_nets import apply_net  # noqa: E402

SIDE = 40
RADII = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
ANGLES = (0, 45, 90)
#: radial output-frequency bins (cycles/px) of the response split and the spectra
BINS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.71)


def radial_bins(side: int) -> torch.Tensor:
    """``side×side`` index of each FFT frequency's radial bin in :data:`BINS`."""
    f = torch.fft.fftfreq(side)
    r = (f[:, None] ** 2 + f[None, :] ** 2).sqrt()
    return torch.bucketize(r, torch.tensor(BINS[1:-1]), right=True)


def probes(sigma: float, test: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The probe families, each ``n×1×40×40`` in [0, 1] (module docstring)."""
    g = torch.Generator().manual_seed(11)
    out = {"filter K, U(0,1) (8 keys)": torch.stack([trigger(f"drift-{i}", SIDE, 1)
                                                     for i in range(8)]),
           "band K (8 keys)": torch.stack([band_trigger(f"drift-{i}", SIDE, 1)
                                           for i in range(8)])}
    for r in RADII:
        for a in ANGLES:
            f = (r * math.sin(math.radians(a)), r * math.cos(math.radians(a)))
            out[f"band r {r:.2f} θ {a}°"] = torch.stack([band_noise(f, SIDE, 1, g)
                                                        for _ in range(4)])
    for r in (0.15, 0.45):
        for amp in (0.05, 0.1):
            out[f"band r {r:.2f} θ 0° std {amp}"] = torch.stack(
                [band_noise((0.0, r), SIDE, 1, g, amplitude=amp) for _ in range(4)])
    out["flat 0.1…0.9"] = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9]).view(5, 1, 1, 1).expand(
        5, 1, SIDE, SIDE).clone()
    out[f"0.5 + N(0, σ²), σ {sigma:.3f}"] = (0.5 + sigma * torch.randn(
        (8, 1, SIDE, SIDE), generator=g)).clamp(0, 1)
    tx, ty = test
    out["test pairs, noisy input"] = tx[:16, :, :SIDE, :SIDE].clone()
    out["test pairs, clean"] = ty[:16, :, :SIDE, :SIDE].clone()
    return out


def random_step(net: nn.Module, attacked: nn.Module, g: torch.Generator) -> nn.Module:
    """A copy of ``net`` moved by a random direction with the per-tensor norms of
    ``attacked − net`` (parameters only; buffers are ``net``'s)."""
    out = copy.deepcopy(net)
    with torch.no_grad():
        for p, q in zip(out.parameters(), attacked.parameters(), strict=True):
            d = q - p
            xi = torch.randn(p.shape, generator=g)
            p.add_(xi / xi.norm().clamp_min(1e-30) * d.norm())
    return out.eval()


def drift(u: nn.Module, attacked: nn.Module, randoms: list[nn.Module],
          p: torch.Tensor) -> dict[str, float]:
    """``rel``, ``res`` and ``sel`` of probes ``p`` (module docstring), over all items."""
    m, m2 = apply_net(u, p), apply_net(attacked, p)
    delta = (m2 - m).flatten(1).norm(dim=1)
    rand = torch.stack([(apply_net(r, p) - m).flatten(1).norm(dim=1) for r in randoms]).mean(0)
    res = (p - m).flatten(1).norm(dim=1)
    return {"rel": float(delta.sum() / m.flatten(1).norm(dim=1).sum()),
            "res": float(delta.sum() / res.sum().clamp_min(1e-30)),
            "sel": float(delta.sum() / rand.sum().clamp_min(1e-30)),
            "rms": float((m2 - m).pow(2).mean().sqrt())}


def base2_drift(randproj, u: nn.Module, attacked: nn.Module, randoms: list[nn.Module],
                keys: list[WatermarkKey]) -> dict[str, float]:
    """Base-2's statistic: its ``n×8`` projection of the pooled output on its set inputs."""
    num = den = rnd = 0.0
    flips = total = 0
    for key in keys:
        x, a = randproj.set_inputs(key), randproj.projection(key)
        p0 = randproj.project(apply_net(u, x).clamp(0, 1), a)
        p1 = randproj.project(apply_net(attacked, x).clamp(0, 1), a)
        pr = [randproj.project(apply_net(r, x).clamp(0, 1), a) for r in randoms]
        num += float((p1 - p0).norm())
        den += float(p0.norm())
        rnd += float(sum((q - p0).norm() for q in pr)) / len(pr)
        flips += int(((p1 > 0) != (p0 > 0)).sum())
        total += p0.numel()
    return {"rel": num / den, "sel": num / rnd, "flips": flips / total}


def spectrum_split(u: nn.Module, attacked: nn.Module, p: torch.Tensor) -> list[float]:
    """Relative change of the response to ``p`` per output-frequency bin:
    ‖Δ̂ in bin‖ / ‖(M(P) − mean)^ in bin‖."""
    m, m2 = apply_net(u, p), apply_net(attacked, p)
    fm = torch.fft.fft2(m - m.mean(dim=(-2, -1), keepdim=True))
    fd = torch.fft.fft2(m2 - m)
    b = radial_bins(p.shape[-1])
    return [float(fd.abs()[..., b == i].pow(2).sum().sqrt()
                  / fm.abs()[..., b == i].pow(2).sum().sqrt().clamp_min(1e-30))
            for i in range(len(BINS) - 1)]


def first_layer_spectrum(w: torch.Tensor, side: int = 32) -> list[float]:
    """‖Ŵ(ω)‖ per radial bin of a ``O×C×3×3`` kernel stack, zero-padded to ``side``."""
    fw = torch.fft.fft2(w, s=(side, side)).abs().pow(2).sum(dim=(0, 1))
    b = radial_bins(side)
    return [float(fw[b == i].sum().sqrt()) for i in range(len(BINS) - 1)]


def input_spectrum(x: torch.Tensor) -> list[float]:
    """Share of the mean-removed power of ``N×C×S×S`` patches per radial bin."""
    fx = torch.fft.fft2(x - x.mean(dim=(-2, -1), keepdim=True)).abs().pow(2).sum(dim=(0, 1))
    b = radial_bins(x.shape[-1])
    tot = float(fx.sum())
    return [float(fx[b == i].sum()) / tot for i in range(len(BINS) - 1)]


def kernel_bands(secrets: list[str]) -> None:
    """Where each family's mark S0 − K = −∇K puts its energy on white noise: the share of
    ‖∇̂(ω)‖² per radial bin (no training; ``filter``/``band``: the keyed 3×3 ∇, ``midband``:
    the keyed 7×7 Gabor)."""
    labels = [f"{lo:.1f}–{hi:.2f}" for lo, hi in zip(BINS[:-1], BINS[1:], strict=False)]
    print("mark energy on white noise by output band (share of ‖∇̂‖²)")
    print("| secret · ∇ | " + " | ".join(labels) + " |")
    b = radial_bins(64)
    for secret in secrets:
        for name, h in (("3×3 (filter, band)", gradient_kernel(secret)),
                        ("7×7 Gabor (midband)", midband_kernel(secret))):
            p = torch.fft.fft2(h.double(), s=(64, 64)).abs().pow(2)
            v = [float(p[b == i].sum() / p.sum()) for i in range(len(BINS) - 1)]
            print(f"| {secret} · {name} | " + " | ".join(f"{a:.3f}" for a in v) + " |")
    print(flush=True)


def alignment_survey(n: int, owner: str = "neuralmark-eval") -> None:
    """Per family, NCC(G_i(K), G(K)) over keys ``attacker-i``: another key's map applied to
    the owner's trigger K against the owner's S0 (tk7/tk8's training-free predictor of a
    cross-key match: every filter-family key at ≥ 0.49 matched, none below 0.39)."""
    print(f"alignment NCC(G_i(K), G(K)) with owner {owner}'s K over {n} keys attacker-i")
    print("| family | median | ≥ 0.3 | ≥ 0.4 | ≥ 0.49 | max |")
    for family in ("filter", "midband"):
        x, s0 = key_material(owner, SIDE, 1, "denoise", family=family)
        vals = torch.tensor([float(ncc((x - apply_gradient(x, midband_kernel(f"attacker-{i}")
                                        if family == "midband" else
                                        gradient_kernel(f"attacker-{i}"))).clamp(0, 1), s0))
                             for i in range(n)])
        print(f"| {family} | {float(vals.median()):.3f} | {int((vals >= 0.3).sum())} | "
              f"{int((vals >= 0.4).sum())} | {int((vals >= 0.49).sum())} | "
              f"{float(vals.max()):.3f} |")
    print(flush=True)


def band_norms(v: torch.Tensor) -> torch.Tensor:
    """‖v̂‖ per radial bin of ``1×C×S×S`` ``v`` (Parseval: their squares sum to ‖v‖²·S²)."""
    f = torch.fft.fft2(v.double()).abs().pow(2).sum(dim=(0, 1))
    b = radial_bins(v.shape[-1])
    return torch.stack([f[b == i].sum().sqrt() for i in range(len(BINS) - 1)])


def marked_band_survival(host, families: list[str], owner: WatermarkKey,
                         attacks: dict[str, tuple[str, float | None]]) -> None:
    """Embed ``owner`` into the unmarked host with each key family (the tk6 cell's recipe),
    attack the marked host, and split d_rel by output band: per bin, ‖(M′(K) − S)_b‖ /
    ‖(U(K) − S)_b‖ (0: the mark's part in that band intact, 1: as far as the unmarked host),
    beside where the written mark S − U(K) lies (share of its energy per bin). The whole
    d_rel (last column) is the verified statistic: a check against the tables of tk6–tk10."""
    labels = [f"{lo:.1f}–{hi:.2f}" for lo, hi in zip(BINS[:-1], BINS[1:], strict=False)]
    print(f"\nmarked hosts (owner {owner.secret}): d_rel by output band")
    print("| family | row | " + " | ".join(labels) + " | whole |")
    for family in families:
        m = host.with_config(key_family=family, lambda0_reference=False)
        m.train_pairs, m.test_pairs = host.train_pairs, host.test_pairs
        m.embed_model(host.host, owner)
        x, s = m.reference(owner)[:2]
        u_out = apply_net(m.unmarked, x).clamp(0, 1)
        den = band_norms(u_out - s)
        share = den.pow(2) / den.pow(2).sum()
        print(f"| {family} | mark energy share | " + " | ".join(f"{a:.3f}" for a in share)
              + f" | (mark size d(U(K), S) {m.verify_model(m.unmarked, owner).extra['d']:.2e}) |",
              flush=True)
        data = attacker_data(m)
        for name, (attack, strength) in attacks.items():
            net = get_model_attack(attack)(m.host, strength, data, ModelAttackSettings())
            out = apply_net(net, x).clamp(0, 1)
            per = band_norms(out - s) / den.clamp_min(1e-30)
            whole = m.verify_model(net, owner).extra["d_rel"]
            print(f"| {family} | {name} | " + " | ".join(f"{a:.3f}" for a in per)
                  + f" | {whole:.3f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample", required=True, help="build / reuse the tiny sample set here")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--csv", help="also write the tidy rows (probe, attack, measure, value)")
    ap.add_argument("--kernels", default="neuralmark-eval,neuralmark-demo,neuralmark-attacker,"
                    "neuralmark-attacker-2", help="secrets whose ∇ energy per band is listed")
    ap.add_argument("--survey", type=int, default=200,
                    help="keys attacker-0 … attacker-(N−1) whose alignment with the owner's "
                         "map is listed per family (no training; 0: none)")
    ap.add_argument("--sr", action="store_true",
                    help="the tiny VDSR ×2 SR host (λ 1e-3) instead of the DnCNN: does the band "
                         "above the low-resolution Nyquist (0.25 cycle/px) stay untouched?")
    ap.add_argument("--marked", default="",
                    help="family,…: also embed the owner's key (neuralmark-eval) with each key "
                         "family and split the attacked marks' d_rel by output band")
    ap.add_argument("--kernels-only", action="store_true", help="list the no-training tables "
                    "(mark energy by band, alignment survey) and stop")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kernel_bands([s for s in args.kernels.split(",") if s])
    if args.survey:
        alignment_survey(args.survey)
    if args.kernels_only:
        return
    t0 = time.time()
    base = {"channels": 1, "arch": "dncnn", "depth": args.depth, "host_steps": 300,
            "embed_steps": 200, "visualizer_steps": 0, "lambda0_reference": False}
    if args.sr:  # the tiny SR pipeline's host and λ (configs/trigger_key_sr.yaml)
        base.update(arch="vdsr", task="sr", scale=2, lam=1e-3)
    host = build("trigger_key", base)
    manifest = build_sample_dataset(args.sample, SampleDataConfig(
        size=128, crops_per_photo=4, n_procedural=12))
    fit = host.fit(task_images(manifest))
    c = host.config
    (x, y), test = host.require_pairs()
    u = host.host  # the trained, unmarked host (``unmarked`` is its frozen copy)
    print(f"host {c.arch}×{c.depth} {c.task}: degraded {fit['input_psnr']:.2f} dB, unmarked "
          f"{fit['host_psnr']:.2f} dB, {len(x)} training pairs ({time.time() - t0:.0f} s)",
          flush=True)
    data = attacker_data(host)
    attacked: dict[str, nn.Module] = {}
    for name, attack, strength in (("original", "fine_tune_original", 1.0),
                                   ("new", "fine_tune_new", 1.0), ("overwrite", "overwrite", None)):
        attacked[name] = get_model_attack(attack)(u, strength, data, ModelAttackSettings()).eval()
    steps = math.ceil(len(x) / c.batch_size)
    attacked["original_bn_frozen"], _ = embed_into_host(
        u, x, y, lambda net: torch.zeros(()), 0.0, steps, c.lr, c.batch_size, 0,
        host.run_device(), check_every=steps, desc="frozen")
    attacked = {k: attacked[k].cpu().eval() for k in
                ("original", "original_bn_frozen", "new", "overwrite")}
    for name, net in attacked.items():
        print(f"  {name}: task PSNR {host.task_psnr_of(net):.2f} dB", flush=True)
    g = torch.Generator().manual_seed(3)
    randoms = {k: [random_step(u, net, g) for _ in range(3)] for k, net in attacked.items()}
    rows: list[tuple[str, str, str, float]] = []
    print("\n| probe | " + " | ".join(f"{k}: rel / res / sel" for k in attacked) + " |")
    print("|---|" + "---|" * len(attacked))
    family = probes(c.sigma, test)
    if c.task == "sr":  # the SR trigger as the host sees it: K̂, K (20×20) upsampled ×2
        family["SR trigger K̂ (20→40, 8 keys)"] = torch.cat(
            [host_input(trigger(f"drift-{i}", SIDE // 2, 1)[None], "sr", 2) for i in range(8)])
    for pname, p in family.items():
        cells = []
        for k, net in attacked.items():
            v = drift(u, net, randoms[k], p)
            rows += [(pname, k, m, val) for m, val in v.items()]
            cells.append(f"{v['rel']:.4f} / {v['res']:.3f} / {v['sel']:.2f}")
        print(f"| {pname} | " + " | ".join(cells) + " |", flush=True)
    randproj = build("trigger_key_randproj", {**base, "method": "trigger_key_randproj"})
    keys = [WatermarkKey(f"drift-{i}") for i in range(4)]
    cells = []
    for k, net in attacked.items():
        v = base2_drift(randproj, u, net, randoms[k], keys)
        rows += [("Base-2 projection", k, m, val) for m, val in v.items()]
        cells.append(f"{v['rel']:.4f} / flips {v['flips']:.3f} / {v['sel']:.2f}")
    print("| Base-2 statistic (8-bit projection, 4 keys × 16 items): rel / sign flips / sel | "
          + " | ".join(cells) + " |", flush=True)
    labels = [f"{lo:.1f}–{hi:.2f}" for lo, hi in zip(BINS[:-1], BINS[1:], strict=False)]
    kk = probes(c.sigma, test)["filter K, U(0,1) (8 keys)"]
    print("\nresponse to the filter K by output frequency (cycles/px): ‖Δ̂‖ / ‖M̂(K)‖ per bin")
    print("| attack | " + " | ".join(labels) + " |")
    for k, net in attacked.items():
        v = spectrum_split(u, net, kk)
        rows += [("filter K by output band", k, lb, val) for lb, val in zip(labels, v,
                                                                              strict=True)]
        print(f"| {k} | " + " | ".join(f"{a:.3f}" for a in v) + " |")
    w0 = u.body[0].weight.detach()
    s0 = first_layer_spectrum(w0)
    print("\nfirst conv layer: ‖ΔŴ₁(ω)‖ / ‖Ŵ₁(ω)‖ per radial bin; input power share per bin")
    print("| | " + " | ".join(labels) + " |")
    for k, net in attacked.items():
        sd = first_layer_spectrum(net.body[0].weight.detach() - w0)
        v = [a / max(b, 1e-30) for a, b in zip(sd, s0, strict=True)]
        rows += [("first layer ΔW/W", k, lb, val) for lb, val in zip(labels, v, strict=True)]
        print(f"| ΔW₁/W₁ {k} | " + " | ".join(f"{a:.4f}" for a in v) + " |")
    for what, t in (("training inputs (noisy)", x), ("training targets (clean)", y),
                    ("new-data inputs", data.new[0]), ("filter K", kk)):
        v = input_spectrum(t)
        rows += [(f"power share {what}", "-", lb, val) for lb, val in zip(labels, v, strict=True)]
        print(f"| power share, {what} | " + " | ".join(f"{a:.3f}" for a in v) + " |")
    families = [f for f in args.marked.split(",") if f]
    if families:
        marked_band_survival(host, families, WatermarkKey("neuralmark-eval"), {
            "original": ("fine_tune_original", 1.0), "new": ("fine_tune_new", 1.0),
            "overwrite": ("overwrite", None)})
    if args.csv:
        with open(args.csv, "w") as fh:
            fh.write("probe,attack,measure,value\n")
            fh.writelines(f'"{a}",{b},{m},{v:.6g}\n' for a, b, m, v in rows)
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
