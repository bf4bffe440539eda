"""anti_forward: keep and forge rates under white-box APGD as a curve over ε, two protocols.

The card's images (the first ``--images`` held-out test images of the calibration sample
set at 256², stamped with the card's key, and the same number clean), attacked at each L∞
ε of ``--eps`` (in 1/255 units, the [0, 1] pixel scale), stamped images toward "not
stamped" (removal) and clean ones toward "stamped" (forgery).

Protocols (``--protocol``; every attacked image is judged by all three judges below):

* ``card`` (this card's adversarial table): APGD ``--steps`` (20) on the plain scanner
  (``attacks.adversarial.apgd``), and APGD-EoT ``--steps`` × ``--eot`` noise draws through
  the noise (``apgd_eot``, the adaptive attack on the smoothed scanner).
* ``seed`` (seed 004, DeepRAFT's ``evaluate_rs.py``, as its code runs it): AutoAttack's
  ``apgd-ce``: APGD, cross-entropy, 100 iterations, 1 restart, on the noise-free scanner;
  only images the plain scanner classifies right are attacked, and an image comes back
  changed only where the attack fooled the plain scanner (``torchattacks.APGD.forward``,
  which ``apgd`` wraps, is a port of the same code and does the same). The seed's judge is
  ``vote`` below. Its ε list is 2, 4, 8, 16, 32, 64 /255 at 400² on [0, 1] images.

Judges: ``smoothed`` = Cohen certification with the bundle's n (abstain = not detected),
``verify`` = the bundle's deployed rule (calibrated statistic, then certification),
``vote`` = the seed's measure (its ``acc_calculate``): the mean over images of the share
of noisy forwards (σ of the bundle, in the scanner's view) whose argmax says "stamped" (a
soft score, not a decision: no majority, no abstention, no confidence bound), read from the
smoothed judge's own estimation votes (``Certificate.counts``: the bundle's n = 256 draws,
the seed's 1000).

Writes ``<out>/results.json``, ``<out>/apgd_curve.png`` (keep and forge against ε, one
line per attack and judge) and, with ``--card``, the card section between its markers and
the figure and results beside the card.

Usage::

    python scripts/anti_forward_apgd_curve.py --protocol card --protocol seed \\
        --eps 1,2,4,8,16 [--card components/pretrained/anti_forward]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import train_shipped_anti_forward as shipped_recipe  # noqa: E402
from anti_forward_invisibility import replace_section  # noqa: E402

from neuralmark.components.adversarial_evaluation import verify_decisions  # noqa: E402
from neuralmark.components.attacks.adversarial import apgd, apgd_eot, goal_labels  # noqa: E402
from neuralmark.components.data.manifest import load_split  # noqa: E402
from neuralmark.components.data.sample import build_sample_dataset  # noqa: E402
from neuralmark.components.evaluation import embed_all  # noqa: E402
from neuralmark.components.methods import WatermarkKey, load_bundle  # noqa: E402
from neuralmark.components.metrics import psnr  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "components" / "pretrained" / "anti_forward"
BEGIN, END = "<!-- BEGIN anti_forward apgd curve -->", "<!-- END anti_forward apgd curve -->"
SEED_STEPS = 100  # AutoAttack's apgd-ce, version "standard": n_iter 100, 1 restart
JUDGES = ("smoothed", "verify", "vote")


def attacks_of(protocol: str, steps: int, eot: int) -> list[tuple[str, str, int, int]]:
    """(row name, attack, steps, eot draws) of one protocol."""
    if protocol == "card":
        return [("APGD", "apgd", steps, 0), ("APGD-EoT", "apgd_eot", steps, eot)]
    if protocol == "seed":
        return [("seed APGD-CE", "apgd", SEED_STEPS, 0)]
    raise ValueError(f"unknown protocol {protocol!r}; valid: card, seed")


def parse_eps(text: str) -> list[float]:
    """'8,4,2' (units of 1/255) → distinct positive values in 1/255 units, in the given
    order (the run order: results are saved after each)."""
    try:
        values = list(dict.fromkeys(float(v) for v in text.split(",") if v.strip()))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--eps wants numbers in 1/255 units: {e}") from e
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"--eps wants positive values, got {text!r}")
    return values


def judge(method, images: torch.Tensor, tag: int) -> dict[str, list]:
    """The three judges on a batch: per image 1 / 0 (smoothed: None = abstain), vote share."""
    certs = method.certify(images, generator=torch.Generator().manual_seed(tag))
    return {"smoothed": [c.label for c in certs],
            "verify": verify_decisions(method, images, batch_size=len(images)),
            "vote": [c.counts[1] / sum(c.counts) for c in certs]}


def rates(decisions: dict[str, list]) -> dict[str, float]:
    """Share of images called "stamped" per judge (vote: the mean share of votes)."""
    return {j: (sum(d == 1 for d in v) / len(v) if j != "vote" else sum(v) / len(v))
            for j, v in decisions.items()}


def curve(method, clean: torch.Tensor, marked: torch.Tensor, eps_255: list[float],
          protocols: list[str], steps: int, eot: int, save: Path | None = None) -> dict:
    """Attack ``marked`` (removal) and ``clean`` (forgery) at each ε (1/255 units, in
    order) with each protocol's attacks; judge every set by the three judges.

    Returns the results (``unattacked`` and one ``curve`` row per attack and ε, with the
    per-image decisions); written to ``save`` after each row when given.
    """
    if clean.shape != marked.shape:
        raise ValueError(f"clean {tuple(clean.shape)} and marked {tuple(marked.shape)} differ")
    rms = float((marked - clean).pow(2).mean().sqrt())
    classifier = method.classifier_module()
    sides = {"remove": marked, "forge": clean}
    out = {"images": len(clean), "psnr": float(psnr(marked, clean).mean()),
           "stamp_rms_255": rms * 255,
           "stamp_linf_255": float((marked - clean).abs().max()) * 255,
           "sigma": method.config.sigma, "n": method.config.n, "unattacked": {}, "curve": []}
    t0 = time.time()
    for goal, images in sides.items():
        out["unattacked"][goal] = judge(method, images, 1)
        with torch.no_grad():  # what the noise-free scanner says: APGD attacks only its hits
            out["unattacked"][goal]["plain"] = classifier(images).argmax(1).tolist()
    print("unattacked", json.dumps({g: rates(d) for g, d in out["unattacked"].items()}),
          f"{time.time() - t0:.0f} s", flush=True)
    for e in eps_255:
        for protocol in protocols:
            for name, attack, n_steps, draws in attacks_of(protocol, steps, eot):
                eps = e / 255
                row = {"protocol": protocol, "attack": name, "steps": n_steps, "eot": draws,
                       "eps_255": e}
                t0 = time.time()
                for goal, images in sides.items():
                    labels = goal_labels(goal, len(images))
                    if attack == "apgd":
                        adv = apgd(classifier, images, labels, eps=eps, steps=n_steps, seed=0)
                    else:
                        adv = apgd_eot(classifier, images, labels, sigma=method.config.sigma,
                                       eps=eps, steps=n_steps, eot_iter=draws, seed=0,
                                       transform=method.to_grid)
                    with torch.no_grad():
                        plain = classifier(adv).argmax(1)
                    row[goal] = judge(method, adv, 2)
                    row[goal]["plain"] = plain.tolist()
                    row[goal]["linf_255"] = float((adv - images).abs().max()) * 255
                row["seconds"] = round(time.time() - t0, 1)
                out["curve"].append(row)
                print(protocol, name, f"eps {e:g}/255",
                      json.dumps({g: rates({j: row[g][j] for j in JUDGES})
                                  for g in sides}), f"{row['seconds']} s", flush=True)
                if save is not None:
                    save.write_text(json.dumps(out, indent=1))
    return out


def measure(args: argparse.Namespace) -> dict:
    """The card's images (first ``--images`` test images, stamped with its key) → ``curve``."""
    method = load_bundle(args.bundle)
    manifest = build_sample_dataset(args.calibration_root, shipped_recipe.CALIBRATION_DATA)
    clean = load_split(manifest, "test", size=256)[:args.images]            # n 3 256 256
    with torch.no_grad():
        marked = embed_all(method, clean, WatermarkKey("neuralmark-eval"), 16)
    return {"bundle": str(args.bundle)} | curve(
        method, clean, marked, args.eps, args.protocol, args.steps, args.eot,
        save=args.out / "results.json")


