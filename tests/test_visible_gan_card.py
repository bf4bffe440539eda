"""visible_gan's model card: rendered by ``model_card`` from the shipped files, identical to the
shipped ``MODEL_CARD.md``; the architecture table's section read from its JSON."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

from neuralmark.components.methods.registry import shipped_bundle
from neuralmark.components.methods.visible_gan import card, model_card

ROOT = Path(__file__).resolve().parents[1]


def _train_script():
    spec = importlib.util.spec_from_file_location(
        "train_shipped_visible_gan", ROOT / "scripts" / "train_shipped_visible_gan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
