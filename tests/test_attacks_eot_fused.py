"""Cheaper EoT calls per PGD step (issue #17, session ps8): the fused geometric warp, the
depthwise-convolution blur and the shared draw, each against the calls they replace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from neuralmark.components.attacks.base import select_rows
from neuralmark.components.attacks.differentiable import (
    EoTChain,
    EoTConfig,
    gaussian_blur_rows,
)
from neuralmark.components.methods import WatermarkKey, build
from neuralmark.components.methods.pgd_signer import PGDSigner

pytestmark = pytest.mark.usefixtures("one_torch_thread")
GEOMETRIC = (0, 1, 2)  # crop, zoom, rotate: the attacks FusedWarp replaces


@pytest.fixture()
def photos(photo) -> torch.Tensor:
    """Six 128² views of the real photo (the same photo, so each draw differs only)."""
    x = torch.from_numpy(photo).permute(2, 0, 1).float().unsqueeze(0) / 255
    return F.interpolate(x, size=(128, 128), mode="area").repeat(6, 1, 1, 1)


def _draw(chain: EoTChain, n: int, seed: int, on: tuple[int, ...]) -> dict:
    """A p = 1 draw with only the attacks ``on`` switched on (for every view)."""
    params = chain.sample(n, torch.Generator().manual_seed(seed))
    for i in range(len(chain.attacks)):
        params[f"{i}.on"] = torch.full((n,), float(i in on))
    return params


def _three_calls(chain: EoTChain, x: torch.Tensor, params: dict) -> torch.Tensor:
    """The chain's crop, zoom and rotate as their own kornia calls (today's path)."""
    for _, attack, sub in chain.stages(params)[:3]:
        x = attack.apply(x, sub)
    return x


def test_fused_warp_is_each_kornia_call_alone_and_their_composition(photos):
    """Tolerances: one attack alone, the fused warp is its kornia call up to float rounding
    (measured max 5e-5 in the interior, MAE 1e-6); all three on, the three calls resample
    three times and the fused warp once, so they differ by that smoothing: MAE ≤ 0.015 on the
    photo (measured 0.005–0.010), ≤ 0.003 once the photo is low-passed (measured 0.0015)."""
    dense = EoTChain(EoTConfig(p=1.0))
    fused = EoTChain(EoTConfig(p=1.0, fused_warp=True))
    assert [name for name, *_ in fused.stages(dense.sample(2))][:2] == ["warp", "resize"]
    for i in GEOMETRIC:
        params = _draw(dense, len(photos), seed=i, on=(i,))
        ref, got = _three_calls(dense, photos, params), fused.apply(photos, params)
        assert float((ref - got).abs().mean()) < 1e-5
        assert float((ref - got)[..., 4:-4, 4:-4].abs().max()) < 1e-3
    params = _draw(dense, len(photos), seed=5, on=GEOMETRIC)
    ref, got = _three_calls(dense, photos, params), fused.apply(photos, params)
    assert float((ref - photos).abs().mean()) > 0.1          # the draw does move the photo
    assert float((ref - got).abs().mean()) <= 0.015
    import kornia

    smooth = kornia.filters.gaussian_blur2d(photos, 13, (2.0, 2.0))
    diff = _three_calls(dense, smooth, params) - fused.apply(smooth, params)
    assert float(diff.abs().mean()) <= 0.003


def test_fused_warp_passes_gradients_like_the_three_calls(photos):
    dense = EoTChain(EoTConfig(p=1.0))
    fused = EoTChain(EoTConfig(p=1.0, fused_warp=True))
    params = _draw(dense, len(photos), seed=9, on=GEOMETRIC)
    w = torch.randn_like(photos)
    grads = []
    for run in (lambda x: _three_calls(dense, x, params), lambda x: fused.apply(x, params)):
        x = photos.clone().requires_grad_(True)
        (g,) = torch.autograd.grad((run(x) * w).sum(), x)
        assert torch.isfinite(g).all() and float(g.abs().sum()) > 0
        grads.append(g.flatten(1))
    assert float(F.cosine_similarity(grads[0], grads[1]).min()) > 0.8


def test_fused_warp_in_the_sparse_chain_runs_once_on_the_views_that_drew_geometry(photos):
    fused = EoTChain(EoTConfig(p=1.0, fused_warp=True))
    params = _draw(fused, len(photos), seed=2, on=GEOMETRIC)
    for i in GEOMETRIC:                               # views 0, 1: no geometric attack
        params[f"{i}.on"][:2] = 0
    params["2.on"][2:4] = 0                           # views 2, 3: crop and zoom only
    calls: list[int] = []
    orig = fused.warp.apply
    fused.warp.apply = lambda x, p: (calls.append(len(x)), orig(x, p))[1]
    out = fused.apply(photos, params, only_on=True)
    assert calls == [4] and torch.equal(out[:2], photos[:2])
    rows = torch.arange(2, 6)
    alone = orig(photos[2:], select_rows(fused.stages(params)[0][2], rows, len(photos)))
    assert torch.equal(out[2:], alone)


def test_depthwise_blur_is_kornias_filter_with_a_sigma_per_view(photos):
    import kornia

    x = photos.clone().requires_grad_(True)
    sigma = torch.tensor([0.1, 0.4, 0.8, 1.1, 1.3, 1.5])
    ours = gaussian_blur_rows(x, 11, sigma)
    theirs = kornia.filters.gaussian_blur2d(x, 11, sigma.view(-1, 1).repeat(1, 2))
    assert float((ours - theirs).detach().abs().max()) < 1e-5
    w = torch.randn_like(ours)
    (g1,) = torch.autograd.grad((ours * w).sum(), x)
    (g2,) = torch.autograd.grad((theirs * w).sum(), x)
    assert float((g1 - g2).abs().max()) < 1e-5
    with pytest.raises(ValueError, match="odd"):
        gaussian_blur_rows(photos, 10, sigma)
    with pytest.raises(ValueError, match="impl"):
        EoTChain(EoTConfig()).attacks[5].__class__(1.5, 0.5, "fft")


def test_shared_draw_gives_every_view_the_same_attacks():
    chain = EoTChain(EoTConfig(p=0.5))
    n = len(chain.attacks)
    for seed in range(6):
        params = chain.sample(12, torch.Generator().manual_seed(seed), per_view=2, shared=True)
        on = torch.stack([params[f"{i}.on"] for i in range(n)], 1)         # 12 × 8
        assert torch.equal(on, on[:1].expand_as(on)) and float(on[0].sum()) == 2
    # over many steps each attack is kept about as often as the per-view draw keeps it
    kept = torch.stack([
        torch.stack([chain.sample(3, torch.Generator().manual_seed(s), per_view=2,
                                  shared=True)[f"{i}.on"][0] for i in range(n)])
        for s in range(200)])
    assert float((kept.mean(0) - 2 / n).abs().max()) < 0.1   # 3.3 standard errors
    with pytest.raises(ValueError, match="shared"):
        chain.sample(4, per_view=0, shared=True)


def test_defaults_and_the_default_chain_is_the_per_attack_loop(photos):
    """The fused warp and the conv blur ship off; the shared draw is embed's default since
    ps8 (it passed the acceptance rule, model card); the chain's apply is unchanged."""
    c = PGDSigner.Config()
    assert c.eot.fused_warp is False and c.eot.blur_impl == "kornia"
    assert c.eot_shared_draw is True and c.eot_attacks_per_view == 2
    chain = EoTChain(EoTConfig())
    assert chain.warp is None and [n for n, *_ in chain.stages(chain.sample(2))] == [
        a.name for a in chain.attacks]
    params = chain.sample(len(photos), torch.Generator().manual_seed(4))
    y = photos
    for i, attack in enumerate(chain.attacks):       # the chain's apply before ps8
        y = attack.apply(y, {k.split(".", 1)[1]: v for k, v in params.items()
                             if k.startswith(f"{i}.")})
    assert torch.equal(chain.apply(photos, params), y)


def test_shared_draw_changes_nothing_when_every_attack_is_kept(photos):
    x, key = photos[:2, :, :64, :64].contiguous(), WatermarkKey("owner", 3)
    over = {**PGDSigner.smoke_config, "pgd_steps": 3, "eot_samples": 3,
            "eot_attacks_per_view": 0}
    torch.manual_seed(0)
    plain = build("pgd_signer", over).embed(x, key)
    torch.manual_seed(0)
    assert torch.equal(build("pgd_signer", {**over, "eot_shared_draw": True}).embed(x, key),
                       plain)


def test_signing_with_every_option_makes_a_mark(photos):
    torch.manual_seed(0)
    x, key = photos[:2, :, :64, :64].contiguous(), WatermarkKey("owner", 3)
    m = build("pgd_signer", {**PGDSigner.smoke_config, "pgd_steps": 6, "eot_samples": 3,
                             "eot_shared_draw": True,
                             "eot": {"fused_warp": True, "blur_impl": "conv"}})
    marked = m.embed(x, key)
    assert marked.shape == x.shape and torch.isfinite(marked).all()
    assert float((marked - x).abs().max()) > 0
