"""The measured sections of visible_gan's model card, each read from a JSON a study wrote.

``model_card`` writes the card from ``metrics.json``; the sections here read the other files
shipped beside the bundle (``seed_spread.json``, ``removal_study.json``,
``accuracy_study.json``, ``architecture_table.json``, ``architecture_seeds.json``,
``curve_tiny.md``, ``residual_*.json``)
and return ``""`` when theirs is absent. Every number is read from those files; the readings
(interval above / below / across 0) are computed from them, never written in.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

#: the seed's Table I (DeepStamp, seed 003), blend 0.5, accuracy in % on CIFAR-10's 10,000
#: test images: what the paper reports, quoted for comparison (not measured here)
SEED_TABLE = {"source": "the seed's Table I, CIFAR-10, blend 0.5",
              "test_images": 10000,
              "rows": [{"network": "AlexNet", "baseline": 82.74, "static": 78.50,
                        "deepstamp": 79.59},
                       {"network": "VGG16", "baseline": 94.00, "static": 92.71,
                        "deepstamp": 92.74},
                       {"network": "ResNet50", "baseline": 95.37, "static": 94.88,
                        "deepstamp": 94.18}]}


def seed_section(out: Path) -> str:
    """The removal judgement over seeds (``seed_spread.json`` from visible_gan_seed_spread.py)."""
    path = out / "seed_spread.json"
    if not path.is_file():
        return ""
    s = json.loads(path.read_text())
    lines = [f"| figure (seeds {', '.join(map(str, s['seeds']))}) | seeds | mean | "
             "95 % interval | min | max |", "|---|---|---|---|---|---|"]
    for r in s["judged"]:
        lines.append(f"| {r['metric']}/{r['label']} | {r['n_seeds']} | {r['mean']:.3f} | "
                     f"{r['ci_low']:.3f} – {r['ci_high']:.3f} | {r['min']:.3f} | "
                     f"{r['max']:.3f} |")
    # what the interval says about the removal claim, from the numbers
    by = {(r["label"], r["metric"]): r for r in s["judged"]}
    reading = []
    for base in ("static", "opacity", "displacement"):
        r = by.get(("deepstamp", f"removal_left_vs_{base}"))
        if r is None:
            continue
        if r["ci_low"] > 0:
            verdict = "V′ leaves more of DeepStamp's mark (interval above 0)"
        elif r["ci_high"] < 0:
            verdict = "V′ leaves less of DeepStamp's mark (interval below 0)"
        else:
            verdict = "the interval includes 0: no difference established"
        reading.append(f"against {base}: {verdict}, {sum(v > 0 for v in r['values'])} of "
                       f"{len(r['values'])} seeds above 0")
    note = f" {s['note']}" if s.get("note") else ""
    command = s.get("command", "OMP_NUM_THREADS=1 python scripts/visible_gan_seed_spread.py "
                               f"--seeds {','.join(map(str, s['seeds']))}")
    return ("\n## The removal judgement over seeds (tiny recipe)\n"
            f"`{command}` (then `--summarize`; `seed_spread.json` here): "
            "the tiny profile's W recipe "
            f"`{json.dumps(s['recipe'])}` (F′ skipped) on the tiny profile's procedural classes, "
            "one W and one V′ per marking and seed, judged on the 300 test images; what a seed "
            "changes: F, W, V, D and every V′'s initial weights and batches. Student-t 95 % "
            f"interval of the mean over {len(s['seeds'])} seeds. Wall per seed: "
            f"{', '.join(f'{x:.0f} s' for x in s['seconds'])} (shared 2-core CPU, 1 thread)."
            f"{note}\n\n" + "\n".join(lines) + "\n\n"
            + ("Share of the mark left, DeepStamp − baseline: " + "; ".join(reading) + ".\n"
               if reading else ""))


def _interval(r: dict | None) -> str:
    if r is None:
        return "–"
    return f"{r['mean']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"


def _verdict(r: dict | None, what: str) -> str:
    if r is None:
        return f"{what}: not measured"
    side = ("above 0" if r["ci_low"] > 0 else "below 0" if r["ci_high"] < 0
            else "includes 0: no difference established")
    return (f"{what} {_interval(r)} over {r['n_seeds']} seeds, interval {side} "
            f"({sum(v > 0 for v in r['values'])} of {len(r['values'])} seeds above 0)")


def study_section(out: Path, m: dict) -> str:
    """Why V′ removes W's mark and what the loss's levers change (``removal_study.json``).

    Written by hand from the outputs of ``visible_gan_removability.py`` (this bundle) and
    ``visible_gan_seed_spread.py --summarize --baseline`` (one summary per lever); every
    number is read from there, the readings from the intervals.
    """
    path = out / "removal_study.json"
    if not path.is_file():
        return ""
    st = json.loads(path.read_text())
    rem = st["removability"]
    removal = m["fit_report"].get("removal", {})
    rows = ["| marking | best local linear inverse leaves | V′ (2400 steps) leaves |",
            "|---|---|---|"]
    for name, left in rem["local_linear_left"].items():
        v = removal.get(name, {}).get("removal_left")
        rows.append(f"| {name} | {left:.3f} | {'–' if v is None else f'{v:.3f}'} |")
    text = ("\n## Why V′ removes W's mark: what part of it a simple attacker inverts\n"
            f"`{rem['command']}` (this bundle; `components/methods/visible_gan/removability.py`): "
            "on the tiny profile's procedural classes, the best per-pixel linear filter on the "
            "3×3 neighbourhood of the marked image, fitted by least squares on the 1400 "
            "training pairs, judged on the 300 test images (share of the mark's squared error "
            "it leaves), beside V′'s share left from the table above.\n\n"
            + "\n".join(rows) + "\n\n"
            f"- Of W's change against the static blend, {rem['image_dependent_share']:.2f} of its "
            "squared norm varies from image to image (the rest is one fixed pattern).\n"
            "- Where W varies per image is where the linear inverse fails: correlation over the "
            f"mark's square {rem['corr_variation_vs_linear_left']:.2f}.\n")
    lines = ["| lever (`--set`) | seeds | DeepStamp left | − baseline W, same seed | "
             "− static | contrast vs static | linear inverse leaves | image-dependent share |",
             "|---|---|---|---|---|---|---|---|"]
    readings = []
    for lever in st.get("levers", []):
        by = {(r["label"], r["metric"]): r for r in lever["summary"]["judged"]}

        def mean(key: tuple[str, str], by: dict = by,
                 n: int = len(lever["summary"]["seeds"])) -> str:
            if key not in by:
                return "–"
            fewer = "" if by[key]["n_seeds"] == n else f" ({by[key]['n_seeds']} seeds)"
            return f"{by[key]['mean']:.3f}{fewer}"

        lines.append(
            f"| {lever['name']} (`{' '.join(lever['sets']) or 'none'}`) | "
            f"{', '.join(map(str, lever['summary']['seeds']))} | "
            f"{_interval(by.get(('deepstamp', 'removal_left')))} | "
            f"{_interval(by.get(('deepstamp', 'removal_left_vs_baseline')))} | "
            f"{_interval(by.get(('deepstamp', 'removal_left_vs_static')))} | "
            f"{mean(('deepstamp', 'contrast_vs_static'))} | "
            f"{mean(('deepstamp', 'local_linear_left'))} | "
            f"{mean(('deepstamp', 'image_dependent_share'))} |")
        readings.append(f"- {lever['name']}: "
                        + _verdict(by.get(("deepstamp", "removal_left_vs_static")),
                                   "share left − static")
                        + ("; " + _verdict(by.get(("deepstamp", "removal_left_vs_baseline")),
                                           "− baseline W") if lever["sets"] else "") + ".")
    if lines[2:]:
        text += ("\n### The loss's levers, each over seeds (tiny recipe)\n"
                 f"{st['levers_note']}\n\nCells: mean [Student-t 95 % interval] over the "
                 "seeds.\n\n" + "\n".join(lines) + "\n\n" + "\n".join(readings) + "\n")
    corr = st.get("corr_with_removal_left_vs_static", {})
    if corr:
        text += (f"\nOver the {len(st['per_w'])} W's of these runs (seeds × recipes), the "
                 "correlation of DeepStamp's share left − static's with what the linear "
                 f"inverse leaves of W's mark: {corr['local_linear_left']:.2f}; with W's "
                 f"image-dependent share: {corr['image_dependent_share']:.2f}.\n")
    return text


def earlier_section(out: Path) -> str:
    """``curve_tiny.md``: an earlier measurement shipped beside the bundle, kept verbatim
    (it names its own command; it is not this run's)."""
    path = out / "curve_tiny.md"
    return "\n" + path.read_text().rstrip("\n") + "\n" if path.is_file() else ""


def residual_section(out: Path) -> str:
    """W's residual figures and the numbers ``visible_gan_residual_figure.py`` printed."""
    text = ("\n## W's residual\n`residual_before.png` (the previous shipped W) and "
            "`residual_after.png` (this W): `python scripts/visible_gan_residual_figure.py "
            "BUNDLE OUT.png > OUT.json` on four skimage photos at 256²; "
            "|DeepStamp − static| ×8 under each stamped photo.\n")
    rows = []
    for name in ("before", "after"):
        path = out / f"residual_{name}.json"
        if path.is_file():
            r = json.loads(path.read_text())
            rows.append(f"| {name} | {r['mean_abs_residual_on_mark']:.4f} | "
                        f"{r['mean_abs_residual_rest_of_square']:.5f} | "
                        f"{r['mean_abs_residual_square_edge_2px']:.5f} |")
    if rows:
        text += ("\n| W | mean abs residual on the logo | rest of the square | square's 2-px "
                 "edge (the old box) |\n|---|---|---|---|\n" + "\n".join(rows) + "\n")
    return text



def _points(r: dict | None) -> str:
    """A fraction's mean [interval] in percentage points."""
    if r is None:
        return "–"
    return (f"{100 * r['mean']:+.2f} [{100 * r['ci_low']:+.2f}, "
            f"{100 * r['ci_high']:+.2f}]")


def accuracy_section(out: Path) -> str:
    """Accuracy cost over seeds (``accuracy_study.json``): what the seed reports, what is
    measured here and how precisely, each recipe's drops and the paired recipe difference.

    ``accuracy_study.json``: ``command``, ``note``, ``rule`` (the decision rule, stated
    before the runs), ``test_images``, ``seed_reports`` (the seed's Table I rows:
    ``network``, ``baseline``, ``static``, ``deepstamp``, in %) and ``recipes`` (``name``,
    ``sets``, ``summary``: ``visible_gan_seed_spread.py --summarize`` output, the lever's
    with ``--baseline`` the first recipe's folder).
    """
    path = out / "accuracy_study.json"
    if not path.is_file():
        return ""
    st = json.loads(path.read_text())
    n_test = st["test_images"]
    seed = st["seed_reports"]
    ds = [r["baseline"] - r["deepstamp"] for r in seed["rows"]]
    seed_line = ", ".join(f"{r['network']} {r['baseline'] - r['deepstamp']:.2f} (static "
                          f"{r['baseline'] - r['static']:.2f})" for r in seed["rows"])
    text = ("\n## Accuracy cost over seeds (tiny recipe)\n"
            f"What the seed reports ({seed['source']}): DeepStamp's drop in points, "
            f"{seed_line}: {min(ds):.2f}–{max(ds):.2f} points, on "
            f"{seed['test_images']} test images.\n\n"
            f"What is measured here: `{st['command']}`. {st['note']}\n\n")
    lines = ["| recipe (`--set`) | seeds | clean F′ (%) | drop, DeepStamp | drop, static | "
             "drop, opacity | drop, displacement | SD of the DeepStamp drop over seeds |",
             "|---|---|---|---|---|---|---|---|"]
    paired = []
    clean_acc = None
    for rec in st["recipes"]:
        by = {(r["label"], r["metric"]): r for r in rec["summary"]["judged"]}
        clean = by[("clean", "accuracy")]
        clean_acc = clean["mean"]
        drop = by[("deepstamp", "accuracy_drop")]
        values = drop["values"]
        sd = (math.sqrt(sum((v - drop["mean"]) ** 2 for v in values) / (len(values) - 1))
              if len(values) > 1 else float("nan"))
        lines.append(f"| {rec['name']} (`{' '.join(rec['sets']) or 'none'}`) | "
                     f"{', '.join(map(str, rec['summary']['seeds']))} | "
                     f"{100 * clean['mean']:.2f} | {_points(drop)} | "
                     f"{_points(by.get(('static', 'accuracy_drop')))} | "
                     f"{_points(by.get(('opacity', 'accuracy_drop')))} | "
                     f"{_points(by.get(('displacement', 'accuracy_drop')))} | "
                     f"{100 * sd:.2f} |")
        diff = by.get(("deepstamp", "accuracy_drop_vs_baseline"))
        if diff is not None:
            side = ("lies wholly above 0: the extra cost is established" if diff["ci_low"] > 0
                    else "lies wholly below 0: the cost is lower" if diff["ci_high"] < 0
                    else "includes 0: no difference established")
            paired.append(
                f"- {rec['name']} − {st['recipes'][0]['name']}, DeepStamp's drop, paired by "
                f"seed (the same clean F′): {_points(diff)} points over {diff['n_seeds']} "
                f"seeds, per seed {', '.join(f'{100 * v:+.2f}' for v in diff['values'])}; "
                f"the interval {side}; the largest extra cost these runs do not exclude: "
                f"{100 * diff['ci_high']:.2f} points.")
    se = 100 * math.sqrt(clean_acc * (1 - clean_acc) / n_test)
    text += (f"At {n_test} test images one accuracy's binomial SE is "
             f"√(p(1−p)/{n_test}) = {se:.2f} points at the clean F′'s p = "
             f"{100 * clean_acc:.2f} %; a drop (the difference of two accuracies) has SE up to "
             f"√2 × that = {math.sqrt(2) * se:.2f} points when the two F′ err on different "
             "images (less when they err on the same ones: same initial weights and batches). "
             f"The seed's largest drop ({max(ds):.2f} points) is "
             f"{max(ds) / (math.sqrt(2) * se):.1f} × that SE: a single run here cannot "
             "resolve it; only the mean over seeds, with its interval, is read.\n\n"
             "Cells: mean [Student-t 95 % interval] over the seeds, in points (clean − marked "
             "accuracy of F′ on the clean test images).\n\n" + "\n".join(lines) + "\n\n")
    if paired:
        text += f"Rule (stated before the runs): {st['rule']}\n\n" + "\n".join(paired) + "\n"
    return text


#: the architecture table's column order and headings
_TABLE_MARKINGS = (("clean", "Clean"), ("static", "S"), ("opacity", "O"),
                   ("displacement", "D"), ("deepstamp", "DeepStamp"))
_SEED_NAMES = {"alexnet": "AlexNet", "vgg16": "VGG16", "resnet50": "ResNet50"}


def architecture_section(out: Path) -> str:
    """The seed's Table I with its three networks at CPU size (``architecture_table.json``
    from ``scripts/visible_gan_architecture_table.py``), the seed's own rows beside it.

    ``architecture_table.json``: ``command``, ``data``, ``train_images``, ``test_images``,
    ``utility_steps``, ``batch_size``, ``classifier_lr``, ``threads``, ``wall_seconds``,
    ``complete``, ``seed_reports`` (as in ``accuracy_study.json``) and ``rows`` (``network``,
    ``width_multiplier``, ``parameters``, ``cells``: marking → ``correct``, ``n``,
    ``accuracy``, ``ci95``, ``seconds``, ``load_1min``; ``drops``: marking → ``drop``,
    ``se``, ``clean_only``, ``marked_only``).
    """
    path = out / "architecture_table.json"
    if not path.is_file():
        return ""
    t = json.loads(path.read_text())
    rows = [r for r in t["rows"] if r["cells"]]
    if not rows:
        return ""
    cells = [c for r in rows for c in r["cells"].values()]
    d = t["data"]
    loads = [c["load_1min"] for c in cells]
    widths = ", ".join(f"{_SEED_NAMES.get(r['network'], r['network'])} ×{r['width_multiplier']:g}"
                       f" ({r['parameters']:,} parameters)" for r in rows)
    status = ("" if t["complete"] else
              " **The run was cut short: only the cells below were measured.**")
    text = ("\n## The seed's Table I with its three networks (CPU size, procedural classes)\n"
            f"`{t['command']}`: each network of the seed's table (`nets.build_classifier`) "
            f"trained as the pipeline's F′ (`evaluation.train_f_prime`: {t['utility_steps']} "
            f"steps, batch {t['batch_size']}, Adam lr {t['classifier_lr']:g}, the same initial "
            "weights and batches for every marking of a network) on the "
            f"{t['train_images']} training images of `{d['dataset']}` ({d['images_per_class']} "
            f"images a class at {d['size']}², seed {d['seed']}) marked by each "
            f"stamper (DeepStamp: this bundle's W), tested on the {t['test_images']} clean test "
            f"images (chance 10 %). **Narrowed to fit a CPU:** {widths}: the published depth "
            "and layer shapes, every channel count × the multiplier (AlexNet's published "
            "widths are its `width` 16). "
            f"{len(cells)} F′ trainings, {t['wall_seconds']:.0f} s wall on {t['threads']} "
            f"thread(s) of a shared 2-core CPU (1-min load {min(loads):.1f}–{max(loads):.1f})."
            f"{status}\n\n" + _machine_note(t, out) +
            "**These are procedural classes at 32², not CIFAR-10**, with narrowed networks "
            "trained for minutes: the table shows the code path of the seed's Table I run "
            "end to end and what the marks cost on this data, not a reproduction of the "
            "seed's figures.\n\n")
    head = ["| network (width) | " + " | ".join(h for _, h in _TABLE_MARKINGS) + " |",
            "|---|" + "---|" * len(_TABLE_MARKINGS)]
    acc, drops = list(head), ["| network | " + " | ".join(
        h for _, h in _TABLE_MARKINGS[1:]) + " |", "|---|" + "---|" * 4]
    for r in rows:
        name = f"{_SEED_NAMES.get(r['network'], r['network'])} (×{r['width_multiplier']:g})"
        acc.append(f"| {name} | " + " | ".join(
            f"{100 * c['accuracy']:.2f} [{100 * c['ci95'][0]:.1f}, {100 * c['ci95'][1]:.1f}]"
            if (c := r["cells"].get(k)) else "–" for k, _ in _TABLE_MARKINGS) + " |")
        drops.append(f"| {name} | " + " | ".join(
            f"{100 * d['drop']:+.2f} ± {100 * d['se']:.2f} ({d['clean_only']}/"
            f"{d['marked_only']})" if (d := r["drops"].get(k)) else "–"
            for k, _ in _TABLE_MARKINGS[1:]) + " |")
    seed = t["seed_reports"]
    seed_rows = ["| network | Baseline | S | DeepStamp | drop, S | drop, DeepStamp |",
                 "|---|---|---|---|---|---|"]
    seed_rows += [f"| {r['network']} | {r['baseline']:.2f} | {r['static']:.2f} | "
                  f"{r['deepstamp']:.2f} | {r['baseline'] - r['static']:+.2f} | "
                  f"{r['baseline'] - r['deepstamp']:+.2f} |" for r in seed["rows"]]
    text += ("Accuracy (%) on the clean test images [95 % Clopper–Pearson interval]:\n\n"
             + "\n".join(acc) + "\n\nDrop against the same network trained on clean images "
             "(points; paired over the test images: mean ± SE; in brackets the images only "
             "the clean-trained / only the marked-trained F′ got right):\n\n"
             + "\n".join(drops) + f"\n\nThe seed's Table I beside it ({seed['source']}, "
             f"{seed['test_images']:,} test images; quoted, not measured here):\n\n"
             + "\n".join(seed_rows) + "\n\n" + _architecture_reading(rows, seed["rows"]) + "\n")
    return text


def _environment(env: dict | None) -> str:
    if not env:
        return "not recorded"
    return (f"torch {env['torch']}, CPU kernel path {env['cpu_capability']}, {env['cpu']}, "
            f"Python {env['python']}")


def _machine_note(shipped: dict, out: Path) -> str:
    """Where ``architecture_seeds.json`` reran F′ seed 0 on another machine: the seed-0
    counts of both, cell by cell (the cells reproduce bit for bit on one machine only)."""
    path = out / "architecture_seeds.json"
    if not path.is_file():
        return ""
    seeds = json.loads(path.read_text())
    if seeds.get("environment") == shipped.get("environment"):
        return ""  # one machine: the seed-0 rows are the same computation
    here = {(r["network"], r["width_multiplier"]): r for r in seeds["rows"]
            if r["f_seed"] == 0}
    pairs = []  # (label, earlier machine's count, this one's)
    for r in shipped["rows"]:
        other = here.get((r["network"], r["width_multiplier"]))
        if other is not None:
            name = _SEED_NAMES.get(r["network"], r["network"])
            pairs += [(f"{name} {h}", r["cells"][k]["correct"], other["cells"][k]["correct"])
                      for k, h in _TABLE_MARKINGS if k in r["cells"] and k in other["cells"]]
    if not pairs:
        return ""
    differ = sum(a != b for _, a, b in pairs)
    return ("**Machine.** These cells were measured on an earlier machine (environment: "
            f"{_environment(shipped.get('environment'))}). The F′-seed runs of the next "
            f"section, on this machine ({_environment(seeds.get('environment'))}), reran F′ "
            f"seed 0 with the same code and data; correct of {shipped['test_images']}, "
            "earlier machine / this one: "
            + ", ".join(f"{label} {a} / {b}" for label, a, b in pairs)
            + (": the same counts.\n\n" if not differ else
               f": **this machine's seed 0 differs** in {differ} of {len(pairs)} cells. The "
               "float path (CPU, kernel path) moves F′ from its first steps, so a cell "
               "reproduces bit for bit on one machine only: this table is kept as measured, "
               "and the spread over F′ seeds is read from one machine's run alone (nothing "
               "pooled across machines).\n\n"))


def _architecture_reading(rows: list[dict], seed_rows: list[dict]) -> str:
    """What the drops say, from the numbers: per network, DeepStamp's drop and the static
    blend's against 2 SE, and DeepStamp against static; the seed's drops beside the SEs."""
    out, ses = [], []
    for r in rows:
        d, s = r["drops"].get("deepstamp"), r["drops"].get("static")
        if d is None:
            continue
        name = _SEED_NAMES.get(r["network"], r["network"])
        ses += [x["se"] for x in r["drops"].values()]

        def side(x: dict) -> str:
            if x["drop"] - 2 * x["se"] > 0:
                return "a cost (more than 2 SE above 0)"
            if x["drop"] + 2 * x["se"] < 0:
                return "a gain (more than 2 SE below 0)"
            return "within 2 SE of 0"

        part = f"{name}: DeepStamp {100 * d['drop']:+.2f} points, {side(d)}"
        if s is not None:
            part += (f"; static {100 * s['drop']:+.2f}, {side(s)}; DeepStamp − static "
                     f"{100 * (d['drop'] - s['drop']):+.2f} points")
        out.append(part + ".")
    if not out:
        return ""
    # a marked set beating the clean one beyond 2 SE: the SE (over test images) misses the
    # spread between two training runs
    gains = [f"{_SEED_NAMES.get(r['network'], r['network'])} {name} "
             f"{100 * x['drop']:+.2f} ± {100 * x['se']:.2f}"
             for r in rows for name, x in r["drops"].items() if x["drop"] + 2 * x["se"] < 0]
    if gains:
        out.append("The SE counts the sampling of test images only, not the spread between "
                   "two training runs of F′; a marked set beating the clean one by more than "
                   f"2 SE ({', '.join(gains)} points) shows that spread is larger here, so "
                   "single cells, costs included, are read as noise-limited (the accuracy "
                   "section's drops over seeds measure that spread).")
    seed_drops = [r["baseline"] - x for r in seed_rows for x in (r["static"], r["deepstamp"])]
    return ("**Reading (from the numbers above).** " + " ".join(out) + " The seed's drops "
            f"are {min(seed_drops):.2f}–{max(seed_drops):.2f} points; the paired SEs here are "
            f"{100 * min(ses):.2f}–{100 * max(ses):.2f} points, so "
            + ("even the seed's largest drop is within 2 SE of 0 here: one run can show a "
               "larger cost, not confirm the seed's."
               if max(seed_drops) < 200 * min(ses) else
               "the seed's largest drop would stand out at the smallest SE here, its "
               "smallest would not."))


#: the quantities of the spread over F′ seeds, in the order shown: (label, metric) → heading
_SPREAD_QUANTITIES = ((("clean", "accuracy"), "clean F′ accuracy"),
                      (("deepstamp", "drop"), "drop, DeepStamp"),
                      (("static", "drop"), "drop, S"),
                      (("opacity", "drop"), "drop, O"),
                      (("displacement", "drop"), "drop, D"),
                      (("deepstamp-static", "drop"), "DeepStamp − S (paired by F′ seed)"))


def architecture_seeds_section(out: Path) -> str:
    """The architecture table over F′ seeds on one machine (``architecture_seeds.json``:
    ``scripts/visible_gan_architecture_table.py --f-seed …``, then ``--summarize``).

    Besides the single-seed table's fields: ``f_seeds``, ``markings``, ``environment``,
    ``rows`` with ``f_seed``, and ``spread`` (``rule``, ``confidence``, ``networks``:
    ``network``, ``width_multiplier``, ``f_seeds``, ``quantities``: ``label``, ``metric``,
    ``n_seeds``, ``mean``, ``std``, ``ci_low``, ``ci_high``, ``values``). The shipped
    single-seed cells (``architecture_table.json``) are shown beside the spread, marked as
    from the machine that measured them; the readings apply ``spread['rule']`` to the numbers.
    """
    path = out / "architecture_seeds.json"
    if not path.is_file():
        return ""
    t = json.loads(path.read_text())
    if "spread" not in t:
        raise ValueError(f"{path}: no 'spread' (run scripts/visible_gan_architecture_table.py "
                         f"--summarize {path})")
    sp = t["spread"]
    shipped_path = out / "architecture_table.json"
    shipped = json.loads(shipped_path.read_text()) if shipped_path.is_file() else {"rows": []}
    single = {(r["network"], r["width_multiplier"]): r for r in shipped["rows"]}
    cells = [c for r in t["rows"] for c in r["cells"].values()]
    loads = [c["load_1min"] for c in cells]
    measured = {(r["network"], r["width_multiplier"]) for r in t["rows"]}
    missing = [f"{_SEED_NAMES.get(n, n)} ×{m:g}" for n, m in single if (n, m) not in measured]
    columns = ", ".join(h for k, h in _TABLE_MARKINGS if k in t["markings"])
    per_net: dict[str, list[int]] = {}
    for r in t["rows"]:
        per_net.setdefault(f"{_SEED_NAMES.get(r['network'], r['network'])}", []).append(
            r["f_seed"])
    if len({tuple(v) for v in per_net.values()}) > 1:
        over = "F′ seeds per network: " + "; ".join(
            f"{name} {', '.join(map(str, v))}" for name, v in per_net.items())
    else:
        over = f"F′ seeds {', '.join(map(str, t['f_seeds']))}"
    if t.get("runs"):
        how = (f"{len(t['runs'])} runs on one machine, merged by `--merge` (the spread is "
               "over all their rows): " + "; ".join(
                   f"`{r['command']}` ({', '.join(r['networks'])}, {r['wall_seconds']:.0f} s"
                   + ("" if r.get("complete", True) else ", cut short") + ")"
                   for r in t["runs"]))
    else:
        how = f"`{t['command']}`, then `--summarize`"
    text = ("\n## The architecture table over F′ seeds (one machine)\n"
            f"{how}: the table above's recipe ({t['utility_steps']} "
            f"steps, batch {t['batch_size']}, {t['train_images']} training / "
            f"{t['test_images']} test images), columns {columns}, repeated over {over}. "
            "An F′ seed s moves F′'s initial weights, "
            "dropout draws and batch order (`train_f_prime`'s `f_seed`: torch seed "
            "config.seed + 17 + 1000 s, batch generator config.seed + 19 + 1000 s; s = 0 is "
            "the table above's recipe); the data, the stampers' draws and so the marked images "
            "do not move. All seeds on one machine (environment: "
            f"{_environment(t.get('environment'))}): {len(cells)} F′ trainings, "
            f"{t['wall_seconds']:.0f} s wall on {t['threads']} thread(s) of a shared 2-core CPU "
            f"(1-min load {min(loads):.1f}–{max(loads):.1f})."
            + ("" if t["complete"] else
               " **The run was cut short: only the rows below were measured.**")
            + (f" Not in {'these runs' if t.get('runs') else 'this run'}: "
               f"{', '.join(missing)} (its single-seed cells above stand alone)."
               if missing else "") + "\n\n")
    head = ["| network | F′ seed | " + " | ".join(f"{h} (correct)" for k, h in _TABLE_MARKINGS
                                                 if k in t["markings"]) + " | "
            + " | ".join(f"drop, {h}" for k, h in _TABLE_MARKINGS[1:] if k in t["markings"])
            + " |"]
    head.append("|---|---|" + "---|" * (2 * len(t["markings"]) - 1))
    for r in t["rows"]:
        head.append(f"| {_SEED_NAMES.get(r['network'], r['network'])} "
                    f"(×{r['width_multiplier']:g}) | {r['f_seed']} | "
                    + " | ".join(str(r["cells"][k]["correct"]) if k in r["cells"] else "–"
                                 for k, _ in _TABLE_MARKINGS if k in t["markings"]) + " | "
                    + " | ".join(f"{100 * r['drops'][k]['drop']:+.2f}" if k in r["drops"]
                                 else "–" for k, _ in _TABLE_MARKINGS[1:]
                                 if k in t["markings"]) + " |")
    text += (f"Per F′ seed (correct of {t['test_images']}; drops in points, clean − marked):"
             "\n\n" + "\n".join(head) + "\n\n")
    level = f"{100 * sp['confidence']:g} %"
    lines = [f"| network | quantity | per F′ seed | mean | SD over seeds | Student-t {level} "
             "interval | single-seed table (earlier machine) |", "|---|---|---|---|---|---|---|"]
    readings, sds = [], []
    for net in sp["networks"]:
        name = f"{_SEED_NAMES.get(net['network'], net['network'])}"
        by = {(q["label"], q["metric"]): q for q in net["quantities"]}
        ref = single.get((net["network"], net["width_multiplier"]))
        for key, heading in _SPREAD_QUANTITIES:
            q = by.get(key)
            if q is None:
                continue
            sign = "" if key[1] == "accuracy" else "+"
            lines.append(f"| {name} (×{net['width_multiplier']:g}) | {heading} | "
                         + ", ".join(f"{100 * v:{sign}.2f}" for v in q["values"])
                         + f" | {100 * q['mean']:{sign}.2f} | {100 * q['std']:.2f} | "
                         f"[{100 * q['ci_low']:{sign}.2f}, {100 * q['ci_high']:{sign}.2f}] | "
                         f"{_single(ref, key)} |")
        part = []
        for key, word in ((("deepstamp", "drop"), "DeepStamp's drop"),
                          (("static", "drop"), "static's drop")):
            q = by.get(key)
            if q is not None:
                sds.append((f"{name} {word}", q["std"]))
                part.append(f"{word} {100 * q['mean']:+.2f} [{100 * q['ci_low']:+.2f}, "
                            f"{100 * q['ci_high']:+.2f}] "
                            + ("is distinguishable from 0 (a cost)" if q["ci_low"] > 0 else
                               "is distinguishable from 0 (a gain)" if q["ci_high"] < 0 else
                               "is not distinguishable from 0"))
        q = by.get(("deepstamp-static", "drop"))
        if q is not None:
            part.append("DeepStamp − static " + f"{100 * q['mean']:+.2f} "
                        f"[{100 * q['ci_low']:+.2f}, {100 * q['ci_high']:+.2f}]: "
                        + ("DeepStamp costs more than static" if q["ci_low"] > 0 else
                           "DeepStamp costs less than static" if q["ci_high"] < 0 else
                           "no difference established"))
        readings.append(f"{name} ({len(net['f_seeds'])} F′ seeds): " + "; ".join(part) + ".")
    text += (f"Over the F′ seeds (points; mean, SD and Student-t {level} interval of the mean; "
             "the last column is the table above's single F′ run, seed 0 on the earlier "
             "machine, for comparison only, not pooled):\n\n" + "\n".join(lines) + "\n\n")
    seed_drops = sorted(r["baseline"] - x for r in t["seed_reports"]["rows"]
                        for x in (r["static"], r["deepstamp"]))
    resolve = "; ".join(
        f"{label} SD {100 * sd:.2f}: above {sum(d < 100 * sd for d in seed_drops)} of the "
        f"seed's {len(seed_drops)} drops" for label, sd in sds)
    text += (f"Rule (stated before the runs): {sp['rule']}\n\n**Reading (from the numbers "
             "above).** " + " ".join(readings) + f" The seed's reported drops are "
             f"{seed_drops[0]:.2f}–{seed_drops[-1]:.2f} points; the SDs over F′ seeds here: "
             f"{resolve} (an SD above a reported drop: one F′ run here cannot resolve that "
             "drop).\n")
    return text


def _single(row: dict | None, key: tuple[str, str]) -> str:
    """The single-seed table's figure for a spread quantity (points), or –."""
    if row is None:
        return "–"
    label, metric = key
    if metric == "accuracy":
        c = row["cells"].get(label)
        return f"{100 * c['accuracy']:.2f}" if c else "–"
    if label == "deepstamp-static":
        d, s = row["drops"].get("deepstamp"), row["drops"].get("static")
        return f"{100 * (d['drop'] - s['drop']):+.2f}" if d and s else "–"
    d = row["drops"].get(label)
    return f"{100 * d['drop']:+.2f} ± {100 * d['se']:.2f}" if d else "–"
