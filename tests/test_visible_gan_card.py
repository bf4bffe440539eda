"""visible_gan's model card: rendered by ``model_card`` from the shipped files, identical to the
shipped ``MODEL_CARD.md``; the architecture table's section read from its JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from neuralmark.components.methods.registry import shipped_bundle
from neuralmark.components.methods.visible_gan import card, model_card
from tests.script_modules import load_script


def _train_script():
    return load_script("train_shipped_visible_gan")


def test_the_shipped_card_renders_identically_from_the_shipped_files(tmp_path):
    """Every section of the shipped card comes back byte for byte from ``metrics.json``,
    ``config.json`` and the studies' JSONs, with the training script's recipe."""
    script = _train_script()
    shipped = Path(shipped_bundle("visible_gan"))
    m = json.loads((shipped / "metrics.json").read_text())
    text = model_card.render_card(m, shipped, script.RECIPE,
                                  {**script.SHIPPED_DATA, **script.DATA.model_dump()})
    assert text == (shipped / "MODEL_CARD.md").read_text()
    copy = tmp_path / "bundle"  # the script's --card-only writes the same
    shutil.copytree(shipped, copy)
    (copy / "MODEL_CARD.md").unlink()
    script.write_card(m, copy)
    assert (copy / "MODEL_CARD.md").read_text() == text


def _table(complete: bool) -> dict:
    def c(k, n=300):
        return {"correct": k, "n": n, "accuracy": k / n, "ci95": [k / n - 0.05, k / n + 0.05],
                "seconds": 40.0, "load_1min": 6.5}

    return {"command": "python scripts/visible_gan_architecture_table.py --arch vgg16=0.25",
            "data": {"dataset": "procedural_classes", "images_per_class": 200, "size": 32,
                     "seed": 0},
            "train_images": 1400, "test_images": 300, "utility_steps": 400, "batch_size": 32,
            "classifier_lr": 0.002, "threads": 1, "wall_seconds": 1234.0,
            "complete": complete, "seed_reports": card.SEED_TABLE,
            "rows": [{"network": "vgg16", "width_multiplier": 0.25, "parameters": 924186,
                      "cells": {"clean": c(240), "deepstamp": c(210), "static": c(236)},
                      "drops": {"deepstamp": {"drop": 0.1, "se": 0.02, "clean_only": 40,
                                              "marked_only": 10},
                                "static": {"drop": 4 / 300, "se": 0.015, "clean_only": 12,
                                           "marked_only": 8}}}]}


def test_architecture_section_reads_its_json(tmp_path):
    assert card.architecture_section(tmp_path) == ""  # nothing measured, no section
    (tmp_path / "architecture_table.json").write_text(json.dumps(_table(False)))
    text = card.architecture_section(tmp_path)
    assert "not CIFAR-10" in text and "cut short" in text
    assert "VGG16 ×0.25 (924,186 parameters)" in text
    assert "| VGG16 (×0.25) | 80.00 [75.0, 85.0] | 78.67 [73.7, 83.7] | – | – | 70.00" in text
    assert "| VGG16 (×0.25) | +1.33 ± 1.50 (12/8) | – | – | +10.00 ± 2.00 (40/10) |" in text
    assert "| VGG16 | 94.00 | 92.71 | 92.74 | +1.29 | +1.26 |" in text  # the seed's row
    # the reading is computed: DeepStamp's 10-point drop is 5 SE, static's within 2 SE
    assert "DeepStamp +10.00 points, a cost (more than 2 SE above 0)" in text
    assert "static +1.33, within 2 SE of 0; DeepStamp − static +8.67 points" in text
    assert "1234 s wall" in text and "1-min load 6.5–6.5" in text
    assert "training runs" not in text  # no marked set beat the clean one
    table = _table(True)
    table["rows"][0]["drops"]["static"].update(drop=-0.07, se=0.03)
    (tmp_path / "architecture_table.json").write_text(json.dumps(table))
    text = card.architecture_section(tmp_path)
    assert "cut short" not in text
    assert "static -7.00, a gain (more than 2 SE below 0)" in text
    assert "spread between two training runs of F′" in text and "VGG16 static -7.00 ± 3.00" in text


@pytest.fixture(scope="module")
def script():
    """``scripts/visible_gan_architecture_table.py`` as a module, imported once (torch and the
    method package make the import the slow part of these tests)."""
    return load_script("visible_gan_architecture_table")


def test_architecture_seeds_section_reads_the_spread_and_names_the_machines(tmp_path, script):
    """The F′-seed section: per-seed counts, mean / SD / t-interval beside the single-seed
    table's figure, the rule's verdicts computed from the intervals, the networks not run
    over seeds; and the single-seed section says the earlier machine's seed 0 and this
    machine's differ, with both counts."""
    assert card.architecture_seeds_section(tmp_path) == ""  # nothing measured, no section
    shipped = _table(True)  # vgg16 ×0.25: clean 240, deepstamp 210, static 236
    shipped["rows"].append({**shipped["rows"][0], "network": "resnet50",
                            "width_multiplier": 0.0625})
    (tmp_path / "architecture_table.json").write_text(json.dumps(shipped))

    def row(f_seed, clean, deepstamp, static):
        counts = {"clean": clean, "deepstamp": deepstamp, "static": static}
        return {"network": "vgg16", "width_multiplier": 0.25, "f_seed": f_seed,
                "cells": {k: {"correct": c, "n": 300, "accuracy": c / 300, "load_1min": 8.0}
                          for k, c in counts.items()},
                "drops": {k: {"drop": (clean - c) / 300, "se": 0.02}
                          for k, c in counts.items() if k != "clean"}}

    # DeepStamp's drop 30, 33, 36 images (a cost beyond the interval), static's 0, 6, -6
    seeds = {**_table(True), "markings": ["clean", "deepstamp", "static"], "f_seeds": [0, 1, 2],
             "command": "python scripts/visible_gan_architecture_table.py --f-seed 0 …",
             "environment": {"torch": "2.14.1", "cpu_capability": "AVX2", "cpu": "EPYC",
                             "python": "3.12.3"},
             "rows": [row(0, 250, 220, 250), row(1, 240, 207, 234), row(2, 230, 194, 236)]}
    (tmp_path / "architecture_seeds.json").write_text(json.dumps(seeds))
    with pytest.raises(ValueError, match="--summarize"):
        card.architecture_seeds_section(tmp_path)
    seeds["spread"] = script.spread(seeds)
    (tmp_path / "architecture_seeds.json").write_text(json.dumps(seeds))
    text = card.architecture_seeds_section(tmp_path)
    assert "over F′ seeds 0, 1, 2" in text and "torch 2.14.1, CPU kernel path AVX2" in text
    assert "Not in this run: ResNet50 ×0.0625" in text
    assert "| VGG16 (×0.25) | 1 | 240 | 234 | 207 | +2.00 | +11.00 |" in text
    assert ("| VGG16 (×0.25) | drop, DeepStamp | +10.00, +11.00, +12.00 | +11.00 | 1.00 | "
            "[+8.52, +13.48] | +10.00 ± 2.00 |") in text
    assert "DeepStamp's drop +11.00 [+8.52, +13.48] is distinguishable from 0 (a cost)" in text
    assert "static's drop +0.00 [-4.97, +4.97] is not distinguishable from 0" in text
    assert "DeepStamp − static +11.00 [+4.43, +17.57]: DeepStamp costs more than static" in text
    assert "VGG16 static's drop SD 2.00: above 4 of the seed's 6 drops" in text
    assert "Rule (stated before the runs): a drop is distinguishable" in text
    assert ("| clean F′ accuracy | 83.33, 80.00, 76.67 | 80.00 | 3.33 | [71.72, 88.28] | "
            "80.00 |") in text
    shipped_text = card.architecture_section(tmp_path)
    assert "earlier machine (environment: not recorded)" in shipped_text
    assert ("VGG16 Clean 240 / 250, VGG16 S 236 / 250, VGG16 DeepStamp 210 / 220: **this "
            "machine's seed 0 differs** in 3 of 3 cells") in shipped_text


