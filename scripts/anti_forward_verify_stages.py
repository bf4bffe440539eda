"""anti_forward: which stage of ``verify`` an adaptive attacker breaks, and other statistics.

``verify`` (the deployed rule) is two stages: (1) the scan statistic (the scanner's logit
margin ``l₁ − l₀`` averaged over ``score_noise_samples`` fixed noise draws of σ) must pass
its threshold, calibrated on clean images at ``fpr``; (2) Cohen's certificate of the
smoothed scanner (fresh noise, n draws, a one-sided bound on the vote share) must say
"stamped". af10 found APGD-EoT at 2/255 keeps 11/12 stamped images by the certificate and
2/12 by ``verify``; this script measures both stages per image on the same attacked images,
and the statistic's candidate reductions of the same margins (``score_aggregation``:
"mean_margin", "mean_probability", "vote_share", each with the deployed K and a larger
``--bank``), each re-calibrated at the bundle's ``fpr`` on the same clean views, followed by
the same certificate.

Images: the card's (the first ``--images`` held-out test images of the calibration sample
set at 256², stamped with the card's key, and the same number clean), attacked by APGD-EoT
(``--steps`` × ``--eot`` noise draws, through the noise; the call of
``anti_forward_apgd_curve.py``) at each ε of ``--eps``. Calibration: the clean images of
the bundle's ``--recalibrate`` (the val split minus the recipe's train/test images) at the
working size plus chain views (generator seed 9, as ``calibrate``), ``--calibration-scores``
in all: a prefix of the bundle's own calibration views. Clean FPR: the 72 test images
itself + ``--fpr-views`` chain draws each; unattacked detection: the 72 stamped test images.

Writes ``<out>/results.json`` (every margin, so ``--card-only`` re-judges without a
forward) and, with ``--card``, the card section between its markers and
``verify_stages.json`` beside it (``card_record``).

Usage::

    python scripts/anti_forward_verify_stages.py --eps 2,4,1 --out outputs/af11_stages \\
        [--card components/pretrained/anti_forward]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402
import train_shipped_anti_forward as shipped_recipe  # noqa: E402
from anti_forward_apgd_curve import parse_eps  # noqa: E402
from anti_forward_invisibility import replace_section  # noqa: E402

from neuralmark.components.adversarial_evaluation import verify_decisions  # noqa: E402
from neuralmark.components.attacks.adversarial import apgd_eot, goal_labels  # noqa: E402
from neuralmark.components.attacks.stochastic import StochasticAugmentation  # noqa: E402
from neuralmark.components.data.manifest import load_image, load_split, read_manifest  # noqa: E402
from neuralmark.components.data.sample import build_sample_dataset  # noqa: E402
from neuralmark.components.evaluation import embed_all  # noqa: E402
from neuralmark.components.methods import WatermarkKey, load_bundle  # noqa: E402
from neuralmark.components.methods.anti_forward.parts import (  # noqa: E402
    aggregate_margins,
    threshold_at,
)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "components" / "pretrained" / "anti_forward"
BEGIN, END = "<!-- BEGIN anti_forward verify stages -->", "<!-- END anti_forward verify stages -->"
AGGREGATIONS = ("mean_margin", "mean_probability", "vote_share")


def candidates(deployed_k: int, bank: int) -> list[tuple[str, int]]:
    """(aggregation, K) pairs judged: every reduction at the deployed K and at ``bank``."""
    ks = list(dict.fromkeys([deployed_k, bank]))
    return [(a, k) for k in ks for a in AGGREGATIONS]


def name_of(how: str, k: int) -> str:
    return f"{how} K={k}"


def stats_of(margins: list[list[float]], how: str, k: int) -> list[float]:
    """The candidate's statistic per image from its stored margins (the first K draws)."""
    return aggregate_margins(torch.tensor(margins)[:, :k], how).tolist()


def calibration_views(method, args: argparse.Namespace) -> torch.Tensor:
    """The bundle's ``--recalibrate`` clean views: N×K margins (a prefix of its views)."""
    recipe_rows = read_manifest(build_sample_dataset(args.data_root, shipped_recipe.DATA))
    seen = {r.sha256 for r in recipe_rows if r.split in ("train", "test")}
    root = Path(build_sample_dataset(args.calibration_root,
                                     shipped_recipe.CALIBRATION_DATA)).parent
    rows = [r for r in read_manifest(root / "manifest.csv")
            if r.split == "val" and r.sha256 not in seen]
    clean = torch.stack([load_image(root / r.path, method.config.working_size)
                         for r in rows])                                   # n 3 w w
    xw = method.to_grid(clean).clamp(0, 1)
    views = max(1, math.ceil(args.calibration_scores / len(rows)))
    chain = StochasticAugmentation(method.config.aug, 1.0)
    generator = torch.Generator().manual_seed(9)  # as the bundle's recalibration
    out = [method.scan_margins(xw)]
    for _ in range(views - 1):
        out.append(torch.cat([method.scan_margins(chain(xw[i:i + 64], generator))
                              for i in range(0, len(xw), 64)]))
    return torch.cat(out)                                                  # (views n) k


