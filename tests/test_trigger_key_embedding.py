"""trigger_key's embedding loop: the fine-tuning-aware (lookahead) term (issue #13).

Micro hosts, a few steps: the lookahead adds exactly λ·w·∇ℓ_w at the shadow's weights,
leaves the main loop's batches and the λ = 0 reference untouched, and is refused with
bad settings. (Whether it keeps a mark through fine-tuning is measured in the
MODEL_CARD with ``scripts/measure_trigger_key_finetune_aware.py``.)
"""

from __future__ import annotations

import pytest
import torch

from neuralmark.components.errors import InputError
from neuralmark.components.methods import build
from neuralmark.components.methods.trigger_key import embedding
from neuralmark.components.nets.restoration import build_host

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pairs(n: int = 16, side: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(n, 1, side, side, generator=g)
    return (clean + 0.1 * torch.randn(n, 1, side, side, generator=g)).clamp(0, 1), clean


def _host(arch: str = "red") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_host(arch, 1, 4, 4).eval()


def _mark_loss() -> embedding.MarkLoss:
    g = torch.Generator().manual_seed(1)
    k, s = torch.rand(1, 1, 8, 8, generator=g), torch.rand(1, 1, 8, 8, generator=g)
    return lambda net: (net(k) - s).pow(2).sum()


def test_lookahead_adds_the_mark_gradient_at_the_shadow_weights():
    """With 0 attacker steps the shadow is θ itself: the added gradient is w·∇ℓ_w(θ)."""
    x, y = _pairs()
    net, loss = _host(), _mark_loss()
    loss(net).backward()
    expected = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    embedding._add_lookahead_gradient(net, _host(), x, y, loss, 0.5, 0, 1e-3, 4,
                                      torch.Generator().manual_seed(2), torch.device("cpu"))
    for p, e in zip(net.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, 1 + 0.5 * e)


def test_lookahead_steps_move_the_shadow_not_the_network():
    x, y = _pairs()
    net, loss = _host("dncnn"), _mark_loss()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    shadow = _host("dncnn")
    embedding._add_lookahead_gradient(net, shadow, x, y, loss, 1.0, 3, 1e-2, 4,
                                      torch.Generator().manual_seed(2), torch.device("cpu"))
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k  # only gradients were added
    moved = [k for k, v in shadow.state_dict().items() if not torch.equal(v, before[k])]
    assert any("running_mean" in k for k in moved)  # BatchNorm in train mode, as an attacker
    assert any(k.endswith("weight") for k in moved)
    assert all(p.grad is not None for p in net.parameters())


def test_lookahead_noise_is_a_sign_perturbation_of_every_weight():
    """0 attacker steps and noise δ: the shadow sits at θ ± δ on every weight."""
    x, y = _pairs()
    net, shadow = _host(), _host()
    embedding._add_lookahead_gradient(net, shadow, x, y, _mark_loss(), 1.0, 0, 1e-3, 4,
                                      torch.Generator().manual_seed(2), torch.device("cpu"),
                                      noise=0.01)
    for p, q in zip(net.parameters(), shadow.parameters(), strict=True):
        torch.testing.assert_close((q - p).abs(), torch.full_like(p, 0.01))


def test_embedding_with_lookahead_keeps_the_batches_and_the_lambda0_reference():
    x, y = _pairs()
    loss = _mark_loss()
    common = dict(steps=6, lr=1e-2, batch_size=4, generator=3, device=torch.device("cpu"))
    plain, _ = embedding.embed_into_host(_host(), x, y, loss, 0.0, **common)
    zero_la, _ = embedding.embed_into_host(_host(), x, y, loss, 0.0, **common,
                                           lookahead_steps=2)
    for a, b in zip(plain.parameters(), zero_la.parameters(), strict=True):
        assert torch.equal(a, b)  # λ = 0: the lookahead is off, batches unchanged
    marked, run = embedding.embed_into_host(_host(), x, y, loss, 1e-2, **common)
    aware, run_la = embedding.embed_into_host(_host(), x, y, loss, 1e-2, **common,
                                              lookahead_steps=2)
    assert run["steps"] == run_la["steps"] == 6
    assert any(not torch.equal(a, b) for a, b in
               zip(marked.parameters(), aware.parameters(), strict=True))


def test_bad_lookahead_settings_are_refused():
    x, y = _pairs()
    with pytest.raises(InputError, match="lookahead_steps >= 0"):
        embedding.embed_into_host(_host(), x, y, _mark_loss(), 1e-2, 2, 1e-3, 4, 0,
                                  torch.device("cpu"), lookahead_steps=-1)
    with pytest.raises(InputError, match="lookahead_steps"):
        build("trigger_key", {"lookahead_steps": -1})
    with pytest.raises(InputError, match="lookahead_lr"):
        build("trigger_key", {"lookahead_lr": 0})
    with pytest.raises(InputError, match="lookahead_noise"):
        build("trigger_key", {"lookahead_noise": -0.1})


# -- attack-aware embedding: simulated attacks, refresh interval (issue #13) -------------------


def test_a_refresh_every_step_on_the_owner_pairs_is_the_plain_lookahead():
    x, y = _pairs()
    loss = _mark_loss()
    common = dict(steps=5, lr=1e-2, batch_size=4, generator=3, device=torch.device("cpu"),
                  lookahead_steps=2)
    plain, _ = embedding.embed_into_host(_host("dncnn"), x, y, loss, 1e-2, **common)
    given, _ = embedding.embed_into_host(_host("dncnn"), x, y, loss, 1e-2, **common,
                                         lookahead_attacks=lambda i: embedding.Lookahead((x, y)))
    for a, b in zip(plain.parameters(), given.parameters(), strict=True):
        assert torch.equal(a, b)


def test_lookahead_every_runs_the_attack_only_at_refresh_steps():
    x, y = _pairs()
    asked: list[int] = []

    def attacks(i: int) -> embedding.Lookahead:
        asked.append(i)
        return embedding.Lookahead((x, y))

    common = dict(steps=7, lr=1e-2, batch_size=4, generator=3, device=torch.device("cpu"),
                  lookahead_steps=2, lookahead_attacks=attacks)
    every3, _ = embedding.embed_into_host(_host(), x, y, _mark_loss(), 1e-2, **common,
                                          lookahead_every=3)
    assert asked == [0, 1, 2]  # steps 0, 3, 6
    asked.clear()
    every1, _ = embedding.embed_into_host(_host(), x, y, _mark_loss(), 1e-2, **common)
    assert asked == list(range(7))
    assert any(not torch.equal(a, b) for a, b in
               zip(every1.parameters(), every3.parameters(), strict=True))
    with pytest.raises(InputError, match="lookahead_every >= 1"):
        embedding.embed_into_host(_host(), x, y, _mark_loss(), 1e-2, 2, 1e-3, 4, 0,
                                  torch.device("cpu"), lookahead_every=0)


def test_a_simulated_overwrite_pulls_the_shadow_to_the_second_key_with_frozen_batchnorm():
    x, y = _pairs()
    net, shadow = _host("dncnn"), _host("dncnn")
    g = torch.Generator().manual_seed(4)
    k2, s2 = torch.rand(1, 1, 8, 8, generator=g), torch.rand(1, 1, 8, 8, generator=g)

    def second(m: torch.nn.Module) -> torch.Tensor:
        return (m(k2) - s2).pow(2).sum()

    before = {k: v.clone() for k, v in net.state_dict().items()}
    attack = embedding.Lookahead((x, y), second, 1.0)
    delta = embedding._simulate_attack(net, shadow, attack, 5, 1e-2, 4,
                                       torch.Generator().manual_seed(2), torch.device("cpu"))
    with torch.no_grad():
        assert float(second(shadow.eval())) < float(second(net))
    for k, v in shadow.state_dict().items():
        if "running" in k:
            assert torch.equal(v, before[k]), k  # frozen, as an embedding runs BatchNorm
    for d, p, q in zip(delta, net.parameters(), shadow.parameters(), strict=True):
        torch.testing.assert_close(p + d, q)


def test_trigger_key_builds_its_simulated_attacks_from_the_config():
    from neuralmark.components.methods.base import WatermarkKey
    from neuralmark.components.methods.trigger_key.evaluation import overwriting_attacker

    cfg = {"depth": 3, "width": 4, "trigger_size": 8, "patch_size": 8, "n_patches": 16}
    m = build("trigger_key", cfg)
    m.set_task_data(torch.rand(4, 1, 24, 24, generator=torch.Generator().manual_seed(0)))
    (x, y), _ = m.require_pairs()
    assert m.simulated_attacks(x, y) is None  # the default: fine-tuning on the owner's pairs
    aware = m.with_config(lookahead_attacks="new+overwrite+original", lookahead_steps=2)
    aware.train_pairs, aware.test_pairs = m.train_pairs, m.test_pairs
    assert aware.config.lookahead_attacks == ("new", "overwrite", "original")
    attacks = aware.simulated_attacks(x, y)
    new, over, orig, new_again = (attacks(i) for i in range(4))
    assert new.attacker_mark is None and new.pairs[0].shape == x.shape
    assert not torch.equal(new.pairs[1], y)  # data the owner's ℓ_d never sees
    assert torch.equal(new_again.pairs[1], new.pairs[1])
    assert over.pairs[0] is x and over.attacker_lam == aware.config.lam
    owner_loss, _ = aware.mark_loss(WatermarkKey("owner"))
    with torch.no_grad():
        assert float(over.attacker_mark(aware.host)) != float(owner_loss(aware.host))
    assert orig.pairs[0] is x and orig.attacker_mark is None
    # the overwriting attacker embeds with the public plain recipe, not the owner's
    attacker = overwriting_attacker(aware)
    assert attacker.config.lookahead_steps == 0 and attacker.config.lam == aware.config.lam
    assert attacker.config.lookahead_attacks == ("original",)
    assert attacker.train_pairs is aware.train_pairs
    with pytest.raises(InputError, match="lookahead_attacks"):
        build("trigger_key", {"lookahead_attacks": []})
    with pytest.raises(InputError, match="lookahead_attacks"):
        build("trigger_key", {"lookahead_attacks": "new+melt"})
