"""The seed's Table I with its three networks: narrowed classifiers, the shared F′ trainer and
``scripts/visible_gan_architecture_table.py`` at micro size."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from neuralmark.components.errors import InputError
from neuralmark.components.methods.registry import build, method_class, shipped_bundle
from neuralmark.components.methods.visible_gan.classifier import train_classifier
from neuralmark.components.methods.visible_gan.evaluation import train_f_prime
from neuralmark.components.methods.visible_gan.nets import build_classifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[1]


def _parameters(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_published_widths_match_torchvision_and_the_multiplier_narrows_them():
    """At multiplier 1 the networks have torchvision's parameter counts (ResNet-50 with the
    CIFAR stem's 3×3 conv, VGG16-BN's features + one linear layer); narrower ones keep the
    depth and give B×classes logits on 32² images."""
    import torchvision

    ref = torchvision.models.resnet50(weights=None, num_classes=10)
    stem_difference = 64 * 3 * 7 * 7 - 64 * 3 * 3 * 3
    assert _parameters(build_classifier("resnet50", 10)) == _parameters(ref) - stem_difference
    vgg = torchvision.models.vgg16_bn(weights=None).features
    assert _parameters(build_classifier("vgg16", 10)) == _parameters(vgg) + 512 * 10 + 10
    x = torch.rand(2, 3, 32, 32)
    for arch, mult in (("alexnet", 0.25), ("vgg16", 0.125), ("resnet50", 0.0625)):
        narrow = build_classifier(arch, 10, 16, mult)
        assert _parameters(narrow) < _parameters(build_classifier(arch, 10, 16)) * mult
        assert narrow(x).shape == (2, 10)
    convs = [m for m in build_classifier("resnet50", 10, 16, 0.125).modules()
             if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 3 * 16 + 4  # stem, 16 bottlenecks, 4 projections: ResNet-50
    assert convs[0].out_channels == 8


def test_bad_multipliers_are_refused():
    with pytest.raises(ValueError, match="width_multiplier must be in"):
        build_classifier("vgg16", 10, 16, 0.0)
    with pytest.raises(ValueError, match="resnet_small takes `width`"):
        build_classifier("resnet_small", 10, 16, 0.5)


def _script():
    spec = importlib.util.spec_from_file_location(
        "visible_gan_architecture_table", ROOT / "scripts" / "visible_gan_architecture_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _micro_bundle(tmp_path):
    """A copy of the shipped visible_gan bundle whose data recipe makes 6 images a class
    (under ``tmp_path``), so the table runs at micro size."""
    bundle = tmp_path / "bundle"
    shutil.copytree(shipped_bundle("visible_gan"), bundle)
    metrics = json.loads((bundle / "metrics.json").read_text())
    metrics["data"].update(images_per_class=6, root=str(tmp_path / "classes"))
    (bundle / "metrics.json").write_text(json.dumps(metrics))
    return bundle


def test_the_table_runs_every_network_and_marking_at_micro_size(tmp_path):
    """The shipped W on 6 images a class, 2 F′ steps: every (network, marking) cell, its
    interval, and the paired drop as the difference of the two accuracies."""
    script = _script()
    bundle = _micro_bundle(tmp_path)
    out = tmp_path / "architecture_table.json"
    archs = [("alexnet", 0.25), ("vgg16", 0.125), ("resnet50", 0.0625)]
    table = script.measure(bundle, archs, out, "python … (test)", steps=2)
    assert json.loads(out.read_text()) == table and table["complete"]
    assert table["utility_steps"] == 2 and table["seed_reports"]["test_images"] == 10000
    assert [(r["network"], r["width_multiplier"]) for r in table["rows"]] == archs
    n = table["test_images"]
    for row in table["rows"]:
        assert list(row["cells"]) == list(script.MARKINGS)
        for cell in row["cells"].values():
            assert cell["n"] == n and cell["accuracy"] == cell["correct"] / n
            assert cell["ci95"][0] <= cell["accuracy"] <= cell["ci95"][1]
        clean = row["cells"]["clean"]["accuracy"]
        for name, drop in row["drops"].items():
            assert drop["drop"] == pytest.approx(clean - row["cells"][name]["accuracy"])
            assert drop["clean_only"] - drop["marked_only"] == round(drop["drop"] * n)


def test_paired_drop_and_cell_read_per_image_hits():
    script = _script()
    clean = torch.tensor([True, True, False, True])
    marked = torch.tensor([True, False, True, False])
    drop = script.paired_drop(clean, marked)
    assert drop["drop"] == pytest.approx(0.25)
    assert (drop["clean_only"], drop["marked_only"]) == (2, 1)
    assert drop["se"] == pytest.approx(float(torch.tensor([0., 1., -1., 1.]).std()) / 2)
    assert script.cell(clean)["correct"] == 3
    with pytest.raises(Exception, match="expected alexnet"):
        script.parse_arch("resnet_small=0.5")
    with pytest.raises(Exception, match="multiplier must be in"):
        script.parse_arch("vgg16=2")


def test_f_seed_zero_is_the_recipe_before_f_seeds_and_other_seeds_move_f_prime_only():
    """``f_seed`` 0 builds and trains F′ exactly as the shipped table did (the seeds
    ``config.seed`` + 17 / + 19); another F′ seed starts from other weights and ends elsewhere,
    and one F′ seed is the same network twice."""
    smoke = method_class("visible_gan").smoke_config
    method = build("visible_gan", {**smoke, "utility_steps": 3, "batch_size": 4})
    c = method.config
    g = torch.Generator().manual_seed(5)
    x = torch.rand(12, 3, 16, 16, generator=g)
    y = torch.randint(0, method.num_classes, (12,), generator=g)
    torch.manual_seed(c.seed + 17)
    before = build_classifier("alexnet", method.num_classes, c.classifier_width, 0.25)
    train_classifier(before, x, y, c.utility_steps, c.batch_size, c.classifier_lr,
                     torch.Generator().manual_seed(c.seed + 19), torch.device("cpu"),
                     flips=c.task == "labels")

    def weights(net: torch.nn.Module) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in net.parameters()])

    cpu = torch.device("cpu")
    seed0 = weights(train_f_prime(method, "alexnet", x, y, cpu, 0.25))
    assert torch.equal(seed0, weights(before))
    seed1 = weights(train_f_prime(method, "alexnet", x, y, cpu, 0.25, f_seed=1))
    assert not torch.allclose(seed1, seed0)
    assert torch.equal(seed1, weights(train_f_prime(method, "alexnet", x, y, cpu, 0.25, f_seed=1)))
    with pytest.raises(InputError, match="f_seed -1"):
        train_f_prime(method, "alexnet", x, y, cpu, 0.25, f_seed=-1)


def test_the_table_over_f_seeds_keeps_seed_zero_and_the_marked_images(tmp_path):
    """Two F′ seeds × two columns at micro size: one row per F′ seed; the seed-0 row repeats
    the default run's cells (a narrowed run marks the images as the full one); bad plans are
    refused (``check_plan``, which ``main`` calls before anything trains)."""
    script = _script()
    bundle = _micro_bundle(tmp_path)
    archs = [("alexnet", 0.25)]
    full = script.measure(bundle, archs, tmp_path / "full.json", "python … (test)", steps=6)
    seeds = script.measure(bundle, archs, tmp_path / "seeds.json", "python … (test)", steps=6,
                           f_seeds=(0, 1), markings=("clean", "displacement"))
    assert json.loads((tmp_path / "seeds.json").read_text()) == seeds and seeds["complete"]
    assert (seeds["f_seeds"], seeds["markings"]) == ([0, 1], ["clean", "displacement"])
    env = seeds["environment"]
    assert env["torch"] == torch.__version__ and env["cpu"]
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert [(r["network"], r["f_seed"]) for r in seeds["rows"]] == [("alexnet", 0), ("alexnet", 1)]
    zero, one = seeds["rows"]
    assert list(zero["cells"]) == ["clean", "displacement"] and list(zero["drops"]) == [
        "displacement"]

    def counts(row: dict) -> dict:
        return {k: v["correct"] for k, v in row["cells"].items()}

    assert counts(zero) == {k: counts(full["rows"][0])[k] for k in ("clean", "displacement")}
    assert zero["drops"]["displacement"] == full["rows"][0]["drops"]["displacement"]
    assert one["cells"]["clean"]["n"] == zero["cells"]["clean"]["n"]
    for f_seeds, markings, match in (((0, 0), ("clean",), "distinct"),
                                     ((-1,), ("clean",), "distinct integers"),
                                     ((0,), ("static", "clean"), "clean first"),
                                     ((0,), ("clean", "stamp"), "stamp: not a column")):
        with pytest.raises(ValueError, match=match):
            script.check_plan(f_seeds, markings)


def _seed_row(network: str, f_seed: int, correct: dict[str, int], n: int = 300) -> dict:
    """A table row from counts: cells and drops as ``measure`` writes them (SEs unused)."""
    cells = {k: {"correct": c, "n": n, "accuracy": c / n} for k, c in correct.items()}
    drops = {k: {"drop": (correct["clean"] - c) / n, "se": 0.02} for k, c in correct.items()
             if k != "clean"}
    return {"network": network, "width_multiplier": 0.25, "f_seed": f_seed, "cells": cells,
            "drops": drops}


def test_spread_over_f_seeds_is_the_t_interval_per_network_and_the_paired_difference(tmp_path):
    """Per network: mean, SD and t-interval (n − 1 dof) of each drop over the F′ seeds that
    trained every column, and DeepStamp − static paired by seed; a seed cut short and a
    network with one seed are left out; ``summarize`` writes it into the file."""
    script = _script()
    rows = [_seed_row("alexnet", 0, {"clean": 150, "deepstamp": 147, "static": 150}),
            _seed_row("alexnet", 1, {"clean": 160, "deepstamp": 154, "static": 157}),
            _seed_row("alexnet", 2, {"clean": 170, "deepstamp": 161, "static": 164}),
            _seed_row("alexnet", 3, {"clean": 170, "deepstamp": 100}),  # cut: no static
            _seed_row("vgg16", 0, {"clean": 200, "deepstamp": 190, "static": 195})]
    table = {"markings": ["clean", "deepstamp", "static"], "rows": rows}
    sp = script.spread(table)
    assert sp["rule"] == script.SPREAD_RULE and sp["confidence"] == 0.95
    [net] = sp["networks"]  # vgg16 has one seed: no spread
    assert (net["network"], net["f_seeds"]) == ("alexnet", [0, 1, 2])
    by = {(q["label"], q["metric"]): q for q in net["quantities"]}
    ds = by[("deepstamp", "drop")]  # drops 3, 6, 9 images: mean 6, SD 3 (images)
    assert ds["values"] == pytest.approx([0.01, 0.02, 0.03]) and ds["n_seeds"] == 3
    assert (ds["mean"], ds["std"]) == (pytest.approx(0.02), pytest.approx(0.01))
    half = 4.302652729911275 * 0.01 / 3 ** 0.5  # t(0.975, 2)
    assert (ds["ci_low"], ds["ci_high"]) == (pytest.approx(0.02 - half),
                                             pytest.approx(0.02 + half))
    diff = by[("deepstamp-static", "drop")]  # 3, 3, 3 images: SD 0, the interval a point
    assert diff["values"] == pytest.approx([0.01] * 3) and diff["std"] == pytest.approx(0)
    assert by[("clean", "accuracy")]["mean"] == pytest.approx(0.5333333)
    path = tmp_path / "seeds.json"
    path.write_text(json.dumps(table))
    assert script.summarize(path)["spread"] == json.loads(path.read_text())["spread"] == sp
    path.write_text(json.dumps({**table, "rows": rows[3:]}))
    with pytest.raises(ValueError, match="no network has two F′ seeds"):
        script.summarize(path)
    old = {"rows": [{k: v for k, v in rows[0].items() if k != "f_seed"}]}
    path.write_text(json.dumps(old))
    with pytest.raises(ValueError, match="no f_seed"):
        script.summarize(path)


def test_merge_pools_runs_of_one_machine_and_refuses_another_machine_or_a_seed_twice(tmp_path):
    """``--merge``: the rows of two runs (VGG16 seeds 0–2, then 3–4) become one table whose
    spread has 5 F′ seeds (4 dof), each run kept in ``runs``; a run cut short merges with
    ``complete: false``; another environment or recipe, or a seed measured twice, is refused."""
    script = _script()
    env = {"torch": "2.14.1", "cpu_capability": "AVX2", "cpu": "EPYC", "python": "3.11.7"}
    counts = [(200, 190, 195), (210, 204, 200), (220, 209, 212), (205, 200, 199),
              (215, 203, 210)]
    rows = [{**_seed_row("vgg16", s, dict(zip(("clean", "deepstamp", "static"), c,
                                              strict=True))), "width_multiplier": 0.25}
            for s, c in enumerate(counts)]

    def run(name: str, part: list[dict], **extra) -> Path:
        table = {"command": f"python … {name}", "bundle": "b", "data": {"seed": 0},
                 "train_images": 1400, "test_images": 300, "utility_steps": 400,
                 "batch_size": 32, "classifier_lr": 0.002, "blend": 0.5, "threads": 1,
                 "environment": env, "markings": ["clean", "deepstamp", "static"],
                 "f_seeds": [r["f_seed"] for r in part], "rows": part, "complete": True,
                 "wall_seconds": 100.0, "started": name, "finished": name, **extra}
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(table))
        return path

    a, b = run("a", rows[:3]), run("b", rows[3:], complete=False)
    merged = script.merge([a, b], tmp_path / "m.json")
    assert json.loads((tmp_path / "m.json").read_text()) == merged
    assert merged["f_seeds"] == [0, 1, 2, 3, 4] and len(merged["rows"]) == 5
    assert [r["command"] for r in merged["runs"]] == ["python … a", "python … b"]
    assert [r["complete"] for r in merged["runs"]] == [True, False] and not merged["complete"]
    assert merged["wall_seconds"] == 200.0
    [net] = merged["spread"]["networks"]
    diff = {(q["label"], q["metric"]): q for q in net["quantities"]}[("deepstamp-static", "drop")]
    values = [(c[1] - c[2]) / -300 for c in counts]  # DeepStamp's drop − static's
    half = 2.7764451051977987 * torch.tensor(values).double().std().item() / 5 ** 0.5
    assert diff["values"] == pytest.approx(values) and diff["n_seeds"] == 5
    assert diff["ci_low"] == pytest.approx(sum(values) / 5 - half)
    # a merged table merges again (its runs carried over)
    c = run("c", [{**rows[0], "network": "alexnet"}])
    assert len(script.merge([tmp_path / "m.json", c], tmp_path / "m2.json")["runs"]) == 3
    newer = {**env, "threads": "1", "OMP_NUM_THREADS": "1"}  # a newer record: more keys
    assert script.merge([a, run("n", rows[3:], environment=newer)], tmp_path / "n.json")[
        "environment"] == env
    for bad, match in ((run("d", rows[3:], environment={**env, "cpu_capability": "AVX512"}),
                        "do not pool across machines"),
                       (run("g", rows[3:], environment={"torch": "2.14.1"}),
                        "do not pool across machines"),  # the CPU not recorded
                       (run("e", rows[3:], utility_steps=200), "another recipe.*utility_steps"),
                       (run("f", rows[2:3]), "vgg16 ×0.25 F′ seed 2: in")):
        with pytest.raises(ValueError, match=match):
            script.merge([a, bad], tmp_path / "x.json")
    with pytest.raises(ValueError, match="two or more"):
        script.merge([a], tmp_path / "x.json")