def chain_views(method, images: torch.Tensor, views: int, seed: int) -> torch.Tensor:
    """``images`` at the working size, then ``views`` chain draws of each: (1+views)·N."""
    xw = method.to_grid(images).clamp(0, 1)
    chain = StochasticAugmentation(method.config.aug, 1.0)
    generator = torch.Generator().manual_seed(seed)
    return torch.cat([xw] + [chain(xw, generator) for _ in range(views)])


def judge_stages(method, wide, images: torch.Tensor) -> dict:
    """Per image: margins over the wide bank, noise-free margin, certificate, ``verify``."""
    with torch.no_grad():
        plain = method.scanner_logits(images)
    certs = method.certify(images)  # verify's generator (config.seed), every image
    return {"margins": wide.scan_margins(images).tolist(),
            "plain_margin": (plain[:, 1] - plain[:, 0]).tolist(),
            "cert_label": [c.label for c in certs],
            "cert_p_lower": [c.p_lower for c in certs],
            "vote": [c.counts[1] / sum(c.counts) for c in certs],
            "verify": verify_decisions(method, images, batch_size=len(images))}


def measure(args: argparse.Namespace, save: Path) -> dict:
    torch.set_num_threads(args.threads)
    method = load_bundle(args.bundle)
    c = method.config
    if c.score_aggregation != "mean_margin":
        raise SystemExit(f"{args.bundle} already uses {c.score_aggregation}; this compares "
                         "against the mean-margin rule")
    wide = method.with_config(score_noise_samples=max(args.bank, c.score_noise_samples))
    probe = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    if not torch.allclose(wide.scan_margins(probe)[:, :c.score_noise_samples].mean(1),
                          method.scan_statistic(probe), atol=1e-5):
        raise SystemExit("the wide noise bank does not start with the deployed bank")
    manifest = build_sample_dataset(args.calibration_root, shipped_recipe.CALIBRATION_DATA)
    test = load_split(manifest, "test", size=256)                            # 72 3 256 256
    with torch.no_grad():
        marked = embed_all(method, test, WatermarkKey("neuralmark-eval"), 16)
    out: dict = {"bundle": str(args.bundle), "images": args.images, "fpr": c.fpr,
                 "deployed_k": c.score_noise_samples, "bank": wide.config.score_noise_samples,
                 "deployed_threshold": method.calibration["threshold_statistic"],
                 "deployed_n_scores": method.calibration["n_scores"], "sigma": c.sigma,
                 "n": c.n, "steps": args.steps, "eot": args.eot, "attacks": []}
    t0 = time.time()
    out["calibration"] = calibration_views(wide, args).tolist()
    out["calibration_seconds"] = round(time.time() - t0, 1)
    print(f"calibration: {len(out['calibration'])} views, {out['calibration_seconds']} s",
          flush=True)
    t0 = time.time()
    out["heldout_clean"] = wide.scan_margins(chain_views(method, test, args.fpr_views,
                                                          123)).tolist()
    out["heldout_stamped"] = wide.scan_margins(method.to_grid(marked).clamp(0, 1)).tolist()
    print(f"held-out views: {time.time() - t0:.0f} s", flush=True)
    sides = {"remove": marked[:args.images], "forge": test[:args.images]}
    out["unattacked"] = {g: judge_stages(method, wide, x) for g, x in sides.items()}
    save.write_text(json.dumps(out))
    classifier = method.classifier_module()
    for e in args.eps:
        t0 = time.time()
        row: dict = {"eps_255": e}
        for goal, images in sides.items():
            adv = apgd_eot(classifier, images, goal_labels(goal, len(images)), sigma=c.sigma,
                           eps=e / 255, steps=args.steps, eot_iter=args.eot, seed=0,
                           transform=method.to_grid)
            row[goal] = judge_stages(method, wide, adv)
        row["seconds"] = round(time.time() - t0, 1)
        out["attacks"].append(row)
        save.write_text(json.dumps(out))
        print(f"APGD-EoT {e:g}/255: verify keeps {sum(row['remove']['verify'])}, forges "
              f"{sum(row['forge']['verify'])}; {row['seconds']} s", flush=True)
    return out


