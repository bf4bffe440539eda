"""output_mark's extractor against false positives and resized services (issue #19).

* ``clean_variety``: the extra clean images come from the training split's photos and
  procedural images only, reproducibly; the never-seen photos share no file with the
  sample dataset.
* ``training.clean_bank``: extra images of a held-out photo never reach R.
* ``loops.resize_round_trip``: what R is trained on is what it reads of the service
  (``MarkedModel``) run at another size.
* The recipe with ``--clean-variety`` and a resize round trip writes a card saying so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from neuralmark.components.data.clean_variety import (
    OPERATIONS,
    UNSEEN_FILES,
    generic_operation,
    unseen_photos,
    varied_clean_images,
)
from neuralmark.components.data.manifest import read_manifest
from neuralmark.components.data.sample import BUNDLED_PHOTOS, SampleDataConfig, build_sample_dataset
from neuralmark.components.errors import InputError
from neuralmark.components.methods import build, load_bundle
from neuralmark.components.methods.base import resize_square
from neuralmark.components.methods.output_mark.loops import resize_round_trip
from neuralmark.components.methods.output_mark.method import MarkedModel
from neuralmark.components.methods.output_mark.training import clean_bank, training_pairs
from tests.test_output_mark_recipe import CELLS, _recipe, micro_profile  # noqa: F401

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("variety") / "data"
    return Path(build_sample_dataset(root, SampleDataConfig(size=32, crops_per_photo=1,
                                                             n_procedural=4)))


def test_varied_clean_images_use_only_training_photos_reproducibly(manifest):
    rows = read_manifest(manifest)
    train = {r.group for r in rows if r.split == "train"}
    others = {r.group for r in rows if r.split != "train"}
    x, groups = varied_clean_images(manifest, 24, crops_per_photo=2, n_procedural=5, seed=3)
    assert x.shape == (len(groups), 3, 24, 24) and x.dtype == torch.float32
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    photo_groups = {g for g in groups if not g.startswith("variety:procedural:")}
    assert photo_groups and photo_groups <= train and not photo_groups & others
    assert sum(g.startswith("variety:procedural:") for g in groups) == 5
    again, _ = varied_clean_images(manifest, 24, crops_per_photo=2, n_procedural=5, seed=3)
    assert torch.equal(x, again)
    plain, _ = varied_clean_images(manifest, 24, crops_per_photo=2, n_procedural=5, seed=3,
                                   processed=0.0)
    changed = (x - plain).abs().flatten(1).amax(1) > 0
    assert 0 < int(changed.sum()) < x.shape[0]  # about half went through an operation
    with pytest.raises(InputError, match="no bundled photo"):
        varied_clean_images(manifest, 24, split="nonexistent")


def test_generic_operations_keep_shape_and_range_and_reject_unknown():
    import numpy as np

    x = torch.rand(2, 3, 16, 16)
    for op in OPERATIONS:
        y = generic_operation(x, op, np.random.default_rng(0))
        assert y.shape == x.shape and 0 <= float(y.min()) and float(y.max()) <= 1, op
        assert not torch.equal(x, y), op
    with pytest.raises(InputError, match="unknown operation"):
        generic_operation(x, "rotate", np.random.default_rng(0))


def test_unseen_photos_share_no_file_with_the_sample_dataset():
    bundled = {Path(p.relpath).name for p in BUNDLED_PHOTOS}
    assert not bundled & set(UNSEEN_FILES)
    x, sources = unseen_photos(16, crops_per_photo=1, faces=3)
    assert x.shape == (len(UNSEEN_FILES) + 3, 3, 16, 16) and len(sources) == x.shape[0]
    assert sources.count("lfw_subset.npy") == 3 and not bundled & set(sources)


def test_clean_bank_drops_the_held_out_photos():
    smoke = type(build("output_mark")).smoke_config
    m = build("output_mark", smoke)
    groups = [f"photo:{i % 4}" for i in range(8)]
    m.set_groups(groups)
    pairs = (torch.rand(8, 3, 40, 40), torch.rand(8, 3, 40, 40))
    extra = torch.rand(6, 3, 48, 48)
    extra_groups = ["photo:0", "photo:1", "photo:2", "photo:3", "variety:procedural:0",
                    "variety:procedural:1"]
    tp = training_pairs(m, pairs, clean=(extra, extra_groups))
    held = {groups[int(i)] for i in tp.held_out}
    kept = [g for g in extra_groups if g not in held]
    assert tp.clean_bank is not None and tp.clean_bank.shape == (len(kept), 3, 32, 32)
    assert len(kept) < len(extra_groups)  # some photo is held out, its crops are gone
    assert clean_bank(m, tp.hr, tp.held_out, None) is None
    with pytest.raises(InputError, match="groups for"):
        clean_bank(m, tp.hr, tp.held_out, (extra, extra_groups[:2]))


def test_resize_round_trip_is_what_r_reads_of_the_service_at_another_size():
    s, factor = 16, 2.0
    c = build("output_mark", {**type(build("output_mark")).smoke_config, "working_size": s,
                              "resize_roundtrip": 1.0, "roundtrip_factors": [factor]}).config
    torch.manual_seed(0)
    # a smooth image away from 0 and 1 (no clamping) and a small embedder residual
    big = 0.3 + 0.4 * resize_square(torch.rand(2, 3, 4, 4), int(factor * s))
    embedder = torch.nn.Conv2d(3, 3, 3, padding=1)
    torch.nn.init.normal_(embedder.weight, std=0.01)
    torch.nn.init.zeros_(embedder.bias)
    with torch.no_grad():
        embedder.weight[:, :, 1, 1] += torch.eye(3)
        service = MarkedModel(None, embedder, s)(big)
        read = resize_square((service * 255).round() / 255, s)      # the 8-bit file, read at S
        before = resize_square(big, s)
    marked = embedder(before).detach().requires_grad_(True)
    trained_on = resize_round_trip(c, torch.Generator().manual_seed(0), before, marked)
    assert (trained_on - read).abs().max() <= 1.5 / 255
    assert (trained_on - marked).abs().max() > 1e-4  # the trip does change B′
    trained_on.sum().backward()  # straight through the 8-bit rounding
    assert marked.grad is not None and float(marked.grad.abs().sum()) > 0
    off = c.model_copy(update={"resize_roundtrip": 0.0})
    g = torch.Generator().manual_seed(0)
    assert resize_round_trip(off, g, before, marked) is marked
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(0).get_state())
    with pytest.raises(ValueError, match="roundtrip_factors"):
        build("output_mark", {"roundtrip_factors": [0.5]})


def test_clean_variety_field_is_the_one_way_to_the_images(manifest):
    from neuralmark.components.methods.output_mark.training import clean_variety_images

    off = build("output_mark", {"working_size": 24}).config
    assert off.clean_variety is False and clean_variety_images(off, str(manifest)) is None
    on = off.model_copy(update={"clean_variety": True, "seed": 3})
    images, groups = clean_variety_images(on, str(manifest))
    expected, expected_groups = varied_clean_images(manifest, 24, seed=3)
    assert torch.equal(images, expected) and list(groups) == expected_groups
    with pytest.raises(InputError, match="clean_variety needs the sample dataset"):
        clean_variety_images(on, None)


def test_recipe_with_clean_variety_and_round_trip_says_so(micro_profile, tmp_path):  # noqa: F811
    out = tmp_path / "variety"
    assert _recipe().main(["--profile", str(micro_profile), "--device", "cpu", "--out",
                           str(out), "--cells", CELLS, "--clean-variety", "--config",
                           '{"resize_roundtrip": 0.5}']) == 0
    record = json.loads((out / "metrics.json").read_text())
    assert record["n_clean_variety"] > 0 and record["config"]["resize_roundtrip"] == 0.5
    card = (out / "MODEL_CARD.md").read_text()
    assert f"{record['n_clean_variety']} varied clean images" in card
    assert "50% of B′ through the service's resize round trip" in card
    assert load_bundle(out / "bundle").config.resize_roundtrip == 0.5
    # --clean-variety is the config field's shorthand: the bundle records it
    assert record["config"]["clean_variety"] is True
    assert load_bundle(out / "bundle").config.clean_variety is True
    assert 0 < record["training"]["stage1"]["clean_bank_images"] <= record["n_clean_variety"]
    assert record["training"]["stage2"]["clean_bank_images"] == \
        record["training"]["stage1"]["clean_bank_images"]


def test_shipped_recipe_and_its_pipeline_run_config_agree():
    """The shipped card's command, ``configs/output_mark_shipped.yaml`` and the shipped
    bundle's config name one recipe (the pipeline run config trains what ships)."""
    import re
    import shlex

    import yaml

    card = (REPO / "components/pretrained/output_mark/MODEL_CARD.md").read_text()
    command = shlex.split(re.search(r"- Command: `python ([^`]+)`", card).group(1))
    bundle = load_bundle(REPO / "components/pretrained/output_mark")
    record = {"argv": command, "cuts": {}, "config": bundle.config.model_dump(mode="json")}
    params = _recipe().pipeline_recipe(record)
    from zenml.config.pipeline_run_configuration import PipelineRunConfiguration

    from neuralmark.pipelines.output_mark import _run_config, resolve_output_mark

    path = REPO / "configs/output_mark_shipped.yaml"
    shipped = yaml.safe_load(path.read_text())
    assert PipelineRunConfiguration.model_validate(shipped).enable_cache is None
    assert _run_config("derain", "tiny", path, None)["parameters"] == shipped["parameters"]
    run = shipped["parameters"]
    for name in ("task", "profile", "config", "evaluation"):
        assert run[name] == params[name], name
    assert {k: run["matrix"][k] for k in params["matrix"]} == params["matrix"]
    settings = resolve_output_mark(run["task"], run["profile"], run["config"], run["data"],
                                   run["evaluation"], run["policy"], run["matrix"])
    assert settings.config == bundle.config and settings.config.clean_variety
    assert settings.evaluation.key_secret == "neuralmark-demo"
    assert "configs/output_mark_shipped.yaml" in card
