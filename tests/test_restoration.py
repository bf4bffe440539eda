"""Restoration hosts (DnCNN, RED, VDSR), their trainer and task data (issue #13, seed 002).

Real photos (scikit-image's bundled files), real PNG folders prepared by the prepare
engine, tiny hosts on one CPU thread. The one training claim (a tiny DnCNN beats the
identity) held by more than 1.5 dB for seeds 0–2 when it was written.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from neuralmark.components.data.datasets import PrepareConfig
from neuralmark.components.data.manifest import ManifestRow, write_manifest
from neuralmark.components.data.prepare import prepare_dataset
from neuralmark.components.data.restoration import (
    denoise_pairs,
    extract_patches,
    load_split_images,
    new_data_patches,
    procedural_textures,
    split_patches,
    sr_pairs,
    task_pairs,
    to_channels,
)
from neuralmark.components.data.sample import texture_image
from neuralmark.components.errors import InputError
from neuralmark.components.metrics import psnr
from neuralmark.components.nets.restoration import (
    DNCNN_BN_MIN,
    HOST_ARCHS,
    HOST_DEFAULTS,
    build_host,
    host_channels,
)
from neuralmark.components.nets.training import restoration_loss, task_psnr, train_host

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY = {"dncnn": (5, 16), "red": (4, 16), "vdsr": (5, 16)}


@pytest.fixture(scope="module")
def photos() -> list[torch.Tensor]:
    """Four real photos, 3×H×W in [0, 1] (train: the first three; held out: the last)."""
    from skimage import data

    return [torch.from_numpy(p.copy()).permute(2, 0, 1).float() / 255
            for p in (data.astronaut(), data.chelsea(), data.rocket(), data.coffee())]


def _convs(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]


# -- hosts ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", HOST_ARCHS)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", ["paper", "tiny"])
def test_hosts_keep_the_shape_and_have_the_declared_depth(arch, channels, size):
    depth, width = HOST_DEFAULTS[arch] if size == "paper" else TINY[arch]
    net = build_host(arch, channels, None if size == "paper" else depth,
                     None if size == "paper" else width)
    x = torch.rand(2, channels, 19, 26)  # odd sizes: any H×W
    with torch.no_grad():
        assert net(x).shape == x.shape
    convs = _convs(net)
    assert len(convs) == depth
    assert {c.out_channels for c in convs[:-1]} == {width}
    assert host_channels(net) == channels == convs[-1].out_channels


def test_dncnn_bn_init_is_its_papers():
    torch.manual_seed(0)
    net = build_host("dncnn", 1, depth=6, width=32)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 4
    for bn in bns:
        assert (bn.weight.abs() >= DNCNN_BN_MIN).all() and (bn.bias == 0).all()
        assert (bn.weight > 0).any() and (bn.weight < 0).any()  # N(0, ·) keeps both signs
    assert all(c.bias is None for c in _convs(net)[1:-1])  # BN follows: no bias


@pytest.mark.parametrize("arch", ["red", "vdsr"])
def test_red_and_vdsr_start_as_the_identity(arch):
    net = build_host(arch, 3, *TINY[arch])
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(net(x), x)


def test_red_skips_carry_the_encoder_to_the_decoder():
    """With the main path cut after encoder layer 2, the body still sees x: via h_2's skip."""
    torch.manual_seed(0)
    net = build_host("red", 1, depth=6, width=8)  # n = 3: one inner skip, h_2 → g_1
    with torch.no_grad():
        for p in net.decoder[-1].parameters():  # a non-zero output layer to observe the body
            nn.init.normal_(p, std=0.1)
        for p in net.encoder[2].parameters():  # h_3 = ReLU(0) = 0: nothing passes below h_2
            nn.init.zeros_(p)
        x1, x2 = torch.rand(1, 1, 12, 12), torch.rand(1, 1, 12, 12)
        body1, body2 = net(x1) - x1, net(x2) - x2
    assert not torch.allclose(body1, body2)


def test_build_host_rejects_what_it_cannot_build():
    with pytest.raises(InputError, match="unknown host architecture 'unet'"):
        build_host("unet")
    with pytest.raises(InputError, match="red: depth must be even"):
        build_host("red", depth=5)
    with pytest.raises(InputError, match="channels must be 1 .* or 3"):
        build_host("vdsr", channels=2)
    with pytest.raises(InputError, match="dncnn: depth must be >= 2"):
        build_host("DnCNN", depth=1)


# -- trainer -------------------------------------------------------------------------------------

def test_restoration_loss_is_the_seeds_l_d():
    out, y = torch.rand(4, 1, 5, 6), torch.rand(4, 1, 5, 6)
    by_hand = sum(((out[i] - y[i]) ** 2).sum() for i in range(4)) / (2 * 4)
    assert torch.allclose(restoration_loss(out, y), by_hand)


