"""Model attacks (issue #13): pruning, fine-tuning, distillation, overwriting, and their registry.

Tiny hosts on real photo patches (scikit-image's bundled files) and procedural textures,
one CPU thread; every draw is seeded.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from neuralmark.components.attacks.model import (
    distill,
    fine_tune,
    layer_sparsity,
    overwrite,
    prunable_layers,
    prune_magnitude,
)
from neuralmark.components.attacks.model_registry import (
    MODEL_ATTACK_SUITE,
    MODEL_ATTACKS,
    AttackerData,
    ModelAttackSettings,
    get_model_attack,
    iter_model_attacks,
)
from neuralmark.components.data.restoration import (
    denoise_pairs,
    extract_patches,
    new_data_patches,
)
from neuralmark.components.errors import InputError
from neuralmark.components.nets.image_nets import apply_net
from neuralmark.components.nets.restoration import build_host
from neuralmark.components.nets.training import restoration_loss, train_host

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIGMA = 25 / 255


@pytest.fixture(scope="module")
def task() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Gray 24×24 denoising pairs: photo patches (train, held out) and new textures."""
    from skimage import data

    photos = [torch.from_numpy(p.copy()).permute(2, 0, 1).float() / 255
              for p in (data.astronaut(), data.chelsea(), data.coffee())]
    g = torch.Generator().manual_seed(0)
    train = denoise_pairs(extract_patches(photos[:2], 24, 128, g, 1), SIGMA, g)
    held = denoise_pairs(extract_patches(photos[2:], 24, 32, g, 1), SIGMA, g)
    new = denoise_pairs(new_data_patches(64, 24, g, channels=1).patches, SIGMA, g)
    return {"train": train, "held": held, "new": new}


@pytest.fixture(scope="module")
def host(task) -> nn.Module:
    """A tiny DnCNN trained on the photo pairs (the marked host stands in for any host)."""
    torch.manual_seed(0)
    net = build_host("dncnn", 1, depth=4, width=8)
    train_host(net, *task["train"], steps=30, generator=0, device="cpu")
    return net


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _l_d(model: nn.Module, pairs: tuple[torch.Tensor, torch.Tensor]) -> float:
    return float(restoration_loss(apply_net(model, pairs[0]), pairs[1]))


# -- pruning ---------------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_pruning_zeroes_the_declared_fraction_per_layer(host, rate):
    mixed = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ConvTranspose2d(4, 2, 3), nn.Flatten(),
                          nn.Linear(2 * 6 * 6, 5))
    for model in (host, mixed):
        before = _state(model)
        pruned = prune_magnitude(model, rate)
        assert _same(_state(model), before)  # the input is untouched
        assert pruned is not model and list(dict(pruned.named_parameters())) == list(
            dict(model.named_parameters()))  # plain weights: no weight_orig / masks left
        originals = dict(prunable_layers(model))
        sparsity = layer_sparsity(pruned)
        for name, layer in prunable_layers(pruned):
            w0, w = originals[name].weight.detach(), layer.weight.detach()
            k = round(rate * w.numel())
            assert int((w == 0).sum()) == k and sparsity[name] == k / w.numel()
            kept = w != 0
            assert torch.equal(w[kept], w0[kept])  # the rest is as it was
            assert w0[~kept].abs().max() <= w0[kept].abs().min()  # the smallest went
        for name, value in _state(pruned).items():  # biases and BatchNorm are kept
            if not name.endswith("weight") or name.split(".weight")[0] not in originals:
                assert torch.equal(value, before[name])


def test_pruning_rejects_bad_rates_and_models(host):
    with pytest.raises(InputError, match="pruning rate must be in \\[0, 1\\]"):
        prune_magnitude(host, 1.5)
    with pytest.raises(InputError, match="no conv or linear layer"):
        prune_magnitude(nn.ReLU(), 0.5)
    assert _same(_state(prune_magnitude(host, 0.0)), _state(host))


# -- fine-tuning and distillation ----------------------------------------------------------

def test_fine_tuning_changes_the_weights_and_lowers_the_loss_on_its_data(host, task):
    before = _state(host)
    tuned = fine_tune(host, *task["new"], steps=30, lr=1e-3, batch_size=16, generator=1,
                      device="cpu")
    assert _same(_state(host), before)
    assert not _same(_state(tuned), before)
    assert _l_d(tuned, task["new"]) < _l_d(host, task["new"])


def test_fine_tuning_counts_epochs_over_its_data(host, task):
    totals: list[int] = []

    class Progress:
        def on_progress(self, done: int, total: int, desc: str = "") -> None:
            totals.append(total)

    x, y = task["new"]
    fine_tune(host, x[:40], y[:40], epochs=2, batch_size=16, callbacks=[Progress()],
              device="cpu")
    assert set(totals) == {math.ceil(2 * 40 / 16)}
    with pytest.raises(InputError, match="either steps or epochs"):
        fine_tune(host, x, y, steps=3, epochs=1)
    with pytest.raises(InputError, match="takes 1-channel images, the data has 3"):
        fine_tune(host, x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1), steps=1)


def test_distillation_brings_the_student_closer_to_the_teacher(host, task):
    torch.manual_seed(1)
    student = build_host("vdsr", 1, depth=4, width=8)  # another arch than the teacher's
    teacher_state, student_state = _state(host), _state(student)
    queries, held = task["train"][0], task["held"][0]
    pupil = distill(host, student, queries, steps=40, lr=1e-3, batch_size=16, generator=2,
                    device="cpu")
    assert _same(_state(host), teacher_state) and _same(_state(student), student_state)
    assert pupil is not student and isinstance(pupil, type(student))
    target = apply_net(host, held).clamp(0, 1)

    def gap(m: nn.Module) -> float:
        return float((apply_net(m, held) - target).pow(2).mean())

    assert gap(pupil) < gap(student)