def judge(results: dict) -> dict:
    """Per candidate: threshold, held-out clean FPR, unattacked detection, and per ε the
    stage-1 passes and ``verify`` (stage 1 AND certificate) on stamped and clean images."""
    cal = results["calibration"]
    out = {}
    for how, k in candidates(results["deployed_k"], results["bank"]):
        name = name_of(how, k)
        thr = threshold_at(sorted(stats_of(cal, how, k)), results["fpr"])
        deployed = how == "mean_margin" and k == results["deployed_k"]
        rows = [(name, thr)] + ([("deployed (bundle's threshold)",
                                  results["deployed_threshold"])] if deployed else [])
        for label, t in rows:
            if t is None:
                out[label] = {"threshold": None}
                continue

            def passes(margins: list, t: float = t, how: str = how,
                       k: int = k) -> list[bool]:
                return [s > t for s in stats_of(margins, how, k)]

            r = {"threshold": t, "how": how, "k": k,
                 "heldout_clean": sum(passes(results["heldout_clean"])),
                 "heldout_clean_n": len(results["heldout_clean"]),
                 "heldout_stamped": sum(passes(results["heldout_stamped"])),
                 "heldout_stamped_n": len(results["heldout_stamped"]), "sets": {}}
            for e, sides in [(0.0, results["unattacked"])] + [
                    (a["eps_255"], a) for a in results["attacks"]]:
                cell = {}
                for goal in ("remove", "forge"):
                    d = sides[goal]
                    p = passes(d["margins"])
                    cell[goal] = {"stage1": sum(p),
                                  "cert": sum(lab == 1 for lab in d["cert_label"]),
                                  "verify": sum(ok and lab == 1 for ok, lab in
                                                zip(p, d["cert_label"], strict=True)),
                                  "verify_measured": sum(d["verify"]),
                                  "vote": sum(d["vote"]) / len(d["vote"])}
                r["sets"][f"{e:g}"] = cell
            out[label] = r
    return out


def margins_report(results: dict) -> list[str]:
    """Where clean and stamped images sit on the deployed statistic and on the votes."""
    k, thr = results["deployed_k"], results["deployed_threshold"]
    cal = torch.tensor(results["calibration"])                              # views bank
    votes = (cal > 0).float().mean(1)
    out = [f"clean calibration views ({len(cal)}): the largest deployed statistic "
           f"{float(cal[:, :k].mean(1).max()):.2f} (threshold {thr:.2f}); "
           f"{int((votes > 0.5).sum())} have a majority of the {cal.shape[1]} noisy draws "
           f"voting \"stamped\" and {int((votes == 1).sum())} all of them (the largest vote "
           "share is what a `vote_share` threshold must exceed)"]
    rows = [("unattacked", results["unattacked"])] + [
        (f"APGD-EoT {a['eps_255']:g}/255", a)
        for a in sorted(results["attacks"], key=lambda a: a["eps_255"])]
    for label, sides in rows:
        m = torch.tensor(sides["remove"]["margins"])
        stat = m[:, :k].mean(1)
        out.append(f"stamped, {label}: deployed statistic median {float(stat.median()):.2f} "
                   f"(range {float(stat.min()):.2f} to {float(stat.max()):.2f}), "
                   f"{int((stat > thr).sum())}/{len(stat)} above the threshold; draws voting "
                   f"\"stamped\" {float((m > 0).float().mean()):.2f} of all; noise-free margin "
                   f"median {float(torch.tensor(sides['remove']['plain_margin']).median()):.2f}")
    return out


