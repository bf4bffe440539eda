"""Every differentiable JPEG goes through ``attacks/jpeg_codec.jpeg_differentiable``: the
stochastic chain (anti_forward) and the clean-variety operation (output_mark) keep kornia's
codec by default, bit for bit, and take the block-DCT codec when asked."""

from __future__ import annotations

import kornia
import kornia.augmentation as K
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from neuralmark.components.attacks.jpeg_codec import jpeg_blockdct, jpeg_differentiable
from neuralmark.components.attacks.stochastic import StochasticAugConfig, StochasticAugmentation
from neuralmark.components.data.clean_variety import generic_operation, varied_clean_images
from neuralmark.components.data.sample import SampleDataConfig, build_sample_dataset
from neuralmark.components.errors import InputError
from neuralmark.components.methods.output_mark.config import OutputMarkConfig
from neuralmark.components.methods.output_mark.training import clean_variety_images
from neuralmark.components.metrics import psnr

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Smooth images with edges (a JPEG's home ground), ``n×3×h×w`` in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, max(2, h // 8), max(2, w // 8), generator=g)
    return F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)


def test_jpeg_differentiable_dispatches_and_pads_the_block_dct():
    x, q = _images(2, 40, 56), torch.tensor([50.0, 80.0])
    assert torch.equal(
        jpeg_differentiable(x, q), kornia.enhance.jpeg_codec_differentiable(x, q)
    )  # kornia by default
    padded = F.pad(x, (0, 8, 0, 8), mode="reflect")  # 48×64: whole MCUs
    y = jpeg_differentiable(x, q, "blockdct")
    assert y.shape == x.shape
    assert torch.equal(y, jpeg_blockdct(padded, q)[..., :40, :56])
    with pytest.raises(ValueError, match="unknown differentiable JPEG 'pil'"):
        jpeg_differentiable(x, q, "pil")  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [(32, 32), (40, 56)])
def test_stochastic_jpeg_default_is_kornias_random_jpeg_bit_for_bit(size):
    """The chain's JPEG (kornia's draw and gate, the routed codec) against kornia's own
    ``RandomJPEG`` replaying the same draw: the same output and the same input gradient."""
    h, w = size
    chain = StochasticAugmentation(StochasticAugConfig(p=0.75, enabled=("jpeg",)))
    draw = chain.sample(6, torch.Generator().manual_seed(3), size)
    jpeg = draw["params"]["jpeg"]
    assert 0 < int(jpeg["batch_prob"].sum()) < 6  # the gate leaves some images alone
    x = _images(6, h, w).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    y = chain.apply(x, draw)
    ph, pw = (-h) % 16, (-w) % 16
    padded = F.pad(x_ref, (0, pw, 0, ph), mode="reflect") if ph or pw else x_ref
    ref = K.RandomJPEG((50.0, 100.0), p=0.75)(padded, params=jpeg)[..., :h, :w].clamp(0, 1)
    assert torch.equal(y, ref)
    weights = torch.linspace(-1, 1, y.numel()).view_as(y)
    (y * weights).sum().backward()
    (ref * weights).sum().backward()
    assert x.grad is not None and torch.equal(x.grad, x_ref.grad)


def test_stochastic_jpeg_takes_the_block_dct_codec_when_asked():
    x = _images(4, 48, 48)
    kornias = StochasticAugmentation(StochasticAugConfig(p=1.0, enabled=("jpeg",)))
    blockdct = StochasticAugmentation(
        StochasticAugConfig(p=1.0, enabled=("jpeg",), jpeg_impl="blockdct")
    )
    draw = kornias.sample(4, torch.Generator().manual_seed(5), (48, 48))
    a, b = kornias.apply(x, draw), blockdct.apply(x, draw)
    assert not torch.equal(a, b)  # another codec ...
    assert float(psnr(b, a).min()) > 30  # ... of the same round trip at the same qualities
    assert torch.equal(b, blockdct.apply(x, draw))  # the draw replays
    with pytest.raises(ValidationError, match="jpeg_impl"):
        StochasticAugConfig(jpeg_impl="pil")


def test_clean_variety_jpeg_default_is_kornias_and_block_dct_is_selectable(tmp_path):
    x = _images(3, 24, 24)
    q = torch.full((3,), float(np.random.default_rng(0).uniform(30, 90)))  # the op's draw
    ref = kornia.enhance.jpeg_codec_differentiable(x, q).clamp(0, 1)
    assert torch.equal(generic_operation(x, "jpeg", np.random.default_rng(0)), ref)
    fast = generic_operation(x, "jpeg", np.random.default_rng(0), jpeg_impl="blockdct")
    assert fast.shape == x.shape and not torch.equal(fast, ref)
    assert float(psnr(fast, ref).min()) > 28
    with pytest.raises(InputError, match="unknown jpeg_impl 'pil'"):
        generic_operation(x, "jpeg", np.random.default_rng(0), jpeg_impl="pil")  # type: ignore[arg-type]
    manifest = build_sample_dataset(
        tmp_path / "d", SampleDataConfig(size=32, crops_per_photo=1, n_procedural=3)
    )
    kwargs = {"crops_per_photo": 1, "n_procedural": 4, "processed": 1.0, "seed": 1}
    default, groups = varied_clean_images(manifest, 32, **kwargs)
    explicit, _ = varied_clean_images(manifest, 32, jpeg_impl="kornia", **kwargs)
    other, other_groups = varied_clean_images(manifest, 32, jpeg_impl="blockdct", **kwargs)
    assert torch.equal(default, explicit) and groups == other_groups
    changed = (default != other).flatten(1).any(1)
    assert 0 < int(changed.sum()) < len(default)  # only the JPEG-processed images move
    with pytest.raises(InputError, match="unknown jpeg_impl"):
        varied_clean_images(manifest, 32, jpeg_impl="pil", **kwargs)  # type: ignore[arg-type]
    # output_mark's config names the codec (clean_variety_jpeg): the default is kornia's,
    # the recipe's images bit for bit; blockdct reaches the operation; a typo names the field
    cfg = OutputMarkConfig(clean_variety=True, working_size=32, seed=1)
    assert cfg.clean_variety_jpeg == "kornia"
    recipe, recipe_groups = clean_variety_images(cfg, str(manifest))
    assert torch.equal(recipe, varied_clean_images(manifest, 32, seed=1)[0])
    fast_cfg = cfg.model_copy(update={"clean_variety_jpeg": "blockdct"})
    fast_recipe, fast_groups = clean_variety_images(fast_cfg, str(manifest))
    assert fast_groups == recipe_groups
    assert torch.equal(fast_recipe, varied_clean_images(manifest, 32, seed=1,
                                                        jpeg_impl="blockdct")[0])
    assert not torch.equal(fast_recipe, recipe)
    with pytest.raises(ValidationError, match="clean_variety_jpeg"):
        OutputMarkConfig(clean_variety_jpeg="pil")
