"""visible_gan's model card: the whole ``MODEL_CARD.md`` from a run's ``metrics.json``.

Every sentence, the removal caveat and the limitations included, is generated from
``metrics.json`` and the bundle's ``config.json``; the study sections come from ``card``
(each from the JSON its study wrote beside the bundle). ``scripts/train_shipped_visible_gan.py``
calls :func:`write_card` with its recipe, so ``--card-only`` rewrites the card without
losing text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from neuralmark.components.data.labelled import ProceduralClassesConfig
from neuralmark.components.methods.visible_gan.card import (
    accuracy_section,
    architecture_section,
    architecture_seeds_section,
    earlier_section,
    residual_section,
    seed_section,
    study_section,
)
from neuralmark.components.methods.visible_gan.config import VisibleGanConfig
from neuralmark.components.methods.visible_gan.evaluation import (
    FADED,
    removal_reading,
    seed_table_markdown,
)


def data_line(m: dict, default_data: Mapping[str, Any]) -> str:
    """What W was trained on, from the run's data settings (older metrics without them:
    ``default_data``, the shipped set)."""
    d = m.get("data") or dict(default_data)
    if d.get("dataset") == "prepared":
        return (f"CIFAR-10 from the dataset pipeline (`{d.get('prepared')}`, val "
                f"{d.get('val_fraction')} of train), with its labels; {m['train_images']} train "
                f"/ {m['val_images']} val / {m['test_images']} test images. F learns the "
                "classes (`task: labels`), so ℒ_f keeps a real classifier's answer.")
    cfg = ProceduralClassesConfig(size=d.get("size", 32),
                                  images_per_class=d.get("images_per_class", 200),
                                  seed=d.get("seed", 0))
    return (f"the ten procedural classes `{cfg.model_dump_json()}` (`components/data/"
            f"labelled.py`: stripes, checkers, rings, discs, polygons, blobs at "
            f"{cfg.size}²); {m['train_images']} train / {m['val_images']} val / "
            f"{m['test_images']} test images. F learns the classes (`task: labels`), so ℒ_f "
            "keeps a real classifier's answer.")


def recipe_difference(old: dict, new: dict, recipe: Mapping[str, Any]) -> str:
    """The ``recipe`` keys (and ℒ_vis's weight) on which two bundles' configs differ.

    A key an older config lacks had the config's default then.
    """
    fields = VisibleGanConfig.model_fields
    keys = [*recipe, "lambda_visibility", "visibility_floor"]
    diff = []
    for k in dict.fromkeys(keys):
        default = fields[k].default if k in fields else None
        a, b = old.get(k, default), new.get(k, default)
        if k != "device" and a != b:
            diff.append(f"`{k}` {json.dumps(a)}")
    return ", ".join(diff) or "the same recipe"


def previous_section(m: dict, cfg: dict, recipe: Mapping[str, Any]) -> str:
    """The previous bundle against this one (``cfg``: this bundle's config), on the same
    held-out images; ``recipe`` names the keys compared (``recipe_difference``)."""
    prev = m.get("previous")
    if not prev:
        return ""

    def row_value(rows: list[dict], label: str, metric: str) -> float | None:
        hits = [r["value"] for r in rows if r["label"] == label and r["metric"] == metric]
        return hits[0] if hits else None

    def fmt(v: float | None, f: str) -> str:
        return "–" if v is None else f.format(v)

    test_set = next(iter(m["per_set"]))
    steps = prev.get("removal_steps")
    new_rem = m["fit_report"].get("removal", {})
    old_rem = prev.get("removal", {})
    changed = recipe_difference(prev["config"], cfg, recipe)
    lines = [f"| same held-out images | previous W ({changed}) | this W |", "|---|---|---|"]
    for label, metric, f in (("deepstamp", "contrast", "{:.3f}"),
                             ("deepstamp", "contrast_vs_static", "{:.2f}×"),
                             ("deepstamp", "psnr_vs_static", "{:.2f} dB")):
        before = fmt(row_value(prev["test_rows"], label, metric), f)
        lines.append(f"| {metric} ({test_set}) | {before}"
                     f" | {fmt(row_value(m['test_rows'], label, metric), f)} |")
    for name in m["per_set"]:
        a, b = prev["per_set"].get(name, {}), m["per_set"][name]
        lines.append(f"| detected, marked ({name}) | "
                     f"{fmt(a.get('detection_rate_marked'), '{:.3f}')} | "
                     f"{b['detection_rate_marked']:.3f} |")
        lines.append(f"| detected after jpeg_50 / resize_0.5 ({name}) | "
                     + (f"{a['detection_rate_attacked']['jpeg_50']:.2f} / "
                        f"{a['detection_rate_attacked']['resize_0.5']:.2f}" if a else "–")
                     + f" | {b['detection_rate_attacked']['jpeg_50']:.2f} / "
                       f"{b['detection_rate_attacked']['resize_0.5']:.2f} |")
    lines.append(f"| false positives (all clean) | {prev['false_positives']}/"
                 f"{prev['clean_trials']} | {m['false_positives']}/{m['clean_trials']} |")
    for name in m["per_set"]:
        a = prev["per_set"].get(name, {}).get("shipped_v")
        b = m["per_set"][name].get("shipped_v")
        if a and b:
            lines.append(f"| the bundle's own V ({name}): share left / still detected | "
                         f"{a['removal_left']:.3f} / {a['detection_rate']:.3f} | "
                         f"{b['removal_left']:.3f} / {b['detection_rate']:.3f} |")
    if old_rem:
        for name in ("static", "deepstamp"):
            o, n = old_rem.get(name, {}), new_rem.get(name, {})
            lines.append(f"| V′ {steps} steps, {name}: share left / gain | "
                         f"{fmt(o.get('removal_left'), '{:.3f}')} / "
                         f"{fmt(o.get('removal_gain'), '{:+.2f} dB')} | "
                         f"{fmt(n.get('removal_left'), '{:.3f}')} / "
                         f"{fmt(n.get('removal_gain'), '{:+.2f} dB')} |")
    old_acc, new_acc = prev.get("accuracy", {}), m["fit_report"].get("accuracy", {})
    if old_acc and new_acc:

        def drops(acc: dict) -> str:
            return " / ".join(fmt(100 * (acc["clean"] - acc[s]) if s in acc else None,
                                  "{:+.2f}") for s in ("static", "deepstamp"))

        lines.append(f"| F′ accuracy drop, static / DeepStamp ({m['test_images']} clean test "
                     f"images, points) | {drops(old_acc)} | {drops(new_acc)} |")
    def own(path: str) -> str:  # the previous bundle's own metrics.json: its training run's
        return " (its own training run's table)" if path.endswith("metrics.json") else ""

    source = (f" The previous W's V′ rows: `{prev['removal_source']}`"
              f"{own(prev['removal_source'])} (V′ as in the table: same width, batch, "
              "learning rate, initial weights and batches)."
              if old_rem else " The previous W was not put through V′ here.")
    if old_acc:
        source += (f" Its F′ accuracies: `{prev['accuracy_source']}`"
                   f"{own(prev['accuracy_source'])} (F′ as in the table: same architecture, "
                   "steps, initial weights and batches).")
    return ("\n## The previous shipped W against this one\n"
            f"`--previous {prev['bundle']}`: the earlier bundle measured by this script on the "
            "same held-out sets." + source + "\n\n" + "\n".join(lines) + "\n")


def write_card(m: dict, out: Path, recipe: Mapping[str, Any],
               default_data: Mapping[str, Any]) -> None:
    """Write ``out/MODEL_CARD.md`` (:func:`render_card`)."""
    (out / "MODEL_CARD.md").write_text(render_card(m, out, recipe, default_data))


def render_card(m: dict, out: Path, recipe: Mapping[str, Any],
                default_data: Mapping[str, Any]) -> str:
    """``MODEL_CARD.md`` from the measured ``metrics.json`` (no number that was not measured).

    Args:
        m: the run's ``metrics.json``.
        out: the bundle's folder (its ``config.json``, weights and the studies' JSONs that
            ``card``'s sections read).
        recipe: the training script's shipped recipe: the keys the card lists, and, for a
            ``shipped`` profile, what a bundle that predates it is compared with.
        default_data: the data settings of metrics that predate ``m["data"]``.
    """
    shipped_recipe = recipe
    cal, fin, rep = m["calibration"], m["final_training"], m["fit_report"]
    cfg = json.loads((out / "config.json").read_text())  # the bundle's own config
    recipe = {k: cfg[k] for k in m.get("recipe", shipped_recipe) if k in cfg and k != "device"}
    rows = {(r["label"], r["metric"]): r["value"] for r in m["test_rows"]}
    lo, hi = m["fpr_ci95"]
    stampers = ("static", "opacity", "displacement", "deepstamp")
    test_set = next(iter(m["per_set"]))
    quality = [f"| {m['test_images']} test images | S | O | D | DeepStamp |",
               "|---|---|---|---|---|"]
    for metric, fmt in (("psnr_vs_static", "{:.2f} dB"), ("ssim_vs_static", "{:.3f}"),
                        ("contrast", "{:.3f}"), ("contrast_vs_static", "{:.2f}×")):
        cells = [fmt.format(rows[(s, metric)]) if (s, metric) in rows else "–" for s in stampers]
        quality.append(f"| {metric} | " + " | ".join(cells) + " |")
    sets = ["| held-out set | images | detected (marked) | jpeg_75 | jpeg_50 | resize_0.5 | "
            "blur_1.0 | false positives | PSNR marked vs clean | SSIM |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in m["per_set"].items():
        att = r["detection_rate_attacked"]
        sets.append(f"| {name} | {r['images']} | {r['detection_rate_marked']:.3f} | "
                    + " | ".join(f"{att[k]:.2f}" for k in
                                 ("jpeg_75", "jpeg_50", "resize_0.5", "blur_1.0"))
                    + f" | {r['false_positives']} | {r['psnr_marked_vs_clean']:.2f} dB | "
                      f"{r['ssim_marked_vs_clean']:.3f} |")
    # the caveat is written from the measured numbers, so --card-only keeps it
    contrasts = {s: rows[(s, "contrast")] for s in stampers if (s, "contrast") in rows}
    reading = removal_reading(rep, contrasts, in_training_removed=fin.get("loss_v"))
    ratio = rows.get(("deepstamp", "contrast_vs_static"))
    profile = m.get("profile", "shipped")
    command = m.get("command", "python scripts/train_shipped_visible_gan.py --out "
                                "outputs/visible_gan")
    prepared = (m.get("data") or {}).get("dataset") == "prepared"
    limits = [f"- {m['clean_trials']} clean trials bound the FPR only to {hi:.3g} (95%); the "
              f"calibrated target is {cal['fpr_target']:g}. The calibration images are "
              "disjoint from the measured ones.",
              "- A mark given with `--mark` is recalibrated on an offline null set (procedural "
              "images + crops of the bundled photos), not on the user's own images; "
              "`with_mark(mark, images)` takes the user's clean images when they exist."]
    if not prepared:
        limits.append(f"- F and F′ are {rep.get('classifier')} on synthetic classes, not the "
                      "seed's AlexNet / VGG16 / ResNet50 on CIFAR-10 (`--profile full "
                      "--device cuda` trains those; never run here: no GPU, no CIFAR-10 "
                      "offline).")
        table = out / "architecture_table.json"
        if table.is_file():
            rows = json.loads(table.read_text())["rows"]
            narrowed = ", ".join(f"{r['network']} ×{r['width_multiplier']:g}" for r in rows)
            limits.append(f"- The seed's networks ran here only narrowed ({narrowed}) on these "
                          "classes (the section on the seed's Table I with its three "
                          "networks); at their published widths, on CIFAR-10, never.")
    limits.append(f"- W was trained for {fit_steps(fin)} GMAN steps on "
                  f"{m.get('device', 'cpu')}.")
    # a bundle older than the script's recipe says so (``--card-only`` after a recipe change)
    fields = VisibleGanConfig.model_fields  # a key older bundles lack had its default
    had = {k: cfg.get(k, fields[k].default if k in fields else None) for k in shipped_recipe}
    stale = {k: v for k, v in shipped_recipe.items() if profile == "shipped" and had[k] != v}
    if stale:
        limits.append("- This W predates the script's current recipe, which sets "
                      + ", ".join(f"`{k}` {json.dumps(v)} (this W: {json.dumps(had[k])})"
                                  for k, v in stale.items())
                      + f"; retraining it is `{command}`, then copying the bundle and card "
                        "as the module docstring says.")
    beaten = {name: r["shipped_v"]["detection_rate"] for name, r in m["per_set"].items()
              if "shipped_v" in r and r["shipped_v"]["detection_rate"] < 0.5}
    if beaten:
        held = {name: r["shipped_v"]["detection_rate"] for name, r in m["per_set"].items()
                if "shipped_v" in r and name not in beaten}
        limits.append("- The bundle's own V (shipped, so public) defeats the detector on "
                      + ", ".join(f"{k} (detected {v:.3f} after it)" for k, v in beaten.items())
                      + ": whoever has these files can strip the mark from such images "
                        "without training anything"
                      + ("; it does not on " + ", ".join(f"{k} ({v:.3f})"
                                                         for k, v in held.items())
                         if held else "") + ".")
    if ratio is not None and ratio < FADED:
        limits.append(f"- DeepStamp's mark is {ratio:.2f}× the static blend's contrast (below "
                      f"{FADED:g}×): part of any removal resistance may be fading.")
    # the studies' sections, each "" when its JSON is absent
    studies = "".join([previous_section(m, cfg, shipped_recipe), seed_section(out),
                       study_section(out, m), accuracy_section(out), architecture_section(out),
                       architecture_seeds_section(out),
                       earlier_section(out), residual_section(out),
                       shipping_section(m, out)])
    text = f"""# visible_gan — shipped DeepStamp W (seed 003)

Visible watermarking that keeps a dataset useful (DeepStamp): W (4 conv layers, image ⊕
RGBA mark → synthesized mark) trained as a GMAN generator against a frozen classifier F,
a removal autoencoder V and a discriminator D (see `components/methods/visible_gan/`).
Written by `{command}` (profile `{profile}`); every number below was measured by that run
unless a section names another command.

## Training
- Data: {data_line(m, default_data)}
- Recipe (the bundle's own): `{json.dumps(recipe)}`; GMAN loss weights 1 / 1 / 1 (the
  seed's eq. 1), ℒ_v = the share of the mark V removes (`losses.removal_loss`);
  visibility hinge ℒ_vis (not in the seed, `losses.visibility_loss`) weight
  {cfg.get("lambda_visibility", 0):g}, floor {cfg.get("visibility_floor", 0):g} × the static
  blend's contrast.
  {fit_steps(fin)} GMAN steps; {m["fit_seconds"]:.0f} s wall in all (F, GMAN, calibration and the
  table's {len(rep.get("accuracy", {}))} F′ + {len(rep.get("removal", {})) + 1} V′ trainings) on
  {m.get("device", "cpu")} (a shared 2-core CPU with 1 torch thread where `cpu`).
- F after its training: validation accuracy {fin["f_val_accuracy"]:.3f} (chance 0.10). Last
  GMAN losses: ℒ_f {fin["loss_f"]:.4f}, ℒ_v {fin["loss_v"]:.4f}, ℒ_d {fin["loss_d"]:.4f},
  ℒ_vis {fin.get("loss_vis", float("nan")):.4f}; V's own loss {fin["loss_v_attack"]:.4f}, D's
  {fin["loss_d_disc"]:.4f}.
- Detector calibration: {cal["n_scores"]} clean scores ({cal["n_images"]} images: the val split
  and 128 offline null images (procedural + photo crops), at the {cfg["detect_size"]}² detection
  view, with flips, rotations, half-size views and crops); threshold NCC
  {cal["threshold_statistic"]:.4f} at fpr = {cal["fpr_target"]:g}.
- Weights (W, V, D, F and the built-in mark): {weights_mib(out):.2f} MiB.

## Measured on held-out images
`{test_set}`: the test split; `fresh_128`: 64 fresh null images (procedural + photo crops,
seed 2024) at 128². `resize_0.5` of a 32² image is 16², the smallest side the detector takes
(it matches at its {cfg["detect_size"]}² view, so resizing the image resizes the template).

{chr(10).join(sets)}

- FPR on all clean images: {m["false_positives"]}/{m["clean_trials"]} (95% Clopper–Pearson CI
  {lo:.3g}–{hi:.3g}); the calibrated target is {cal["fpr_target"]:g}.
{shipped_v_line(m)}
{chr(10).join(quality)}

### The seed's table in shape (test split)
F′ (a fresh network of each listed architecture, same initial weights and batches for every
column) trained for {rep.get("utility_steps")} steps on the set marked by each stamper, tested
on the clean test images (chance 10 %); V′ (V's architecture, same initial weights and
batches) trained for {rep.get("removal_steps")} steps per stamper to restore the clean image,
judged on the test split; the V′ steps table is the same V′ judged on the way.

{seed_table_markdown(rep, reading=False)}
{reading}
{studies}
## Known limitations (measured)
{chr(10).join(limits)}
"""
    return text


def shipped_v_line(m: dict) -> str:
    """What the bundle's own V (shipped with it) does to the marked held-out images."""
    parts = [f"{name}: leaves {r['shipped_v']['removal_left']:.3f} of the mark's squared "
             f"error, PSNR {r['shipped_v']['psnr_before']:.2f} → "
             f"{r['shipped_v']['psnr_after']:.2f} dB, still detected "
             f"{r['shipped_v']['detection_rate']:.3f}"
             for name, r in m["per_set"].items() if "shipped_v" in r]
    if not parts:
        return ""
    return ("- The bundle's own V, which ships in `weights.safetensors`, as an attacker's "
            "ready-made remover (`evaluation.remove_with_v`: V on the centred square at the "
            "working size, its change up-sampled): " + "; ".join(parts) + ".\n")


#: what each entry of ``weights.safetensors`` is, and whether embedding / verifying reads it
_PARTS = (("W", "the watermarking network", True), ("mark", "the built-in RGBA mark", True),
          ("V", "the removal autoencoder (the GMAN's attacker)", False),
          ("D", "the discriminator", False), ("F", "the frozen task classifier", False))


def weights_by_part(out: Path) -> dict[str, dict[str, int]]:
    """Parameters (elements) and bytes per top-level entry of ``out/weights.safetensors``
    (``W``, ``V``, ``D``, ``F``, ``mark``), read from the file's header."""
    from safetensors import safe_open

    parts: dict[str, dict[str, int]] = {}
    with safe_open(str(out / "weights.safetensors"), framework="pt") as f:
        for key in f.keys():
            t = f.get_slice(key)
            n = 1
            for d in t.get_shape():
                n *= int(d)
            part = parts.setdefault(key.split(".")[0], {"elements": 0, "bytes": 0})
            part["elements"] += n
            part["bytes"] += n * _DTYPE_BYTES[t.get_dtype()]
    return parts


_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
                "I8": 1, "U8": 1, "BOOL": 1}


def shipping_section(m: dict, out: Path) -> str:
    """What the bundle holds, what stamping and verifying read, and why V ships (vg10's
    decision, with this run's figures: V against a V′ anyone with W can train)."""
    parts = weights_by_part(out)
    total = sum(p["bytes"] for p in parts.values())
    rows = ["| entry | what it is | parameters | MiB | share | read by embed / verify / "
            "`brand` |", "|---|---|---|---|---|---|"]
    for key, what, used in _PARTS:
        if key in parts:
            p = parts[key]
            rows.append(f"| {key} | {what} | {p['elements']:,} | {p['bytes'] / 2**20:.3f} | "
                        f"{100 * p['bytes'] / total:.0f} % | {'yes' if used else 'no'} |")
    rep = m["fit_report"]
    v_prime = rep.get("removal", {}).get("deepstamp")
    shipped = {name: r["shipped_v"] for name, r in m["per_set"].items() if "shipped_v" in r}
    if "V" not in parts or v_prime is None or not shipped:
        return ""
    test_set = next(iter(shipped))
    curve = sorted((c["steps"], c["removal_left"]) for c in rep.get("removal_curve", [])
                   if c["stamper"] == "deepstamp")
    matched = next((c for c in curve if c[1] <= shipped[test_set]["removal_left"]), None)
    v_mib = parts["V"]["bytes"] / 2**20
    others = "; ".join(f"{k}: leaves {v['removal_left']:.3f}, detected {v['detection_rate']:.3f}"
                       for k, v in shipped.items() if k != test_set)
    early = (f"; V′ already leaves {matched[1]:.3f} after {matched[0]} steps (the V′ steps "
             "table)" if matched else "")
    return f"""
## What ships, and why V does
`weights.safetensors` ({total / 2**20:.2f} MiB) holds five entries; embedding, verifying and
`brand` / `brand-verify` read W (embedding), the mark (both) and the detector's calibration
(`state.json`: its clean scores and threshold; verifying) only. F, V and D are W's training
partners and ship with it.

{chr(10).join(rows)}

**Decision (session vg10): V keeps shipping, in the bundle as W does.** V is the attacker's
tool of the evaluation, not something a user needs at run time; the question is only whether
withholding it would protect marked images. It would not, from this card's numbers:
- W has to ship (stamping works right after install), and with W anyone can mark images of
  their own and train a remover of V's shape on the (marked, clean) pairs. The table's V′
  (V's architecture, {rep.get("removal_steps")} steps on the {m["train_images"]} training
  images marked by this W, trained within this run's {m["fit_seconds"]:.0f} s on
  {m.get("device", "cpu")}) leaves {v_prime["removal_left"]:.3f} of DeepStamp's mark on
  {test_set}, the shipped V {shipped[test_set]["removal_left"]:.3f}{early}. (V′'s detection
  rate was not measured; the share left is the figure both have.) So V gives an attacker
  no capability the public W does not, and keeping it back would only make the
  public-files figures look better than what an attacker gets with a CPU and W.
- Shipping it keeps the threat figures reproducible by anyone with the package: the
  shipped-V line above, the known limitation below and the benchmark's white-box removal
  row (`VisibleGan.public_remover`) all run it.
- It costs {v_mib:.3f} MiB ({100 * parts["V"]["bytes"] / total:.0f} % of the file) and
  nothing at run time beyond loading it.

What V does at other sizes ({others or "no other set measured"}) stays in the limitations:
the mark's protection has to be its detection after removal, not V's secrecy.
"""


def fit_steps(final: dict) -> str:
    return f"{int(final['steps_done'])}"


def weights_mib(out: Path) -> float:
    return (out / "weights.safetensors").stat().st_size / 2**20