def test_a_tiny_dncnn_beats_the_identity_on_held_out_noisy_patches(photos):
    g = torch.Generator().manual_seed(0)
    clean = extract_patches(photos[:3], 24, 256, g, channels=1)
    noisy, clean = denoise_pairs(clean, 25 / 255, g)
    test_clean = extract_patches(photos[3:], 24, 64, torch.Generator().manual_seed(1), 1)
    test_noisy, test_clean = denoise_pairs(test_clean, 25 / 255, torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    net = build_host("dncnn", 1, *TINY["dncnn"])
    seen: list[dict[str, float]] = []

    class Sink:
        def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
            seen.append(metrics)

    metrics = train_host(net, noisy, clean, steps=40, lr=1e-3, batch_size=16, generator=0,
                         callbacks=[Sink()], device="cpu")
    assert metrics["steps"] == 40 and metrics["loss_end"] < metrics["loss_start"]
    assert seen and all("host_loss" in m for m in seen)
    identity = task_psnr(nn.Identity(), test_noisy, test_clean)
    assert task_psnr(net, test_noisy, test_clean) > identity
    assert not net.training  # left in eval mode


def test_task_psnr_is_the_mean_psnr_of_clamped_outputs():
    x, y = torch.rand(3, 3, 8, 8) * 1.2 - 0.1, torch.rand(3, 3, 8, 8)
    assert task_psnr(nn.Identity(), x, y) == pytest.approx(float(psnr(x.clamp(0, 1), y).mean()))


def test_trainer_rejects_pairs_the_host_cannot_take():
    net = build_host("vdsr", 3, *TINY["vdsr"])
    gray = torch.rand(4, 1, 8, 8)
    with pytest.raises(InputError, match="takes 3-channel images, the data has 1"):
        train_host(net, gray, gray, steps=1)
    with pytest.raises(InputError, match="differ in shape"):
        train_host(net, torch.rand(4, 3, 8, 8), torch.rand(4, 3, 9, 8), steps=1)
    with pytest.raises(InputError, match="targets must lie in"):
        task_psnr(net, torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8) + 1)


# -- task data -----------------------------------------------------------------------------------

def test_patches_are_seeded_crops_of_the_images():
    coded = torch.arange(3 * 20 * 30, dtype=torch.float32).reshape(1, 3, 20, 30) / 1800
    a = extract_patches(coded, 8, 6, torch.Generator().manual_seed(3))
    b = extract_patches(coded, 8, 6, torch.Generator().manual_seed(3))
    c = extract_patches(coded, 8, 6, torch.Generator().manual_seed(4))
    assert a.shape == (6, 3, 8, 8) and torch.equal(a, b) and not torch.equal(a, c)
    for patch in a:  # each patch sits in the image at the place its first value names
        idx = int(round(float(patch[0, 0, 0]) * 1800))
        top, left = divmod(idx, 30)
        assert torch.equal(patch, coded[0, :, top:top + 8, left:left + 8])
    gray = extract_patches(coded, 8, 6, torch.Generator().manual_seed(3), channels=1)
    luma = 0.299 * a[:, :1] + 0.587 * a[:, 1:2] + 0.114 * a[:, 2:]
    assert gray.shape == (6, 1, 8, 8) and torch.allclose(gray, luma, atol=1e-6)
    assert torch.equal(to_channels(gray, 3)[:, 2:], gray)
    with pytest.raises(InputError, match="16×16 patches do not fit"):
        extract_patches(coded[..., :12, :], 16, 1, torch.Generator())


def test_patches_from_a_folder_mixing_grey_and_colour_images():
    colour = torch.rand(3, 20, 24)
    grey = torch.rand(1, 16, 18)
    for channels in (1, 3):
        patches = extract_patches([colour, grey], 8, 40, torch.Generator().manual_seed(0),
                                  channels)
        assert patches.shape == (40, channels, 8, 8)
    rgb = extract_patches([grey], 8, 4, torch.Generator().manual_seed(1), channels=3)
    assert torch.equal(rgb[:, 0], rgb[:, 2])  # a grey image repeated, not mixed up
    with pytest.raises(InputError, match="1 or 3 channels"):
        extract_patches([torch.rand(4, 16, 16)], 8, 1, torch.Generator())
    with pytest.raises(InputError, match="C×H×W"):
        extract_patches([torch.rand(16, 16)], 8, 1, torch.Generator())


