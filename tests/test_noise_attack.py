"""The keyless removal attack ``fine_tune_noise`` (issue #13, tk11): noise images and the
fine-tuning on the task data plus their task pairs, by name in the model attack registry.

A tiny DnCNN on scikit-image photo patches, one CPU thread; every draw is seeded.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from neuralmark.components.attacks.model import fine_tune
from neuralmark.components.attacks.model_registry import (
    MODEL_ATTACKS,
    AttackerData,
    ModelAttackSettings,
)
from neuralmark.components.attacks.noise_inputs import (
    NOISE_KINDS,
    fine_tune_noise,
    noise_images,
)
from neuralmark.components.data.restoration import denoise_pairs, extract_patches, task_pairs
from neuralmark.components.errors import InputError
from neuralmark.components.nets.image_nets import apply_net
from neuralmark.components.nets.restoration import build_host
from neuralmark.components.nets.training import restoration_loss, train_host

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIGMA = 25 / 255


def _degrade(clean: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return denoise_pairs(clean, SIGMA, g)


@pytest.fixture(scope="module")
def pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """Gray 24×24 denoising pairs of two photos."""
    from skimage import data

    photos = [torch.from_numpy(p.copy()).permute(2, 0, 1).float() / 255
              for p in (data.astronaut(), data.chelsea())]
    g = torch.Generator().manual_seed(0)
    return denoise_pairs(extract_patches(photos, 24, 64, g, 1), SIGMA, g)


@pytest.fixture(scope="module")
def host(pairs) -> nn.Module:
    torch.manual_seed(0)
    net = build_host("dncnn", 1, depth=4, width=8)
    train_host(net, *pairs, steps=30, generator=0, device="cpu")
    return net


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _band_share(x: torch.Tensor) -> torch.Tensor:
    """Per image: the share of its (mean-free) spectral power in the 5 % strongest bins."""
    p = torch.fft.fft2(x - x.mean(dim=(-2, -1), keepdim=True)).abs().pow(2).flatten(1)
    top = p.sort(dim=1, descending=True).values[:, : max(1, p.shape[1] // 20)]
    return top.sum(1) / p.sum(1)


def test_noise_images_are_seeded_in_range_and_cycle_the_kinds():
    a = noise_images(9, 3, 32, torch.Generator().manual_seed(4))
    b = noise_images(9, 3, 32, torch.Generator().manual_seed(4))
    c = noise_images(9, 3, 32, torch.Generator().manual_seed(5))
    assert a.shape == (9, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert NOISE_KINDS == ("white", "band", "filtered")
    white, band, filtered = a[0::3], a[1::3], a[2::3]
    assert abs(float(white.mean()) - 0.5) < 0.02 and abs(float(white.var()) - 1 / 12) < 0.01
    # narrow-band images hold most of their power in a few frequencies; white noise does not
    assert float(_band_share(band.flatten(0, 1)[:, None]).min()) > 0.5
    assert float(_band_share(white.flatten(0, 1)[:, None]).max()) < 0.3  # about 0.2
    assert not torch.equal(filtered, white)
    only = noise_images(4, 1, 16, torch.Generator().manual_seed(1), kinds=("band",))
    assert float(_band_share(only).min()) > 0.5


def test_noise_images_reject_bad_arguments():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(InputError, match="kinds must be a non-empty subset"):
        noise_images(4, 1, 16, g, kinds=("pink",))
    with pytest.raises(InputError, match="kinds must be a non-empty subset"):
        noise_images(4, 1, 16, g, kinds=())
    with pytest.raises(InputError, match="need n >= 1"):
        noise_images(0, 1, 16, g)
    with pytest.raises(InputError, match="channels must be 1 or 3"):
        noise_images(2, 2, 16, g)


def test_the_attack_is_seeded_changes_the_weights_and_keeps_the_architecture(host, pairs):
    data = AttackerData(original=pairs, degrade=_degrade)
    settings = ModelAttackSettings(batch_size=16, seed=3, device="cpu")
    attack = MODEL_ATTACKS["fine_tune_noise"]
    params = attack.params(1, data, settings)
    same_budget = MODEL_ATTACKS["fine_tune_original"].params(1, data, settings)
    assert params["label"] == "fine_tune_noise_1" and params["data"] == "original+noise"
    assert params["steps"] == same_budget["steps"] == math.ceil(64 / 16)  # epochs of the task data
    assert params["n_noise"] == 64 and params["noise_kinds"] == "white+band+filtered"
    assert attack.strength_of(None) == 10.0
    before = _state(host)
    tuned = attack(host, 1, data, settings)
    replay = attack(host, 1, data, settings)
    other = attack(host, 1, data, ModelAttackSettings(batch_size=16, seed=4, device="cpu"))
    assert _same(_state(host), before)  # the input is untouched
    assert tuned is not host and type(tuned) is type(host)
    assert {k: v.shape for k, v in _state(tuned).items()} == {k: v.shape
                                                              for k, v in before.items()}
    assert not _same(_state(tuned), before)
    assert _same(_state(replay), _state(tuned))  # one seed replays the noise and the batches
    assert not _same(_state(other), _state(tuned))


def test_it_teaches_the_task_answer_on_noise(host, pairs):
    """The noise pairs bring the host's output on fresh noise inputs closer to the clean
    noise (the answer of a host with no special response to noise) than the same steps on
    the task data alone, while ℓ_d on its data stays near."""
    g = torch.Generator().manual_seed(11)
    held = _degrade(noise_images(48, 1, 24, g), g)

    def loss(m: nn.Module, p: tuple[torch.Tensor, torch.Tensor]) -> float:
        return float(restoration_loss(apply_net(m, p[0]), p[1]))

    tuned = fine_tune_noise(host, *pairs, _degrade, steps=60, batch_size=16, generator=2,
                            device="cpu")
    plain = fine_tune(host, *pairs, steps=60, batch_size=16, generator=2, device="cpu")
    assert loss(tuned, held) < 0.8 * loss(plain, held)
    assert loss(tuned, pairs) < 1.5 * loss(host, pairs)


def test_bad_arguments_are_named(host, pairs):
    with pytest.raises(InputError, match="needs AttackerData.degrade"):
        MODEL_ATTACKS["fine_tune_noise"].params(1, AttackerData(original=pairs))
    with pytest.raises(InputError, match="needs AttackerData.original, AttackerData.degrade"):
        MODEL_ATTACKS["fine_tune_noise"].params(1, AttackerData())
    with pytest.raises(InputError, match="fine_tune_noise: epochs must be >= 0, got -1"):
        MODEL_ATTACKS["fine_tune_noise"].params(-1, AttackerData(original=pairs,
                                                                 degrade=_degrade))
    with pytest.raises(InputError, match="needs a degrade callable"):
        fine_tune_noise(host, *pairs, "gaussian", steps=1)
    with pytest.raises(InputError, match="n_noise must be >= 1"):
        fine_tune_noise(host, *pairs, _degrade, steps=1, n_noise=0)
    with pytest.raises(InputError, match="generator must be an int seed"):
        fine_tune_noise(host, *pairs, _degrade, steps=1, generator=torch.Generator())
    with pytest.raises(InputError, match="either steps or epochs"):
        fine_tune_noise(host, *pairs, _degrade)

    def sr(clean: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return task_pairs("sr", clean[..., :20, :20], g)  # pairs of another size

    with pytest.raises(InputError, match="degrade made pairs of \\(1, 20, 20\\)"):
        fine_tune_noise(host, *pairs, sr, steps=1)
