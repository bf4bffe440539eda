"""pgd_signer's embed-speed options (issue #17): the sparse EoT chain and early stopping."""

from __future__ import annotations

import pytest
import torch

from neuralmark.components.attacks.differentiable import EoTChain, EoTConfig
from neuralmark.components.errors import InputError
from neuralmark.components.methods import WatermarkKey, build
from neuralmark.components.methods.pgd_signer import PGDSigner, signing


def smoke(**over):
    torch.manual_seed(0)
    return build("pgd_signer", {**PGDSigner.smoke_config, **over})


def _small(photo_batch: torch.Tensor) -> torch.Tensor:
    """Four distinct 64² views of the real photo crops."""
    x = torch.nn.functional.interpolate(photo_batch, size=(64, 64), mode="bilinear",
                                        antialias=True)
    return torch.cat([x, x.flip(-1)])


def test_only_on_chain_skips_switched_off_views_and_matches_the_dense_chain(photo_batch):
    x = _small(photo_batch).repeat(2, 1, 1, 1).requires_grad_(True)      # 8 views
    chain = EoTChain(EoTConfig(p=0.5))
    params = chain.sample(len(x), torch.Generator().manual_seed(1))
    for k, v in params.items():
        if k.endswith(".on"):
            v[:2] = 0                                   # two views with every attack off
    dense = chain.apply(x, params)
    sparse = chain.apply(x, params, only_on=True)
    # switched off, an attack is the identity up to resampling: skipped, the view is x
    assert torch.equal(sparse[:2], x[:2].detach())
    assert (dense[:2] - x[:2]).abs().max() < 1e-4
    # switched on, the same draw gives the same view (rounding of the skipped resamplings)
    assert (sparse - dense).abs().max() < 1e-3
    (grad,) = torch.autograd.grad(sparse.sum(), x)
    assert torch.equal(grad[:2], torch.ones_like(grad[:2]))
    assert float(grad[2:].abs().sum()) > 0


def test_defaults_keep_the_dense_chain_and_every_step():
    c = PGDSigner.Config()
    assert c.eot_only_on is False and c.early_stop == 0
    with pytest.raises(InputError, match="early_stop"):
        smoke().with_config(early_stop=-1)


def test_early_stop_that_never_triggers_changes_nothing(photo_batch):
    x, key = _small(photo_batch)[:2], WatermarkKey("owner", 3)
    plain = smoke(pgd_steps=6, eot_samples=2, margin=1e3)
    waiting = smoke(pgd_steps=6, eot_samples=2, margin=1e3, early_stop=1)
    assert torch.equal(plain.embed(x, key), waiting.embed(x, key))


def _count_steps(m: PGDSigner, key: WatermarkKey) -> list[int]:
    calls: list[int] = []
    m.decoder_for(key).register_forward_hook(lambda _m, inp, _o: calls.append(len(inp[0])))
    return calls


def test_early_stop_stops_and_the_mark_still_verifies(photo_batch):
    """Under a mild EoT and a small margin every view of an image clears the margin within
    the budget: the images stop one by one, before ``pgd_steps``, and their marks verify as
    the marks made with every step do."""
    x, key = _small(photo_batch), WatermarkKey("owner", 3)
    over = {"width": 32, "pgd_steps": 40, "eot_samples": 2, "margin": 0.5,
            "psnr_target": 32.0, "eot": {"p": 0.05}}
    full, early = smoke(**over), smoke(**over, early_stop=2)
    for m in (full, early):
        m.set_whitening_set(x.repeat(2, 1, 1, 1))
    batches = _count_steps(early, key)                 # images signed at each step
    marked = early.embed(x, key)
    assert len(batches) < over["pgd_steps"] and batches[0] == 2 * len(x)
    assert all(a >= b for a, b in zip(batches[:-1], batches[1:], strict=True))  # none resumes
    assert len(set(batches)) > 2                       # stopped image by image
    ref = full.verify(full.embed(x, key), key)
    got = early.verify(marked, key)
    assert all(v.detected for v in ref)
    assert all(v.detected for v in got), [v.reason for v in got]


def test_early_stop_refuses_a_data_parallel_shard(photo_batch):
    m = smoke()
    xw = _small(photo_batch)[:2]
    with pytest.raises(ValueError, match="sharded"):
        signing.sign_working(m, xw, torch.zeros(2, m.config.n_bits), 2, sharded=True,
                             early_stop=1)


def _same_draw(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stochastic_eot_keeps_k_attacks_per_view_deterministically():
    chain = EoTChain(EoTConfig(p=0.5))
    n = len(chain.attacks)

    def draw(seed: int, k: int) -> dict:
        return chain.sample(400, torch.Generator().manual_seed(seed), per_view=k)

    assert _same_draw(draw(3, 2), draw(3, 2))                  # same seed, same draw
    assert not _same_draw(draw(3, 2), draw(4, 2))
    for k in (1, 2, 4):
        on = torch.stack([v for key, v in draw(5, k).items() if key.endswith(".on")], 1)
        # p·n / k ≥ 1 for these k: every kept attack is on, so exactly k per view
        assert torch.equal(on.sum(1), torch.full((400,), float(k)))
        # each attack is kept about equally often (a uniform choice of k of n)
        assert float((on.mean(0) - k / n).abs().max()) < 0.07
    # k = 6 > p·n: a kept attack is on with probability p·n/k, so an attack is on at the
    # chain's rate p (0.5) and about p·n = 4 attacks are on per view
    on = torch.stack([v for key, v in draw(5, 6).items() if key.endswith(".on")], 1)
    assert float(on.sum(1).max()) <= 6 and abs(float(on.mean()) - 0.5) < 0.03
    with pytest.raises(ValueError, match="per_view"):
        chain.sample(4, per_view=-1)


def test_stochastic_eot_with_every_attack_is_todays_chain(photo_batch):
    chain = EoTChain(EoTConfig(p=0.5))
    today = chain.sample(16, torch.Generator().manual_seed(7))
    for k in (0, len(chain.attacks), 20):
        assert _same_draw(today, chain.sample(16, torch.Generator().manual_seed(7), per_view=k))
    # and signing with it set to every attack is bit-identical to today's signing
    xw, key = _small(photo_batch)[:2], WatermarkKey("owner", 3)
    over = {"pgd_steps": 4, "eot_samples": 3}
    assert PGDSigner.Config().eot_attacks_per_view == 2        # the default since ps7
    assert torch.equal(smoke(**over, eot_attacks_per_view=0).embed(xw, key),
                       smoke(**over, eot_attacks_per_view=8).embed(xw, key))


def test_stochastic_eot_signing_runs_only_the_kept_attacks(photo_batch, monkeypatch):
    xw, key = _small(photo_batch)[:2], WatermarkKey("owner", 3)
    m = smoke(pgd_steps=5, eot_samples=4, eot_attacks_per_view=1)
    seen: list[int] = []
    for attack in m.eot.attacks:
        orig = attack.apply
        monkeypatch.setattr(attack, "apply",
                            lambda x, p, _o=orig: (seen.append(len(x)), _o(x, p))[1])
    marked = m.embed(xw, key)
    assert marked.shape == xw.shape and torch.isfinite(marked).all()
    # 5 steps × 6 attacked views (2 images × 3), one attack each: 30 view-attacks in all,
    # each run only on its views (the sparse chain), never on the whole 8-view batch
    assert sum(seen) == 30 and max(seen) < 8
