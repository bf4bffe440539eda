"""Build the DeepStamp bundle that ships in ``components/pretrained/visible_gan``.

Trains ``visible_gan`` on the labelled task the repository has offline: the ten procedural
classes of ``neuralmark.components.data.labelled`` at CIFAR's 32², so F is a real
classifier (``task: labels``). The detector's null is the classes' val split plus the
offline null set (procedural images and crops of the photos bundled with scikit-image /
scikit-learn), since the shipped W stamps photos. Then measures the bundle on the held-out
test split and on fresh null images (another seed, 128²): detection of marked images,
false positives on clean ones (with the Clopper–Pearson interval), detection after JPEG /
resize / blur, PSNR of marked vs clean, and the seed's table (``fit_report``: F′ accuracy
and V′ removal per stamper). Writes the bundle, ``metrics.json`` and the measured part of
``MODEL_CARD.md`` into ``--out``.

Usage::

    python scripts/train_shipped_visible_gan.py --out outputs/visible_gan
    cd outputs/visible_gan && cp config.json weights.safetensors state.json metrics.json \\
        MODEL_CARD.md ../../components/pretrained/visible_gan/

Every sentence of the card, its removal caveat included (``evaluation.removal_reading``),
is generated from ``metrics.json`` and the bundle's ``config.json``, so
``--card-only --out components/pretrained/visible_gan`` rewrites it without losing text
(ship ``metrics.json`` with the bundle for that).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402
import yaml  # noqa: E402

from neuralmark.components.attacks.registry import build_attack  # noqa: E402
from neuralmark.components.data.labelled import (  # noqa: E402
    ProceduralClassesConfig,
    training_data,
)
from neuralmark.components.methods import build, load_bundle  # noqa: E402
from neuralmark.components.methods.base import resize_square  # noqa: E402
from neuralmark.components.methods.visible_gan import model_card  # noqa: E402
from neuralmark.components.methods.visible_gan.evaluation import (  # noqa: E402
    remove_with_v,
    seed_table_markdown,
    visible_rows,
)
from neuralmark.components.methods.visible_gan.method import default_null_images  # noqa: E402
from neuralmark.components.metrics import psnr, ssim  # noqa: E402
from neuralmark.components.stats import clopper_pearson  # noqa: E402
from neuralmark.runtime.settings import (  # noqa: E402
    DataSettings,
    available_profiles,
    load_profile,
)

ROOT = Path(__file__).resolve().parents[1]
DATA = ProceduralClassesConfig(size=32, images_per_class=200)
#: the shipped W's recipe (``--profile shipped``, the default)
RECIPE = {"working_size": 32, "detect_size": 64, "mark_resolution": 64, "w_width": 32,
          "v_width": 16, "d_width": 32, "classifier": "resnet_small", "classifier_width": 16,
          "task": "labels", "num_classes": 10, "classifier_steps": 500, "steps": 500,
          "batch_size": 32, "lr": 2e-4, "classifier_lr": 2e-3, "removal_lr": 1e-3,
          "removal_warmup_steps": 1200, "v_updates_per_step": 2,  # the tiny profile's V schedule
          "utility_steps": 400, "removal_steps": 2400,
          "removal_curve_steps": [300, 600, 1200], "calibration_scores": 2000,
          "fpr": 1e-3, "log_every": 50}
SHIPPED_DATA = {"dataset": "procedural_classes", "root": "data/classes-vg", "size": 32,
                "images_per_class": 200}
ATTACKS = [("jpeg", 75), ("jpeg", 50), ("resize", 0.5), ("blur", 1.0)]
#: where ``dataset: prepared`` expects CIFAR-10 and how to get it there
PREPARE_HINT = ("prepare CIFAR-10 first: neuralmark data prepare cifar10 --source "
                "cifar-10-python.tar.gz (writes data/cifar10/manifest.csv)")


def detection_rate(method, images: torch.Tensor) -> float:
    return sum(v.detected for v in method.verify(images)) / images.shape[0]


def profile_sections(profile: str) -> tuple[str, dict, dict]:
    """``(name, method recipe, data settings)`` of ``--profile``.

    ``shipped``: :data:`RECIPE` on the procedural classes; ``tiny`` / ``full`` (any name in
    ``configs/profiles``): that profile's ``visible_gan`` section; anything else: a YAML
    file holding ``method:`` and ``data:`` (or a profile-shaped ``visible_gan:`` section).
    """
    if profile == "shipped":
        return "shipped", dict(RECIPE), dict(SHIPPED_DATA)
    if profile in available_profiles():
        sections = load_profile(profile).get("visible_gan")
        if sections is None:
            raise SystemExit(f"profile {profile!r} has no visible_gan section")
        return profile, dict(sections["method"]), dict(sections["data"])
    path = Path(profile)
    if not path.is_file():
        raise SystemExit(f"--profile {profile!r}: not shipped, {', '.join(available_profiles())}"
                         " nor a YAML file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SystemExit(f"--profile {path}: not valid YAML: {err}") from None
    raw = raw.get("visible_gan", raw) if isinstance(raw, dict) else raw
    if not isinstance(raw, dict) or not isinstance(raw.get("method"), dict):
        raise SystemExit(f"--profile {path}: needs a `method:` mapping (the visible_gan "
                         "config) and optionally `data:` (the data settings)")
    unknown = sorted(set(raw) - {"method", "data", "evaluation", "policy"})
    if unknown:
        raise SystemExit(f"--profile {path}: unknown section(s) {unknown}; expected method, "
                         "data")
    return path.stem, dict(raw["method"]), dict(raw.get("data") or SHIPPED_DATA)


def load_data(settings: DataSettings, detect_size: int) -> dict[str, torch.Tensor]:
    """Train / val / test (+ labels) at the data's size, and the detector's null.

    The null: the val split and 128 offline null images (procedural + photo crops), at the
    detection view's size, since the shipped W stamps photos.
    """
    if settings.dataset == "prepared":
        manifest = Path(str(settings.prepared))
        manifest = manifest if manifest.is_absolute() else ROOT / manifest
        if not manifest.exists():
            raise SystemExit(f"{manifest} does not exist: {PREPARE_HINT}")
    elif settings.dataset != "procedural_classes":
        raise SystemExit(f"data.dataset {settings.dataset!r}: visible_gan's table needs "
                         "class labels (procedural_classes, or prepared CIFAR-10)")
    data = training_data(settings.build(ROOT), size=settings.size)
    data["calibration"] = torch.cat([resize_square(data["val"], detect_size),
                                     default_null_images(detect_size, count=128, seed=0)])
    return data


def measure(method, test: torch.Tensor) -> dict:
    """Detection, false positives, attacks and quality on two held-out sets, and the rows.

    Two held-out sets of different sizes: the test split and fresh null images
    (procedural + photo crops, another seed, 128²: what a user's photos look like). On
    each, ``shipped_v``: the bundle's own V as a ready-made remover (``remove_with_v``):
    the share of the mark's squared error it leaves, PSNR after, and detection after.
    """
    fresh = default_null_images(128, count=64, seed=2024)
    sets = {f"test_{test.shape[-1]}": test, "fresh_128": fresh}
    g = torch.Generator().manual_seed(0)
    per_set: dict[str, dict] = {}
    for set_name, clean in sets.items():
        marked = method.embed(clean)
        v_clean, v_marked = method.verify(clean), method.verify(marked)
        attacked = {}
        for name, strength in ATTACKS:
            images = build_attack(name, strength)(marked, g).clamp(0, 1)
            attacked[f"{name}_{strength}"] = detection_rate(method, images)
        per_set[set_name] = {
            "images": int(clean.shape[0]),
            "detection_rate_marked": sum(v.detected for v in v_marked) / len(v_marked),
            "detection_rate_attacked": attacked,
            "false_positives": int(sum(v.detected for v in v_clean)),
            "psnr_marked_vs_clean": float(psnr(marked.cpu(), clean).mean()),
            "ssim_marked_vs_clean": float(ssim(marked.cpu(), clean).mean()),
            "ncc_clean_median": float(torch.tensor([v.score for v in v_clean]).median()),
            "ncc_marked_median": float(torch.tensor([v.score for v in v_marked]).median()),
            "shipped_v": shipped_v_removal(method, clean, marked)}
    false_pos = sum(r["false_positives"] for r in per_set.values())
    trials = sum(r["images"] for r in per_set.values())
    lo, hi = clopper_pearson(false_pos, trials)
    rows = visible_rows(method, test)
    return {"per_set": per_set, "false_positives": int(false_pos), "clean_trials": trials,
            "fpr_ci95": [lo, hi],
            "test_rows": [{k: r[k] for k in ("label", "metric", "value")} for r in rows]}


def shipped_v_removal(method, clean: torch.Tensor, marked: torch.Tensor) -> dict:
    """What the bundle's own V does to ``marked`` (``clean`` its unmarked originals)."""
    restored = remove_with_v(method, marked)
    clean, marked = clean.cpu(), marked.cpu()
    err_before = ((marked - clean) ** 2).sum()
    return {"removal_left": float(((restored - clean) ** 2).sum() / err_before.clamp_min(1e-12)),
            "psnr_before": float(psnr(marked, clean).clamp_max(100).mean()),
            "psnr_after": float(psnr(restored, clean).clamp_max(100).mean()),
            "detection_rate": detection_rate(method, restored)}


def remeasure(out: Path) -> None:
    """Measure ``out``'s bundle again on the held-out sets (:func:`measure`); rewrite the
    measured part of ``metrics.json`` (training figures kept) and the card.

    For a bundle trained before ``measure`` gained a figure; ``measure`` is deterministic,
    so the figures it had come back unchanged.
    """
    m = json.loads((out / "metrics.json").read_text())
    data_settings = DataSettings(**m.get("data", SHIPPED_DATA), version_with_dvc=False)
    method = load_bundle(out)
    test = load_data(data_settings, method.config.detect_size)["test"]
    m.update(measure(method, test))
    m["remeasured_by"] = " ".join(["python", "scripts/train_shipped_visible_gan.py",
                                   *sys.argv[1:]])
    (out / "metrics.json").write_text(json.dumps(m, indent=2))
    write_card(m, out)


def compare_previous(out: Path, previous: Path, curve: Path | None) -> None:
    """Measure the previous bundle as this one was; ``metrics.json["previous"]``, new card.

    Detection, false positives and the contrast rows are measured on the same held-out
    images; its removal figures come from ``curve`` (``visible_gan_removal_curve.py
    --bundle PREVIOUS --json …``: V′ as in the table, at ``removal_steps``) when given,
    else from the previous bundle's own ``metrics.json`` (its training run's table) when
    that V′ was the same as this run's; F′'s accuracies likewise (:func:`own_table`).
    """
    m = json.loads((out / "metrics.json").read_text())
    data_settings = DataSettings(**m.get("data", SHIPPED_DATA), version_with_dvc=False)
    old = load_bundle(previous)
    test = load_data(data_settings, old.config.detect_size)["test"]
    measured = measure(old, test)
    old_config = json.loads((previous / "config.json").read_text())
    entry = {"bundle": str(previous), "config": old_config, **measured}
    steps = m["fit_report"]["removal_steps"]
    keep = ("removal_gain", "removal_left", "psnr_after")
    if curve is not None:
        rows = json.loads(curve.read_text())["rows"]
        entry["removal"] = {r["stamper"]: {k: r[k] for k in keep}
                            for r in rows if r["steps"] == steps}
        entry["removal_steps"] = steps
        entry["removal_source"] = str(curve)
    own = own_table(previous, old_config, m, out)
    if curve is None and own.get("removal"):
        entry["removal"] = {name: {k: r[k] for k in keep} for name, r in own["removal"].items()}
        entry["removal_steps"] = steps
        entry["removal_source"] = str(previous / "metrics.json")
    if own.get("accuracy"):
        entry["accuracy"] = own["accuracy"]
        entry["accuracy_source"] = str(previous / "metrics.json")
    m["previous"] = entry
    (out / "metrics.json").write_text(json.dumps(m, indent=2))
    write_card(m, out)


#: what makes two runs' V′ the same attacker (the table's V′: width, batch, learning rate,
#: steps, seed of its initial weights and batches), and their F′ the same classifier
SAME_V_PRIME = ("v_width", "batch_size", "removal_lr", "removal_steps", "working_size", "seed")
SAME_F_PRIME = ("classifier", "classifier_width", "classifier_lr", "utility_steps",
                "batch_size", "working_size", "seed", "blend")


def own_table(previous: Path, old_config: dict, m: dict, out: Path) -> dict:
    """The previous bundle's V′ rows (``removal``) and F′ accuracies (``accuracy``) from its
    own ``metrics.json``: each only when that run's V′ (F′) was this run's
    (:data:`SAME_V_PRIME`, :data:`SAME_F_PRIME` in both configs) on the same data, so its
    rows are what measuring that W again would give. ``{}`` when neither holds.
    """
    path = previous / "metrics.json"
    if not path.is_file():
        return {}
    old_m = json.loads(path.read_text())
    if data_key(old_m) != data_key(m):
        return {}
    new_config = json.loads((out / "config.json").read_text())
    rep = old_m.get("fit_report", {})
    found = {}
    for part, keys in (("removal", SAME_V_PRIME), ("accuracy", SAME_F_PRIME)):
        if rep.get(part) and all(old_config.get(k) == new_config.get(k) for k in keys):
            found[part] = rep[part]
    return found


def data_key(m: dict) -> tuple:
    """What a run's V′ was judged on (older metrics without ``data``: the shipped set)."""
    d = {**SHIPPED_DATA, **DATA.model_dump(), **(m.get("data") or {})}
    return (d.get("dataset"), d.get("size"), d.get("images_per_class"), d.get("seed"),
            m.get("train_images"), m.get("test_images"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "visible_gan")
    ap.add_argument("--profile", default="shipped",
                    help="shipped (this script's recipe, the default), tiny, full, or a YAML "
                         "file with `method:` / `data:` sections")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="where to train (auto: CUDA when there is one)")
    ap.add_argument("--data-root", type=Path, default=None,
                    help="folder of the procedural classes (default: the profile's root)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=None, help="GMAN steps (default: profile's)")
    ap.add_argument("--smoke", action="store_true",
                    help="a few steps of everything on 20 images a class: checks the script "
                         "runs end to end (its numbers mean nothing; never ship its output)")
    ap.add_argument("--card-only", action="store_true",
                    help="only (re)write MODEL_CARD.md from --out/metrics.json")
    ap.add_argument("--remeasure", action="store_true",
                    help="measure --out's bundle again on the held-out sets (no training) "
                         "and rewrite metrics.json's measured part and the card")
    ap.add_argument("--previous", type=Path, default=None,
                    help="measure this earlier bundle like --out's and compare them in the "
                         "card (no training)")
    ap.add_argument("--previous-curve", type=Path, default=None,
                    help="with --previous: its V′ curve JSON (visible_gan_removal_curve.py)")
    args = ap.parse_args()
    if args.card_only:
        write_card(json.loads((args.out / "metrics.json").read_text()), args.out)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here (use auto or cpu)")
    torch.set_num_threads(args.threads)
    if args.remeasure:
        remeasure(args.out)
        return
    if args.previous is not None:
        compare_previous(args.out, args.previous, args.previous_curve)
        return
    name, recipe, data_fields = profile_sections(args.profile)
    recipe = {**recipe, "device": args.device}
    if args.steps is not None:
        recipe["steps"] = args.steps
    if args.data_root is not None:
        data_fields["root"] = str(args.data_root)
    if args.smoke:
        recipe.update(classifier_steps=5, steps=5, utility_steps=5, removal_steps=5,
                      removal_curve_steps=[2], calibration_scores=50)
        data_fields["images_per_class"] = 20
    data_settings = DataSettings(**{**data_fields, "version_with_dvc": False})
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    method = build("visible_gan", recipe)
    data = load_data(data_settings, method.config.detect_size)
    test = data["test"]

    class Log:
        def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
            print(step, {k: round(v, 4) for k, v in metrics.items()}, flush=True)

    final = method.fit(data, [Log()])
    fit_seconds = time.time() - start
    device = str(method.device)
    method.to("cpu").to_bundle(args.out)
    # -- measurements on images the model never saw (on the training device) ------------
    method.to(device)
    metrics = {
        "profile": name, "device": device, "recipe": recipe,
        "command": " ".join(["python", "scripts/train_shipped_visible_gan.py", *sys.argv[1:]]),
        "data": data_settings.model_dump(mode="json", exclude={"version_with_dvc",
                                                                 "dvc_target", "dvc_push"}),
        "fit_seconds": round(fit_seconds, 1), "final_training": final,
        "train_images": int(data["train"].shape[0]), "val_images": int(data["val"].shape[0]),
        "test_images": int(test.shape[0]), **measure(method, test),
        "calibration": {k: v for k, v in method.calibration.items() if k != "clean_statistics"},
        "fit_report": method.fit_report,
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (args.out / "seed_table.md").write_text(seed_table_markdown(method.fit_report))
    print(json.dumps({k: v for k, v in metrics.items() if k not in ("test_rows", "fit_report")},
                     indent=1))
    print(seed_table_markdown(method.fit_report))
    write_card(metrics, args.out)
    print(f"total {time.time() - start:.0f} s")



def write_card(m: dict, out: Path) -> None:
    """``out/MODEL_CARD.md`` from ``m`` (``metrics.json``), with this script's recipe
    (``model_card.write_card``)."""
    model_card.write_card(m, out, RECIPE, {**SHIPPED_DATA, **DATA.model_dump()})


if __name__ == "__main__":
    main()