def section(results: dict, judged: dict) -> list[str]:
    """The card section (between its markers)."""
    n = results["images"]
    eps = ["0"] + [f"{a['eps_255']:g}" for a in sorted(results["attacks"],
                                                        key=lambda a: a["eps_255"])]
    dep = judged["deployed (bundle's threshold)"]
    lines = [BEGIN, "### `verify` stage by stage under APGD-EoT "
             "(`scripts/anti_forward_verify_stages.py`)", "",
             f"The card's {n} stamped + {n} clean test images at 256², APGD-EoT "
             f"{results['steps']} steps × {results['eot']} noise draws at each ε (af10's "
             "call). Stage 1: the scan statistic above its threshold (calibrated at fpr "
             f"{results['fpr']:g}); certificate: Cohen (n = {results['n']}) says \"stamped\"; "
             "verify = both. The deployed rule is `mean_margin` over K = "
             f"{results['deployed_k']} fixed noise draws with the bundle's threshold "
             f"({dep['threshold']:.3f}, {results['deployed_n_scores']} clean scores); every "
             f"candidate (reduction × K) is calibrated on the same {len(results['calibration'])}"
             " clean views (a prefix of the bundle's), so its threshold sits at the same "
             f"level. Held-out clean: {dep['heldout_clean_n']} views (72 test images, "
             "itself + chain draws); held-out stamped: the 72 stamped test images, stage 1 "
             "only.", "",
             "| statistic | threshold | held-out clean flagged | held-out stamped, stage 1 | "
             + " | ".join(f"ε {e}: kept (stage 1 / cert / verify)" for e in eps)
             + " | " + " | ".join(f"ε {e}: forged (verify)" for e in eps) + " |",
             "|" + "---|" * (4 + 2 * len(eps))]
    for label, r in judged.items():
        if r.get("threshold") is None:
            lines.append(f"| {label} | none (too few scores) |" + " |" * (2 + 2 * len(eps)))
            continue
        thr = f"{r['threshold']:.3f}" if r["how"] != "vote_share" else f"{r['threshold']:.3g}"
        kept = " | ".join(f"{r['sets'][e]['remove']['stage1']} / {r['sets'][e]['remove']['cert']}"
                          f" / **{r['sets'][e]['remove']['verify']}**" if e in r["sets"] else "–"
                          for e in eps)
        forged = " | ".join(f"{r['sets'][e]['forge']['verify']}" if e in r["sets"] else "–"
                            for e in eps)
        lines.append(f"| {label} | {thr} | {r['heldout_clean']}/{r['heldout_clean_n']} | "
                     f"{r['heldout_stamped']}/{r['heldout_stamped_n']} | {kept} | {forged} |")
    lines += ["", "Where the statistic stage sits (deployed statistic = mean margin over the "
              f"first {results['deployed_k']} draws; votes over the {results['bank']} draws):"]
    lines += [f"- {line}" for line in margins_report(results)]
    measured = " / ".join(f"ε {e}: {dep['sets'][e]['remove']['verify_measured']}"
                          for e in eps if e in dep["sets"])
    lines += ["", f"Stamped images kept by the bundle's own `verify` call on the same images "
              f"(cross-check of the deployed row): {measured}. Vote share of the certificate "
              "(stamped): " + " / ".join(
                  f"ε {e}: {dep['sets'][e]['remove']['vote']:.2f}" for e in eps
                  if e in dep["sets"]) + f". Calibration margins: "
              f"{results['calibration_seconds']:.0f} s; attacks and judging: "
              f"{sum(a['seconds'] for a in results['attacks']):.0f} s (shared 2-core CPU, "
              "1 torch thread: upper bounds).", END]
    return lines


def card_record(results: dict, judged: dict) -> dict:
    """What goes beside the card: the judged table and the 12 + 12 images' stages per ε,
    margins rounded to 3 decimals (the calibration and held-out margins, 38 000 numbers,
    stay in ``<out>/results.json``)."""
    def rounded(x):
        if isinstance(x, float):
            return round(x, 3)
        if isinstance(x, list):
            return [rounded(v) for v in x]
        if isinstance(x, dict):
            return {k: rounded(v) for k, v in x.items()}
        return x

    kept = {k: v for k, v in results.items()
            if k not in ("calibration", "heldout_clean", "heldout_stamped")}
    return rounded(kept | {"judged": judged})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=SHIPPED)
    ap.add_argument("--eps", type=parse_eps, default=parse_eps("2,4"),
                    help="L∞ budgets in 1/255 units, comma-separated, in run order")
    ap.add_argument("--images", type=int, default=12, help="images per side")
    ap.add_argument("--steps", type=int, default=20, help="APGD-EoT steps")
    ap.add_argument("--eot", type=int, default=4, help="APGD-EoT noise draws per step")
    ap.add_argument("--bank", type=int, default=16, help="K of the wide candidates")
    ap.add_argument("--calibration-scores", type=int, default=2000)
    ap.add_argument("--fpr-views", type=int, default=4, help="chain draws per clean test image")
    ap.add_argument("--data-root", type=Path, default=ROOT / "data" / "sample")
    ap.add_argument("--calibration-root", type=Path, default=ROOT / "data" / "sample-calibration")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "af11_stages")
    ap.add_argument("--card", type=Path, default=None, help="card folder to write into")
    ap.add_argument("--card-only", action="store_true", help="re-judge <out>/results.json")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if min(args.images, args.steps, args.eot, args.bank, args.calibration_scores) < 1:
        ap.error("--images, --steps, --eot, --bank and --calibration-scores must be >= 1")
    args.out.mkdir(parents=True, exist_ok=True)
    save = args.out / "results.json"
    results = json.loads(save.read_text()) if args.card_only else measure(args, save)
    judged = judge(results)
    (args.out / "judged.json").write_text(json.dumps(judged, indent=1))
    lines = section(results, judged)
    if args.card:
        replace_section(args.card / "MODEL_CARD.md", lines, BEGIN, END)
        (args.card / "verify_stages.json").write_text(json.dumps(card_record(results, judged)))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
