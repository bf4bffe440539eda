"""R's BatchNorm statistics (issue #19, om15), at micro size.

R trains on batch statistics and is scored, calibrated and served on running statistics;
``config.refresh_bn_stats`` recomputes them on batches composed as R's training batches
(``loops.refresh_extractor_bn``). These tests check that the refresh changes no weight and
no training draw, that eval-mode R then answers as the trained (batch-statistics) R, that
stage 2's batches carry every surrogate's outputs, and that the stopping rule scores each
checkpoint after the refresh.
"""

from __future__ import annotations

import copy

import pytest
import torch

from neuralmark.components.methods.output_mark import training
from neuralmark.components.methods.output_mark.config import OutputMarkConfig
from neuralmark.components.methods.output_mark.loops import refresh_extractor_bn
from neuralmark.components.nets.ceilnet import CEILNet
from neuralmark.components.reproducibility import pinned
from tests.output_mark_micro import KEY, MICRO, micro_data

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return micro_data()


def _stage1(data, **fields):
    cfg = OutputMarkConfig(**{**MICRO, **fields})
    with pinned(cfg.seed, cfg.cpu_threads):
        return training.stage1_method(data["train"], cfg, KEY)


def _bn_buffers(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items() if "running" in k}


def _hr_part(method, data):
    tp = training.training_pairs(method, data["train"])
    b = method.model_outputs(tp.a)
    return tp, tp.a[tp.hr], b[tp.hr], tp.gt[tp.hr]


def test_refresh_changes_no_weight_and_no_training_draw(data) -> None:
    """On vs off (refreshed before each of 2 checkpoints and at the end): the same H, R, D
    parameters and H, D buffers to the bit (the refresh draws from its own generator); only
    R's running statistics differ, and they are what one more refresh of the same weights
    gives."""
    never = {"select_every": 4, "psnr_target": 100.0}  # scored mid-run, none kept: the last
    off, m_off = _stage1(data, **never)
    on, m_on = _stage1(data, refresh_bn_stats=True, **never)
    assert m_on["checkpoints_scored"] == 2 and m_on["selected_step"] == -1
    for name in ("H", "R", "D"):
        p_off, p_on = dict(getattr(off, name).named_parameters()), \
            dict(getattr(on, name).named_parameters())
        assert all(torch.equal(p_off[k], p_on[k]) for k in p_off), name
    for name in ("H", "D"):
        assert all(torch.equal(a, b) for a, b in zip(
            getattr(off, name).state_dict().values(), getattr(on, name).state_dict().values(),
            strict=True)), name
    r_off, r_on = _bn_buffers(off.R), _bn_buffers(on.R)
    assert any(not torch.equal(r_off[k], r_on[k]) for k in r_off if "mean" in k)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in on.R.modules())
    assert m_on["bn_layers_refreshed"] == n_bn > 0 and "bn_layers_refreshed" not in m_off
    _, a, b, gt = _hr_part(on, data)
    assert refresh_extractor_bn(on, a, b, gt) == n_bn
    assert all(torch.equal(r_on[k], v) for k, v in _bn_buffers(on.R).items())
    assert not on.R.training and not on.H.training  # modes as they were


def test_refreshed_eval_mode_r_answers_as_the_trained_r(data) -> None:
    """With one refresh batch, R in eval mode on that batch gives R's train-mode output on it
    (up to the unbiased-variance factor), where stale statistics give something else; the
    batch is B′ rows plus one mixed batch of clean rows, as stage 1's."""
    method, _ = _stage1(data)
    method.config = method.config.model_copy(update={"refresh_bn_batches": 1})
    for m in method.R.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # stale statistics, far from any batch's
            m.running_mean.add_(3.0)
            m.running_var.mul_(50.0)
    seen: list[torch.Tensor] = []
    hook = method.R.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    _, a, b, gt = _hr_part(method, data)
    stale = copy.deepcopy(method.R).eval()
    refresh_extractor_bn(method, a, b, gt)
    hook.remove()
    assert len(seen) == 1 and seen[0].shape[0] == 2 * method.config.batch_size
    x = seen[0]
    with torch.no_grad():
        trained = copy.deepcopy(method.R).train()(x)
        served = method.R.eval()(x)
        before = stale(x)
    assert torch.allclose(served, trained, atol=0.02)
    assert (before - trained).abs().max() > 10 * (served - trained).abs().max()


def test_stage2_refresh_batches_hold_every_surrogate_and_the_selector_scores_after_it(
        data, monkeypatch) -> None:
    """Stage 2 with two surrogate archs: R's refresh batches hold B′, both B″ and the mixed
    clean rows (4 × batch_size); with the stopping rule, each checkpoint is refreshed
    before it is scored, and once more at the end."""
    cfg = {"stage2_archs": ["unet", "cnet"], "select_every": 2, "refresh_bn_stats": True}
    s1, m1 = _stage1(data, **cfg)
    assert m1["checkpoints_scored"] == MICRO["steps"] // 2
    calls: list[tuple[int, int]] = []
    real = training.refresh_extractor_bn

    def counted(method, a, b, gt, seconds=(), clean_seconds=(), clean_bank=None):
        sizes: list[int] = []
        hook = method.R.register_forward_pre_hook(lambda _m, args: sizes.append(args[0].shape[0]))
        try:
            return real(method, a, b, gt, seconds, clean_seconds, clean_bank)
        finally:
            hook.remove()
            calls.append((len(seconds), sizes[0]))

    monkeypatch.setattr(training, "refresh_extractor_bn", counted)
    with pinned(s1.config.seed, s1.config.cpu_threads):
        _, m2 = training.stage2_method(s1, data["train"])
    bs = MICRO["batch_size"]
    assert m2["stage2_checkpoints_scored"] == MICRO["stage2_steps"] // 2
    assert calls == [(2, 4 * bs)] * (int(m2["stage2_checkpoints_scored"]) + 1)
    assert m2["stage2_bn_layers_refreshed"] > 0