def test_architecture_seeds_section_names_each_merged_run_and_the_seeds_per_network(tmp_path,
                                                                                   script):
    """A table merged from two runs (``--merge``) names both commands, their networks and wall
    seconds, the F′ seeds of each network, and says a run was cut short."""

    def row(network, f_seed, clean, deepstamp, static):
        counts = {"clean": clean, "deepstamp": deepstamp, "static": static}
        return {"network": network, "width_multiplier": 0.25, "f_seed": f_seed,
                "cells": {k: {"correct": c, "n": 300, "accuracy": c / 300, "load_1min": 8.0}
                          for k, c in counts.items()},
                "drops": {k: {"drop": (clean - c) / 300, "se": 0.02}
                          for k, c in counts.items() if k != "clean"}}

    paths = []
    for name, rows, complete in (
            ("vgg", [row("vgg16", s, 240 + s, 220 - s, 235) for s in range(3)], True),
            ("alex", [row("alexnet", s, 180, 170 + 3 * s, 160) for s in range(2)], False)):
        table = {**_table(complete), "markings": ["clean", "deepstamp", "static"],
                 "bundle": "b", "blend": 0.5, "f_seeds": [r["f_seed"] for r in rows],
                 "command": f"python scripts/visible_gan_architecture_table.py {name}",
                 "environment": {"torch": "2.14.1", "cpu_capability": "AVX2", "cpu": "EPYC",
                                 "python": "3.11.7"}, "rows": rows}
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(table))
    script.merge(paths, tmp_path / "architecture_seeds.json")
    text = card.architecture_seeds_section(tmp_path)
    assert ("2 runs on one machine, merged by `--merge`" in text
            and "`python scripts/visible_gan_architecture_table.py vgg` (vgg16=0.25, 1234 s); "
                "`python scripts/visible_gan_architecture_table.py alex` (alexnet=0.25, "
                "1234 s, cut short)" in text)
    assert "repeated over F′ seeds per network: VGG16 0, 1, 2; AlexNet 0, 1." in text
    assert "2468 s wall" in text and "The run was cut short" in text
    assert "AlexNet (2 F′ seeds)" in text and "VGG16 (3 F′ seeds)" in text