def plot(results: dict, path: Path) -> None:
    """Keep (stamped still detected) and forge (clean called stamped) against ε."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    styles = {"smoothed": "-", "verify": "--", "vote": ":"}
    colors = {"APGD": "tab:blue", "APGD-EoT": "tab:red", "seed APGD-CE": "tab:green"}
    for ax, goal, title in ((axes[0], "remove", "stamped still detected (keep)"),
                            (axes[1], "forge", "clean called stamped (forge)")):
        for attack in dict.fromkeys(r["attack"] for r in results["curve"]):
            rows = sorted((r for r in results["curve"] if r["attack"] == attack),
                          key=lambda r: r["eps_255"])
            for j in JUDGES:
                base = rates(results["unattacked"][goal])[j]
                xs = [0.5] + [r["eps_255"] for r in rows]  # 0.5 stands for "no attack"
                ys = [base] + [rates({j: r[goal][j]})[j] for r in rows]
                ax.plot(xs, ys, styles[j], marker="o", ms=3, color=colors.get(attack),
                        label=f"{attack} / {j}")
        ax.axvline(results["stamp_rms_255"], color="grey", lw=0.8)
        ax.text(results["stamp_rms_255"], 1.02, "stamp RMS", ha="center", fontsize=7,
                color="grey")
        if goal == "remove":
            ax.axhline(0.71, color="black", lw=0.6, ls="-.")
            ax.text(0.55, 0.72, "seed: 71%", fontsize=7)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("ε (L∞, /255; 0.5 = unattacked)")
        ax.set_title(title, fontsize=9)
        ax.set_ylim(-0.03, 1.08)
    axes[0].set_ylabel(f"share of {results['images']} images (vote: mean vote share)")
    axes[1].legend(fontsize=6, loc="center right")
    fig.suptitle(f"anti_forward under APGD, {results['images']} stamped + "
                 f"{results['images']} clean test images at 256², PSNR "
                 f"{results['psnr']:.2f} dB", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def section(results: dict, figure: str | None) -> list[str]:
    """The card section (between its markers) of ``curve``'s results."""
    n = results["images"]
    protocols = []
    for r in results["curve"]:
        text = f"{r['attack']}: {r['steps']} steps" + (f" × {r['eot']} noise draws (EoT)"
                                                        if r["eot"] else "")
        if text not in protocols:
            protocols.append(text)

    def cell(d: dict, goal: str) -> str:
        r = rates({j: d[goal][j] for j in JUDGES})
        k = {j: round(r[j] * n) for j in ("smoothed", "verify")}
        return f"{k['smoothed']}/{n} / {k['verify']}/{n} / {r['vote']:.2f}"

    total = sum(r["seconds"] for r in results["curve"])
    lines = [BEGIN, "### APGD as a curve over ε (`scripts/anti_forward_apgd_curve.py`)", "",
             f"The card's {n} stamped + {n} clean held-out test images at 256² (PSNR "
             f"{results['psnr']:.2f} dB, stamp RMS {results['stamp_rms_255']:.1f}/255, "
             f"max |stamp| {results['stamp_linf_255']:.0f}/255). Each cell: stamped (or "
             "clean) images called \"stamped\" by the smoothed classifier (Cohen, n = "
             f"{results['n']}) / by `verify` (the deployed rule) / the seed's vote share "
             f"(mean over images of the share of the smoothed judge's {results['n']} noisy "
             f"forwards at σ = {results['sigma']} saying \"stamped\"). Attacks ("
             + "; ".join(protocols) + "): APGD and seed APGD-CE on the noise-free "
             "scanner, APGD-EoT through the noise; seed APGD-CE is AutoAttack's apgd-ce as "
             f"seed 004's `evaluate_rs.py` runs it (1 restart). {total:.0f} s of attacks "
             "and judging on the shared 2-core CPU "
             "(1 torch thread; an upper bound under load).", "",
             "| attack | ε (/255) | stamped kept (smoothed / verify / vote) | "
             "clean forged (smoothed / verify / vote) |", "|---|---|---|---|",
             f"| none | 0 | {cell(results['unattacked'], 'remove')} | "
             f"{cell(results['unattacked'], 'forge')} |"]
    order = {a: i for i, a in enumerate(dict.fromkeys(r["attack"] for r in results["curve"]))}
    for r in sorted(results["curve"], key=lambda r: (order[r["attack"]], r["eps_255"])):
        lines.append(f"| {r['attack']} ({r['steps']} steps"
                     + (f" × {r['eot']} draws" if r["eot"] else "") + f") | {r['eps_255']:g} | "
                     f"{cell(r, 'remove')} | {cell(r, 'forge')} |")
    if figure:
        lines += ["", f"Figure: `{figure}`."]
    lines.append(END)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=SHIPPED)
    ap.add_argument("--protocol", action="append", choices=("card", "seed"),
                    help="card (APGD + APGD-EoT as the card) and/or seed (APGD-CE 100 "
                         "iterations on the noise-free scanner); default: both")
    ap.add_argument("--eps", type=parse_eps, default=parse_eps("8,4,2,1"),
                    help="L∞ budgets in 1/255 units, comma-separated")
    ap.add_argument("--images", type=int, default=12, help="images per side")
    ap.add_argument("--steps", type=int, default=20, help="card protocol: APGD steps")
    ap.add_argument("--eot", type=int, default=4, help="card protocol: EoT noise draws")
    ap.add_argument("--calibration-root", type=Path, default=ROOT / "data" / "sample-calibration")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "af10_apgd_curve")
    ap.add_argument("--card", type=Path, default=None, help="card folder to write into")
    ap.add_argument("--card-only", action="store_true", help="rewrite from <out>/results.json")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.images < 1 or args.steps < 1 or args.eot < 1:
        ap.error("--images, --steps and --eot must be >= 1")
    args.protocol = args.protocol or ["card", "seed"]
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.card_only:
        results = json.loads((args.out / "results.json").read_text())
    else:
        start = time.time()
        results = measure(args)
        results["seconds"] = round(time.time() - start, 1)
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
    figure = args.out / "apgd_curve.png"
    plot(results, figure)
    shown = None
    if args.card:
        shutil.copyfile(figure, args.card / "apgd_curve.png")
        (args.card / "apgd_curve.json").write_text(json.dumps(results, indent=1))
        shown = str((args.card / "apgd_curve.png").resolve().relative_to(ROOT))
    lines = section(results, shown)
    if args.card:
        replace_section(args.card / "MODEL_CARD.md", lines, BEGIN, END)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