def test_refresh_is_a_no_op_for_an_r_without_batchnorm(data) -> None:
    method, _ = _stage1(data)
    method.R = CEILNet(width=4, n_blocks=1, norm="instance")
    before = copy.deepcopy(method.R.state_dict())
    _, a, b, gt = _hr_part(method, data)
    assert refresh_extractor_bn(method, a, b, gt) == 0
    assert all(torch.equal(before[k], v) for k, v in method.R.state_dict().items())


def test_group_norm_r_reads_each_image_alone_and_keeps_the_other_networks_init(
        data, tmp_path) -> None:
    """``extract_norm: group``: no running statistics, train mode = eval mode, one image's
    reading does not depend on its batch; H, D and R's convolutions start from the same
    draws as the BatchNorm R's; the bundle keeps the choice."""
    from neuralmark.components.methods import build, load_bundle

    batch = build("output_mark", {**MICRO, "extract_norm": "batch"})
    group = build("output_mark", {**MICRO, "extract_norm": "group"})
    assert OutputMarkConfig(**MICRO).extract_norm == "batch"
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                   for m in group.R.modules())
    for name in ("H", "D", "M"):
        assert all(torch.equal(x, y) for x, y in zip(
            getattr(batch, name).state_dict().values(),
            getattr(group, name).state_dict().values(), strict=True)), name
    convs = [(m.weight, n.weight) for m, n in zip(batch.R.modules(), group.R.modules(),
                                                   strict=True)
             if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert convs and all(torch.equal(x, y) for x, y in convs)
    method, _ = _stage1(data, extract_norm="group", steps=4)
    x = data["test"][1]
    with torch.no_grad():
        served = method.R.eval()(x)
        trained = method.R.train()(x)
        alone = method.R(x[:1])
    method.R.eval()
    assert torch.allclose(served, trained) and torch.allclose(alone, served[:1], atol=1e-6)
    _, a, b, gt = _hr_part(method, data)
    assert refresh_extractor_bn(method, a, b, gt) == 0
    method.to_bundle(tmp_path / "g")
    loaded = load_bundle(tmp_path / "g")
    assert loaded.config.extract_norm == "group"
    with torch.no_grad():
        assert torch.equal(loaded.R(x), served)
    with pytest.raises(ValueError, match="extract_norm"):
        OutputMarkConfig(extract_norm="layer")


def test_r_pretrain_makes_r_answer_the_logo_to_its_residual_only(data) -> None:
    """``pretrain_extractor``: R alone learns B + ε → δ (ε one fixed residual), clean → blank;
    off (0 steps) it draws nothing and returns nothing. H and D are untouched."""
    from neuralmark.components.methods import build
    from neuralmark.components.methods.output_mark.evaluation import extraction_nc
    from neuralmark.components.methods.output_mark.loops import pretrain_extractor

    cfg = OutputMarkConfig(**{**MICRO, "r_pretrain": 60, "r_pretrain_db": 20.0, "lr": 3e-3,
                                "extract_width": 16})
    method = build("output_mark", cfg)
    with pinned(cfg.seed, cfg.cpu_threads):
        tp = training.prepare(method, data["train"], KEY)
        training.train_model(method, tp)
        b = method.model_outputs(tp.a)
        h_d = copy.deepcopy((method.H.state_dict(), method.D.state_dict()))
        r0 = copy.deepcopy(method.R.state_dict())
        off = method.config.model_copy(update={"r_pretrain": 0})
        method.config = off
        assert pretrain_extractor(method, tp.a, b, tp.gt) == {}
        assert all(torch.equal(r0[k], v) for k, v in method.R.state_dict().items())
        method.config = cfg
        out = pretrain_extractor(method, tp.a, b, tp.gt)
    assert set(out) == {"pretrain_r_wm", "pretrain_r_clean"}
    g = torch.Generator().manual_seed(cfg.seed + 4)  # the residual pretrain_extractor draws
    eps = torch.randn(3, 32, 32, generator=g)
    eps = eps * 0.1 / eps.pow(2).mean().sqrt()
    logo = method.logo.cpu()
    marked = extraction_nc(method.R, (b + eps).clamp(0, 1), logo)
    clean = extraction_nc(method.R, b, logo)
    assert float(marked.mean()) > float(clean.mean()) + 0.1
    assert all(torch.equal(x, y) for x, y in zip(h_d[0].values(),
                                                 method.H.state_dict().values(), strict=True))