def test_shipping_section_reads_the_weights_and_says_why_v_ships(tmp_path):
    """The bundle's entries counted from ``weights.safetensors`` are the loaded networks'
    parameters; the V decision quotes this run's V′ and shipped-V figures; a bundle without
    V gets no such section."""
    from safetensors.torch import load_file, save_file

    from neuralmark.components.methods.registry import load_bundle

    shipped = Path(shipped_bundle("visible_gan"))
    parts = model_card.weights_by_part(shipped)
    method = load_bundle(shipped)
    for name in ("W", "V", "D", "F"):
        net = getattr(method, name)
        assert parts[name]["elements"] == sum(t.numel() for t in net.state_dict().values())
    assert sum(p["bytes"] for p in parts.values()) <= (shipped / "weights.safetensors").stat(
        ).st_size
    m = json.loads((shipped / "metrics.json").read_text())
    text = model_card.shipping_section(m, shipped)
    v_prime = m["fit_report"]["removal"]["deepstamp"]["removal_left"]
    v_own = m["per_set"]["test_32"]["shipped_v"]["removal_left"]
    assert "V keeps shipping" in text and f"leaves {v_prime:.3f} of DeepStamp's mark" in text
    assert f"the shipped V {v_own:.3f}" in text
    assert f"| V | the removal autoencoder (the GMAN's attacker) | {parts['V']['elements']:,} |" \
        in text and "| no |" in text
    copy = tmp_path / "bundle"
    copy.mkdir()
    weights = load_file(str(shipped / "weights.safetensors"))
    save_file({k: v for k, v in weights.items() if not k.startswith("V.")},
              str(copy / "weights.safetensors"))
    assert "V" not in model_card.weights_by_part(copy)
    assert model_card.shipping_section(m, copy) == ""
