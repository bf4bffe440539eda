"""The output_mark shipping recipe (issue #19): the one command, its time bound, the stopping rule.

``scripts/train_shipped_output_mark.py`` runs here on CPU with a micro profile (16²,
a few steps, two matrix cells): what it writes and what ``--minutes`` does. The
stopping rule (``output_mark.selection``) and ``time_budget`` are checked directly.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from neuralmark.components.errors import InputError
from neuralmark.components.methods import build, load_bundle
from neuralmark.components.methods.output_mark.evaluation import extraction_nc
from neuralmark.components.methods.output_mark.selection import CheckpointSelector
from neuralmark.components.time_budget import out_of_time, time_budget
from tests.script_modules import load_script

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MICRO = """
output_mark:
  method:
    working_size: 16
    logo_block: 4
    model_width: 4
    model_depth: 1
    embed_width: 4
    embed_depth: 1
    extract_width: 4
    extract_blocks: 1
    disc_width: 4
    disc_layers: 1
    model_steps: 3
    steps: 4
    batch_size: 4
    stage2_steps: 3
    select_every: 2
    psnr_target: 0.0
    select_min_read: 0.0
    surrogate: {{width: 4, depth: 1, steps: 3, batch_size: 4}}
  data:
    root: {root}
    size: 32
    crops_per_photo: 2
    n_procedural: 4
  evaluation: {{}}
  policy: {{min_psnr: 10.0, min_bit_accuracy: {{}}, max_fpr: 1.0}}
"""
CELLS = '[["unet", "l2"], ["cnet", "l2"]]'


def _recipe():
    return load_script("train_shipped_output_mark")


@pytest.fixture(scope="module")
def micro_profile(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("om_recipe")
    path = root / "micro.yaml"
    path.write_text(MICRO.format(root=root / "data"))
    return path


def test_recipe_writes_bundle_metrics_and_card(micro_profile, tmp_path):
    out = tmp_path / "run"
    assert _recipe().main(["--profile", str(micro_profile), "--device", "cpu", "--out",
                           str(out), "--cells", CELLS]) == 0
    method = load_bundle(out / "bundle")
    assert method.key == "output_mark" and method.config.working_size == 16
    assert method.trained and method.null_scores  # calibrated on the held-out part
    record = json.loads((out / "metrics.json").read_text())
    assert record["cuts"] == {} and record["minutes"] == 0.0 and record["device"] == "cpu"
    s = record["summary"]
    for k in ("psnr", "sr_mean/stage1", "sr_mean/stage2", "fpr_clean_B",
              "clean_independent_model/false_positive_rate"):
        assert k in s and s[k] == s[k], k  # present and not NaN
    cells = {r["label"] for r in record["rows"] if r["metric"] == "success_rate"}
    assert cells == {"surrogate_unet_l2", "surrogate_cnet_l2"}
    # the stopping rule ran (select_every 2 over 4 steps) and chose one of its checkpoints
    t1 = record["training"]["stage1"]
    assert t1["checkpoints_scored"] == 2 and t1["selected_step"] in (2.0, 4.0)
    t2 = record["training"]["stage2"]  # stage 2 (3 steps): checkpoints after 2 and 3 steps
    assert t2["stage2_checkpoints_scored"] == 2 and t2["stage2_selected_step"] in (2.0, 3.0)
    card = (out / "MODEL_CARD.md").read_text()
    for needle in ("## Training", "neuralmark-demo", "FPR", "surrogate_cnet_l2", "Command",
                   str(micro_profile)):
        assert needle in card, needle


_script = load_script


@pytest.fixture(scope="module")
def recipe_seed2(micro_profile, tmp_path_factory) -> Path:
    """The recipe's micro run with seed 2 (its ``--out`` folder)."""
    out = tmp_path_factory.mktemp("om_recipe_seed2")
    assert _recipe().main(["--profile", str(micro_profile), "--device", "cpu", "--out",
                           str(out), "--seed", "2", "--cells", CELLS]) == 0
    return out