# -- overwriting -----------------------------------------------------------------------------

def test_overwrite_calls_the_embed_on_a_copy(host):
    before = _state(host)
    given: list[nn.Module] = []

    def embed(model: nn.Module) -> nn.Module:
        given.append(model)
        assert _same(_state(model), before)  # a faithful copy…
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01)  # …that the embed may change in place
        return model

    marked = overwrite(host, embed)
    assert len(given) == 1 and given[0] is not host and marked is given[0]
    assert _same(_state(host), before) and not _same(_state(marked), before)
    with pytest.raises(InputError, match="embed returned Tensor, not an nn.Module"):
        overwrite(host, lambda m: torch.zeros(1))
    with pytest.raises(InputError, match="returned the input model"):
        overwrite(host, lambda m: host)
    with pytest.raises(InputError, match="needs an embed callable"):
        overwrite(host, "second key")


# -- the attacks as data ---------------------------------------------------------------------

@pytest.fixture()
def attacker(task) -> AttackerData:
    torch.manual_seed(3)

    def embed(model: nn.Module) -> nn.Module:
        with torch.no_grad():
            next(model.parameters()).mul_(0.5)
        return model

    return AttackerData(original=task["train"], new=task["new"], new_source="procedural:textures",
                        queries=task["train"][0], student=build_host("red", 1, 4, 8),
                        embed=embed, degrade=lambda clean, g: denoise_pairs(clean, SIGMA, g))


def test_every_attack_is_described_as_a_tidy_row(attacker):
    settings = ModelAttackSettings(lr=5e-4, batch_size=32, seed=7)
    assert set(MODEL_ATTACKS) == {"prune", "fine_tune_original", "fine_tune_new", "distill",
                                  "overwrite", "fine_tune_noise"}
    rows = {name: [MODEL_ATTACKS[name].params(s, attacker, settings) for s in strengths]
            for name, strengths in MODEL_ATTACK_SUITE}  # the whole suite is valid
    assert [r["label"] for r in rows["prune"]] == [f"prune_0.{i}" for i in range(1, 10)]
    assert rows["prune"][2] == {"attack": "prune", "strength": 0.3, "label": "prune_0.3",
                                "rate": 0.3}
    new = rows["fine_tune_new"][0]
    assert new["label"] == "fine_tune_new_10" and new["data"] == "procedural:textures"
    assert new["steps"] == math.ceil(10 * 64 / 32) and new["lr"] == 5e-4 and new["n"] == 64
    assert rows["fine_tune_original"][0]["data"] == "original"
    assert rows["fine_tune_original"][0]["seed"] != new["seed"]  # one stream per label
    assert rows["distill"][0]["student"] == "RED"
    assert rows["overwrite"] == [{"attack": "overwrite", "strength": None, "label": "overwrite"}]
    noise = rows["fine_tune_noise"][0]
    assert noise["label"] == "fine_tune_noise_10" and noise["data"] == "original+noise"
    assert noise["steps"] == math.ceil(10 * 128 / 32) and noise["n_noise"] == 128


def test_bad_attacks_are_named(attacker):
    with pytest.raises(InputError, match="unknown model attack 'quantize'; valid names: distill"):
        get_model_attack("quantize")
    with pytest.raises(InputError, match="prune: rate must be in \\[0, 1\\], got 2"):
        MODEL_ATTACKS["prune"].params(2, attacker)
    with pytest.raises(InputError, match="'overwrite' takes no strength"):
        MODEL_ATTACKS["overwrite"].params(1, attacker)
    with pytest.raises(InputError, match="needs AttackerData.queries, AttackerData.student"):
        MODEL_ATTACKS["distill"].params(1, AttackerData())


def test_a_suite_runs_every_cell_on_a_copy_and_replays(host, attacker):
    before = _state(host)
    suite = [("prune", [0.2, 0.6]), ("fine_tune_new", [0.5]), ("distill", [0.25]),
             ("overwrite", [None])]
    settings = ModelAttackSettings(batch_size=16, device="cpu")
    rows = list(iter_model_attacks(host, suite, attacker, settings))
    assert [p["label"] for p, _ in rows] == ["prune_0.2", "prune_0.6", "fine_tune_new_0.5",
                                             "distill_0.25", "overwrite"]
    assert _same(_state(host), before)
    assert all(m is not host for _, m in rows)
    assert isinstance(rows[3][1], type(attacker.student))
    tuned = _state(rows[2][1])
    replay = MODEL_ATTACKS["fine_tune_new"](host, 0.5, attacker, settings)
    assert not _same(tuned, before) and _same(_state(replay), tuned)  # seeded by its label


def test_a_suite_is_checked_before_anything_runs(host, attacker):
    ran: list[str] = []

    class Progress:
        def on_progress(self, done: int, total: int, desc: str = "") -> None:
            ran.append(desc)

    no_student = AttackerData(new=attacker.new)
    cells = iter_model_attacks(host, [("fine_tune_new", [1]), ("distill", [1])], no_student,
                               callbacks=[Progress()])
    with pytest.raises(InputError, match="'distill' needs AttackerData.queries"):
        next(cells)
    assert ran == []
    with pytest.raises(InputError, match="duplicate model attacks"):
        next(iter_model_attacks(host, [("prune", [0.5, 0.5])], attacker))