def test_denoise_pairs_add_seeded_gaussian_noise_of_sigma():
    clean = torch.rand(4, 3, 32, 32)
    noisy, target = denoise_pairs(clean, 25 / 255, torch.Generator().manual_seed(0))
    again, _ = denoise_pairs(clean, 25 / 255, torch.Generator().manual_seed(0))
    assert torch.equal(target, clean) and torch.equal(noisy, again)
    noise = noisy - clean
    n = noise.numel()  # the std of n normal draws is off by ~σ/√(2n): 5% is > 8 of those
    assert abs(float(noise.std()) / (25 / 255) - 1) < 8 / math.sqrt(2 * n)
    assert noisy.min() < 0 or noisy.max() > 1  # not clipped unless asked
    clipped, _ = denoise_pairs(clean, 25 / 255, torch.Generator().manual_seed(0), clip=True)
    assert torch.equal(clipped, noisy.clamp(0, 1))
    with pytest.raises(InputError, match="sigma is in \\[0, 1\\] units"):
        denoise_pairs(clean, 25, torch.Generator())


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_sr_pairs_have_the_hr_size_and_bicubic_inputs(scale, photos):
    hr = photos[0][None, :, 100:125, 200:226]  # 25×26: not a multiple of 3 or 4
    up, target = sr_pairs(hr, scale)
    h, w = 25 - 25 % scale, 26 - 26 % scale
    assert up.shape == target.shape == (1, 3, h, w)
    assert torch.equal(target, hr[..., :h, :w])
    lr = F.interpolate(target, scale_factor=1 / scale, mode="bicubic", antialias=True)
    assert torch.allclose(up, F.interpolate(lr.clamp(0, 1), size=(h, w), mode="bicubic",
                                            antialias=True).clamp(0, 1))
    assert float(psnr(up, target)) < 60  # information was lost
    assert torch.equal(task_pairs("sr", hr, torch.Generator(), scale=scale)[0], up)


def test_bad_task_data_is_named():
    with pytest.raises(InputError, match="scale must be an integer >= 2"):
        sr_pairs(torch.rand(1, 3, 8, 8), 1)
    with pytest.raises(InputError, match="unknown restoration task 'deblur'"):
        task_pairs("deblur", torch.rand(1, 3, 8, 8), torch.Generator())
    with pytest.raises(InputError, match="lie in \\[0, 1\\]"):
        denoise_pairs(torch.rand(1, 3, 8, 8) * 2, 0.1, torch.Generator())


def _texture_png(path, seed: int, size: int = 48) -> None:
    arr = texture_image(np.random.default_rng(seed), size)
    Image.fromarray(np.clip(np.rint(arr * 255), 0, 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def kth_tips(tmp_path_factory):
    """A KTH-TIPS-layout folder (one sub-folder per material), prepared by the engine."""
    root = tmp_path_factory.mktemp("kth") / "KTH_TIPS"
    for i, material in enumerate(("cotton", "cracker", "sponge")):
        (root / material).mkdir(parents=True)
        for j in range(2):
            _texture_png(root / material / f"{material}_scale_{j}.png", 10 * i + j)
    report = prepare_dataset("image_folder", root, root.parent / "prepared",
                             PrepareConfig(size=32, workers=1))
    return report


def test_new_data_comes_from_a_prepared_texture_set(kth_tips):
    folder = kth_tips.manifest.rsplit("/", 1)[0]
    images = load_split_images(folder, "train")
    assert images and all(x.shape == (3, 32, 32) for x in images)
    new = new_data_patches(12, 16, torch.Generator().manual_seed(0), channels=3,
                           manifest=folder)
    assert not new.procedural and new.source == f"prepared:{kth_tips.manifest}#train"
    assert new.patches.shape == (12, 3, 16, 16)
    same = split_patches(kth_tips.manifest, "train", 16, 12, torch.Generator().manual_seed(0))
    assert torch.equal(new.patches, same)
    for patch in new.patches:  # every patch is a crop of a prepared image
        windows = [x.unfold(1, 16, 1).unfold(2, 16, 1) for x in images]  # 3 17 17 16 16
        assert any((w - patch[:, None, None]).abs().amax(dim=(0, 3, 4)).min() < 1e-6
                   for w in windows)
    with pytest.raises(InputError, match="no manifest at"):
        new_data_patches(4, 16, torch.Generator(), manifest=kth_tips.root + "/missing")


def test_new_data_is_procedural_textures_without_a_prepared_set():
    new = new_data_patches(6, 24, torch.Generator().manual_seed(0), channels=1)
    assert new.procedural and new.source == "procedural:textures"
    assert new.patches.shape == (6, 1, 24, 24)
    assert 0 <= new.patches.min() and new.patches.max() <= 1
    again = procedural_textures(6, 24, torch.Generator().manual_seed(0), channels=1)
    assert torch.equal(new.patches, again)
    assert new.patches.flatten(1).std(dim=1).min() > 0  # textures, not flat fields


def test_sample_manifest_patches(tmp_path):
    rows = []
    for i, split in enumerate(("train", "train", "test")):
        path = tmp_path / split / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        _texture_png(path, i, size=40 + 8 * i)  # sizes differ: kept as they are
        rows.append(ManifestRow(f"{split}/{i}.png", "0" * 64, 40 + 8 * i, 40 + 8 * i, "RGB",
                                split, "procedural:texture", str(i)))
    write_manifest(rows, tmp_path / "manifest.csv")
    train = load_split_images(tmp_path / "manifest.csv", "train")
    assert [tuple(x.shape) for x in train] == [(3, 40, 40), (3, 48, 48)]
    patches = split_patches(tmp_path, "test", 20, 5, torch.Generator(), channels=1)
    assert patches.shape == (5, 1, 20, 20)
    with pytest.raises(InputError, match="split 'val' has no image"):
        load_split_images(tmp_path, "val")