def test_seed_matrix_with_the_demo_key_gives_the_recipe_s_rows_for_one_seed(
        micro_profile, recipe_seed2, tmp_path):
    """The two scripts' keys differ by default (profile key vs demo key); given the same key,
    seed and profile they train the same models: every Table-1 row and cell to the bit, and
    the seed-matrix's training rows are the recipe's stopping-rule metrics."""
    from neuralmark.components.methods.output_mark.seeds import (
        MATRIX_MEAN,
        TRAINING,
        TRAINING_METRICS,
    )

    record = json.loads((recipe_seed2 / "metrics.json").read_text())
    out = tmp_path / "matrix.json"
    assert _script("output_mark_seed_matrix").main(
        ["--profile", str(micro_profile), "--seeds", "2", "--key", "neuralmark-demo",
         "--cells", CELLS, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["key"] == "neuralmark-demo" and "summary" not in result  # one seed
    recipe = {(r["stage"], r["label"], r["metric"]): r["value"] for r in record["rows"]}
    compared = 0
    for r in result["rows"]:
        if r["label"] in (TRAINING, MATRIX_MEAN):
            continue
        theirs = recipe[(r["stage"], r["label"], r["metric"])]
        assert r["value"] == theirs or (r["value"] != r["value"] and theirs != theirs), r
        compared += 1
    assert compared >= 10
    training = {(r["stage"], r["metric"]): r["value"] for r in result["rows"]
                if r["label"] == TRAINING}
    for stage, prefix in (("stage1", ""), ("stage2", "stage2_")):
        for name in ("selected_step", "checkpoints_scored", "checkpoints_qualified"):
            assert training[(stage, name)] == record["training"][stage][prefix + name]
    assert ("stage1", "h_highband") in training and set(TRAINING_METRICS) >= {
        m for _, m in training}


def test_study_scripts_read_a_bundle_through_the_shared_setup(micro_profile, recipe_seed2,
                                                             tmp_path):
    """The diagnosis (an attacker-budget ladder) and the bundle report run on a bundle via
    ``runtime.output_mark_study``; a folder that is no bundle is refused by name."""
    from neuralmark.runtime.output_mark_study import bundle_and_key, derain_study

    bundle = recipe_seed2 / "bundle"
    study = derain_study(str(micro_profile))
    assert study.settings.config.task == "derain" and len(study.groups) == len(study.train[0])
    diag = tmp_path / "diag.json"
    assert _script("output_mark_surrogate_diagnosis").main(
        ["--bundle", str(bundle), "--key", "neuralmark-demo", "--profile", str(micro_profile),
         "--archs", "cnet", "--seeds", "101", "102", "--steps", "2", "1", "--out",
         str(diag)]) == 0
    d = json.loads(diag.read_text())
    assert [(r["arch"], r["steps"]) for r in d["ladder"]] == [("cnet", 1), ("cnet", 2)]
    assert d["ladder"][1]["converged"] is None and d["ladder"][1]["theft"] is False
    assert len(d["cells"]) == 4 and all(0 <= c["sr"] <= 1 and c["psnr_vs_marked"] > 0
                                        for c in d["cells"])
    for rung in d["ladder"]:   # pooled over both attacker seeds' outputs, with its interval
        cells = [c for c in d["cells"] if c["steps"] == rung["steps"]]
        for pooled, count in ((rung["flagged"], "n_flagged"),
                              (rung["flagged_clean_twin"], "n_flagged_clean_twin")):
            assert pooled["n"] == 2 * d["n_test"]
            assert pooled["k"] == sum(c[count] for c in cells)
            assert pooled["ci95"][0] <= pooled["rate"] <= pooled["ci95"][1]
        assert rung["flagged"]["rate"] == pytest.approx(rung["sr"])
    report = tmp_path / "report.json"
    assert _script("output_mark_bundle_report").main(
        ["--bundle", str(bundle), "--key", "neuralmark-demo", "--profile", str(micro_profile),
         "--out", str(report)]) == 0
    assert json.loads(report.read_text())["n_test"] == d["n_test"] == len(study.test[0])
    with pytest.raises(InputError, match="config.json"):
        bundle_and_key(tmp_path)
    # the recipe trains for the demo key, not its config's logo_secret: no silent default
    with pytest.raises(InputError, match="another key than its config's logo_secret"):
        bundle_and_key(bundle)
    assert bundle_and_key(bundle, "neuralmark-demo")[1].secret == "neuralmark-demo"


def test_theft_bar_needs_a_converged_copy_that_derains_within_a_db():
    theft_bar = _script("output_mark_surrogate_diagnosis").theft_bar
    ladder = [{"steps": 150, "psnr_vs_marked": 30.0, "psnr_vs_target": 25.0},
              {"steps": 300, "psnr_vs_marked": 30.4, "psnr_vs_target": 24.9},
              {"steps": 600, "psnr_vs_marked": 31.0, "psnr_vs_target": 25.5}]
    theft_bar(ladder, 26.0)   # the service derains at 26 dB: 25 dB is within 1 dB
    assert [(r["converged"], r["useful"], r["theft"]) for r in ladder] == [
        (True, True, True), (False, False, False), (None, True, False)]


def test_pooled_flags_give_the_exact_interval_over_all_seeds_outputs():
    pooled_flags = _script("output_mark_surrogate_diagnosis").pooled_flags
    rows = [{"n_outputs": 64, "n_flagged_clean_twin": k} for k in (0, 0, 0)]
    none = pooled_flags(rows, "n_flagged_clean_twin")
    # 0 of 192: the upper end is 1 − 0.025^(1/192)
    assert (none["k"], none["n"], none["rate"]) == (0, 192, 0.0)
    assert none["ci95"][0] == 0.0 and none["ci95"][1] == pytest.approx(0.01903, abs=1e-5)
    rows = [{"n_outputs": 64, "n_flagged_clean_twin": k} for k in (12, 8, 12)]
    some = pooled_flags(rows, "n_flagged_clean_twin")
    assert (some["k"], some["n"]) == (32, 192)
    assert some["ci95"][0] < 32 / 192 < some["ci95"][1]


def test_minutes_bound_cuts_every_loop_and_says_so(micro_profile, tmp_path):
    out = tmp_path / "bounded"
    # 0.6 ms in all: every loop is over its share after its first step
    assert _recipe().main(["--profile", str(micro_profile), "--device", "cpu", "--out",
                           str(out), "--cells", CELLS, "--minutes", "0.00001"]) == 0
    record = json.loads((out / "metrics.json").read_text())
    cuts = record["cuts"]
    assert {"stage1", "stage2", "model"} <= set(cuts), cuts
    assert all(done == 1 and planned > 1 for done, planned in cuts.values()), cuts
    assert (out / "bundle" / "weights.safetensors").is_file()


def test_time_budget_nests_and_is_inert_outside():
    assert not out_of_time("x", 1, 2)
    with time_budget(None) as none:
        assert none is None and not out_of_time("x", 1, 2)
    with time_budget(60) as outer:
        assert outer is not None and not out_of_time("x", 1, 2)
        with time_budget(0.001) as inner:
            time.sleep(0.01)
            assert out_of_time("loop", 3, 10)
        assert inner is not None and inner.cuts == {"loop": (3, 10)}
        assert outer.cuts == {"loop": (3, 10)} and not out_of_time("y", 1, 2)
    with pytest.raises(InputError, match="positive"):
        with time_budget(0):
            pass


def test_selector_keeps_the_best_qualifying_checkpoint():
    torch.manual_seed(0)
    m = build("output_mark", {**type(build("output_mark")).smoke_config, "psnr_target": 0.0,
                              "select_min_read": 0.0})
    a = torch.rand(6, 3, 32, 32)
    selector = CheckpointSelector(m, a, a)
    first = {k: v.clone() for k, v in m.R.state_dict().items()}
    row = selector(1)  # an untrained R reads no clean image as marked: it qualifies
    assert row["qualifies"] == 1.0 and row["fpr_clean"] == 0.0
    with torch.no_grad():
        for p in m.R.parameters():
            p.add_(1.0)
    m.config = m.config.model_copy(update={"psnr_target": 1e9})  # nothing qualifies now
    assert selector(2)["qualifies"] == 0.0
    got = selector.restore()
    assert got["selected_step"] == 1.0 and got["checkpoints_qualified"] == 1.0
    assert got["checkpoints_scored"] == 2.0
    assert all(torch.equal(m.R.state_dict()[k], v) for k, v in first.items())


def test_selector_refuses_a_checkpoint_that_reads_too_little():
    """Seed 2 of the tiny run: early checkpoints met B′ ≥ 40 dB with no clean hit only
    because R read nothing at all; the read floor keeps them from shipping."""
    torch.manual_seed(0)
    m = build("output_mark", {**type(build("output_mark")).smoke_config, "psnr_target": 0.0})
    a = torch.rand(6, 3, 32, 32)
    selector = CheckpointSelector(m, a, a)
    row = selector(1)
    assert row["sr_marked"] < m.config.select_min_read and row["qualifies"] == 0.0
    assert selector.restore()["selected_step"] == -1.0


def test_selector_fallback_keeps_fewest_clean_hits_with_b_prime_met():
    """No checkpoint reads zero clean images: ``last`` keeps the last step; ``fewest_clean``
    keeps the one with B′ and the read floor met that reads the fewest clean images."""
    torch.manual_seed(0)
    smoke = type(build("output_mark")).smoke_config
    for fallback in ("last", "fewest_clean"):
        m = build("output_mark", {**smoke, "psnr_target": 0.0, "select_min_read": 0.0,
                                  "select_fallback": fallback})
        m.config = m.config.model_copy(update={"threshold": 1e-6})
        a = torch.rand(6, 3, 32, 32)
        selector = CheckpointSelector(m, a, a)
        everything = selector(1)  # threshold ~0: every readable image is read
        assert everything["fpr_clean"] == 1.0 and everything["qualifies"] == 0.0
        ncs = torch.cat([extraction_nc(m.R, x, m.logo.cpu(), 32)
                         for x in (a, m.model_outputs(a))])
        # read only the clean image(s) with the highest NC: some, not all
        m.config = m.config.model_copy(update={"threshold": float(ncs.max()) - 1e-6})
        kept = {k: v.clone() for k, v in m.R.state_dict().items()}
        fewer = selector(2)
        assert 0.0 < fewer["fpr_clean"] < 1.0 and fewer["qualifies"] == 0.0
        with torch.no_grad():
            for p in m.R.parameters():
                p.add_(0.5)
        m.config = m.config.model_copy(update={"threshold": 1e-6})
        assert selector(3)["fpr_clean"] == 1.0   # later, but more clean hits
        m.config = m.config.model_copy(update={"psnr_target": 1e9, "threshold": 1.0})
        none = selector(4)                       # no clean hit at all, but B′ not met
        assert none["fpr_clean"] == 0.0 and none["qualifies"] == 0.0
        got = selector.restore()
        if fallback == "last":
            assert got["selected_step"] == -1.0 and got["selected_fallback"] == 0.0
            continue
        assert got["selected_step"] == 2.0 and got["selected_fallback"] == 1.0
        assert got["selected_fpr_clean"] == fewer["fpr_clean"]
        assert all(torch.equal(m.R.state_dict()[k], v) for k, v in kept.items())


def test_cosine_lr_decay_changes_stage1_and_only_when_asked():
    from neuralmark.components.data.pairs import build_pairs
    from neuralmark.components.methods.output_mark.training import stage1_method

    torch.manual_seed(0)
    clean = torch.rand(6, 3, 32, 32)
    pairs = build_pairs(clean, "derain", 0)
    smoke = {**type(build("output_mark")).smoke_config, "steps": 4}
    weights = {}
    for decay in ("none", "cosine", "cosine"):
        method, _ = stage1_method(pairs, {**smoke, "lr_decay": decay})
        weights.setdefault(decay, []).append(
            torch.cat([p.detach().flatten() for p in method.H.parameters()]))
    assert torch.equal(weights["cosine"][0], weights["cosine"][1])      # reproducible
    assert not torch.equal(weights["none"][0], weights["cosine"][0])    # the schedule acts
    with pytest.raises(ValueError, match="lr_decay"):
        build("output_mark", {**smoke, "lr_decay": "linear"})


def _stage1_weights(pairs, config: dict, callbacks=()) -> torch.Tensor:
    from neuralmark.components.methods.output_mark.training import stage1_method

    method, _ = stage1_method(pairs, config, callbacks=callbacks)
    return torch.cat([p.detach().flatten() for n in ("H", "R", "D")
                      for p in getattr(method, n).parameters()])


def test_embed_warmup_ramps_l_emd_and_acts_only_when_asked():
    from neuralmark.components.data.pairs import build_pairs
    from neuralmark.components.methods.output_mark.loops import embed_ramp

    torch.manual_seed(0)
    pairs = build_pairs(torch.rand(6, 3, 32, 32), "derain", 0)
    smoke = {**type(build("output_mark")).smoke_config, "steps": 4}
    ramp = build("output_mark", {**smoke, "embed_warmup": 4}).config
    assert [embed_ramp(ramp, t) for t in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert embed_ramp(build("output_mark", smoke).config, 0) == 1.0   # off: the seed's weights
    off = _stage1_weights(pairs, smoke)
    assert torch.equal(off, _stage1_weights(pairs, {**smoke, "embed_warmup": 0}))
    warm = _stage1_weights(pairs, {**smoke, "embed_warmup": 4})
    assert torch.equal(warm, _stage1_weights(pairs, {**smoke, "embed_warmup": 4}))
    assert not torch.equal(off, warm)                                  # the ramp acts
    with pytest.raises(ValueError, match="embed_warmup"):
        build("output_mark", {**smoke, "embed_warmup": -1})


def test_stage1_logs_gradient_norms_without_changing_a_weight():
    from neuralmark.components.data.pairs import build_pairs

    class Keep:
        def __init__(self) -> None:
            self.rows: list[tuple[int, dict]] = []

        def on_metrics(self, step: int, metrics: dict) -> None:
            self.rows.append((step, metrics))

    torch.manual_seed(0)
    pairs = build_pairs(torch.rand(6, 3, 32, 32), "derain", 0)
    smoke = {**type(build("output_mark")).smoke_config, "steps": 6, "embed_warmup": 3}
    keep = Keep()
    every_step = _stage1_weights(pairs, {**smoke, "log_every": 1}, [keep])
    assert torch.equal(every_step, _stage1_weights(pairs, smoke))    # logging trains nothing
    logged = [(s, m) for s, m in keep.rows if "h_grad_norm" in m]
    assert [s for s, _ in logged] == [smoke["model_steps"] + t for t in range(6)]
    assert all(m["h_grad_norm"] > 0 and m["r_grad_norm"] > 0 for _, m in logged)
    assert [m["emd_weight"] for _, m in logged] == pytest.approx([1 / 3, 2 / 3, 1, 1, 1, 1])
    assert {m["stage1_lr"] for _, m in logged} == {2e-4}
