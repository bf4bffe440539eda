"""The block-DCT differentiable JPEG (``components/attacks/jpeg_codec.py``) against kornia's
codec and PIL's real one, and its place in the EoT chain (issue #17, session ps7)."""

from __future__ import annotations

import pytest
import torch

from neuralmark.components.attacks.differentiable import DiffJPEG, EoTChain, EoTConfig
from neuralmark.components.attacks.image import JPEG
from neuralmark.components.attacks.jpeg_codec import jpeg_blockdct, quant_tables

QUALITIES = (50.0, 75.0, 90.0)


def test_standard_tables_and_ijg_scaling():
    qy, qc = quant_tables(torch.tensor([50.0, 100.0, 10.0]))
    assert qy.shape == qc.shape == (3, 64)
    assert qy[0, :8].tolist() == [16, 11, 10, 16, 24, 40, 51, 61]   # quality 50: Annex K
    assert qc[0, :4].tolist() == [17, 18, 24, 47] and qc[0, -1] == 99
    assert torch.equal(qy[1], torch.ones(64)) and torch.equal(qc[1], torch.ones(64))
    # quality 10: scale 500, floor((16·500 + 50) / 100) = 80, chroma 99 → 495 clipped to 255
    assert qy[2, 0] == 80 and qc[2, -1] == 255


def test_shape_range_and_gradient(photo_batch):
    x = photo_batch.clone().requires_grad_(True)                      # 2×3×96×128
    y = jpeg_blockdct(x, torch.tensor([50.0, 90.0]))
    yd = y.detach()
    assert y.shape == x.shape and y.dtype == torch.float32
    assert float(yd.min()) >= 0 and float(yd.max()) <= 1
    # it compresses: stronger at quality 50 than at 90, and not the identity
    err = (yd - photo_batch).abs().flatten(1).mean(1)
    assert 0.002 < float(err[1]) < float(err[0]) < 0.05
    (grad,) = torch.autograd.grad((y * torch.randn_like(y)).sum(), x)
    assert torch.isfinite(grad).all() and float(grad.abs().sum()) > 0
    # one quality for the whole batch broadcasts
    shared = jpeg_blockdct(photo_batch, torch.tensor([50.0]))
    assert torch.allclose(shared[:1], jpeg_blockdct(photo_batch[:1], torch.tensor([50.0])))


@pytest.mark.parametrize("quality", QUALITIES)
def test_agrees_with_kornia_and_with_pil(photo_batch, quality):
    """Tolerances: forward MAE to kornia ≤ 0.005 (1.3 grey levels; measured 0.0005–0.0031
    on three skimage photos), gradient cosine to kornia's ≥ 0.9 (measured 0.94–0.999), and no
    farther from PIL's real codec than kornia is (+ 0.001)."""
    import kornia

    x = (photo_batch * 255).round() / 255
    q = torch.full((len(x),), quality)
    ours = jpeg_blockdct(x, q)
    theirs = kornia.enhance.jpeg_codec_differentiable(x, q)
    real = JPEG(quality).apply(x, {})  # PIL (libjpeg) round trip
    assert float((ours - theirs).abs().mean()) <= 0.005
    assert float((ours - real).abs().mean()) <= float((theirs - real).abs().mean()) + 0.001
    w = torch.randn_like(x)
    grads = []
    for codec in (jpeg_blockdct, kornia.enhance.jpeg_codec_differentiable):
        xg = x.clone().requires_grad_(True)
        grads.append(torch.autograd.grad((codec(xg, q) * w).sum(), xg)[0].flatten(1))
    assert float(torch.nn.functional.cosine_similarity(*grads).min()) >= 0.9


def test_bad_input_is_named(photo_batch):
    with pytest.raises(ValueError, match="divisible by 16"):
        jpeg_blockdct(photo_batch[..., :100], torch.tensor([50.0]))
    with pytest.raises(ValueError, match="B×3×H×W"):
        jpeg_blockdct(photo_batch[:, :1], torch.tensor([50.0]))
    with pytest.raises(ValueError, match="qualities"):
        jpeg_blockdct(photo_batch, torch.tensor([50.0, 60.0, 70.0]))
    with pytest.raises(ValueError, match="impl"):
        DiffJPEG(impl="libjpeg")


def test_the_chain_takes_it_as_an_option(photo_batch):
    x = photo_batch[..., :90, :120]                                   # padded to 96×128
    assert EoTConfig().jpeg_impl == "blockdct"                  # the default since ps7
    assert EoTChain(EoTConfig(jpeg_impl="kornia")).attacks[-1].impl == "kornia"
    chain = EoTChain(EoTConfig(p=1.0))
    jpeg = chain.attacks[-1]
    assert isinstance(jpeg, DiffJPEG) and jpeg.impl == "blockdct"
    params = jpeg.sample(len(x), torch.Generator().manual_seed(0))
    y = jpeg.apply(x, params)
    assert y.shape == x.shape
    ref = DiffJPEG(impl="kornia").apply(x, params)
    assert float((y - ref).abs().mean()) <= 0.005
