"""anti_forward's opt-in adversarial training (``adversarial_*`` config fields), at micro size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from neuralmark.components.attacks import adversarial
from neuralmark.components.methods import InputError, build
from neuralmark.components.methods.anti_forward import AntiForward
from neuralmark.components.methods.anti_forward import training as af_training
from tests.photo_crops import crops

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EPS = 8 / 255
#: a scanner-only fine-tune at micro size: full chain and σ from the first step
TUNE = {"train_scanner_only": True, "steps": 3, "batch_size": 4, "lr": 1e-2,
        "aug_start": 0, "aug_end": 1, "sigma": 0.25, "calibration_scores": 8,
        "log_every": 1, "figure_every": 0}


def smoke(**over) -> AntiForward:
    torch.manual_seed(0)
    return build("anti_forward", {**AntiForward.smoke_config, **over})


def test_adversarial_training_is_off_by_default_and_its_fields_are_validated():
    m = smoke()
    assert m.config.adversarial_eps == 0.0
    for field, bad in (("adversarial_eps", -0.01), ("adversarial_eps", 0.5),
                       ("adversarial_fraction", 0.0), ("adversarial_fraction", 1.5),
                       ("adversarial_steps", 0), ("adversarial_noise_samples", 0),
                       ("adversarial_ramp", -1)):
        with pytest.raises(InputError, match=field):
            m.with_config(**{field: bad})


def test_pgd_moves_the_batch_within_eps_toward_the_other_class(photo):
    m = smoke(sigma=0.25)
    x = crops(photo, 4)
    labels = torch.tensor([1, 1, 0, 0])                        # the class to move away from

    def classifier(z):
        return m.scanner_logits(z)

    for sigma, samples in ((0.0, 1), (0.25, 2)):               # plain PGD and SmoothAdv
        adv = adversarial.pgd(classifier, x, labels, eps=EPS, steps=5, sigma=sigma,
                              noise_samples=samples, seed=3)
        again = adversarial.pgd(classifier, x, labels, eps=EPS, steps=5, sigma=sigma,
                                noise_samples=samples, seed=3)
        delta = (adv - x).abs()
        assert delta.max() <= EPS + 1e-6 and delta.max() > EPS / 2
        assert adv.min() >= 0 and adv.max() <= 1
        assert torch.equal(adv, again)                         # seeded: replays
        with torch.no_grad():                                  # the loss to leave the class rose
            assert (F.cross_entropy(classifier(adv), labels)
                    > F.cross_entropy(classifier(x), labels))
    with pytest.raises(ValueError, match="steps"):
        adversarial.pgd(classifier, x, labels, eps=EPS, steps=0)


def test_adversarial_views_attack_a_share_of_each_side_within_eps(photo):
    m = smoke(adversarial_eps=EPS, adversarial_fraction=0.5, adversarial_steps=3)
    seen = crops(photo, 8)                           # 4 "stamped" views, then 4 clean
    g = torch.Generator().manual_seed(0)
    out = af_training.adversarial_views(m, seen, EPS, 0.25, g)
    changed = (out - seen).flatten(1).abs().amax(1)                              # 8
    # ⌈0.5·4⌉ = 2 stamped rows and 2 clean rows attacked, the rest untouched
    assert (changed[[0, 1, 4, 5]] > 0).all() and (changed[[2, 3, 6, 7]] == 0).all()
    assert changed.max() <= EPS + 1e-6


def test_fit_with_adversarial_examples_runs_and_trains_the_scanner_differently(photo,
                                                                               monkeypatch):
    data = {"train": crops(photo, 8), "val": crops(photo, 2)}
    base = smoke()
    calls: list[tuple[int, float]] = []
    original = adversarial.pgd

    def spy(classifier, images, labels, **kwargs):
        calls.append((images.shape[0], kwargs["eps"]))
        return original(classifier, images, labels, **kwargs)

    monkeypatch.setattr(adversarial, "pgd", spy)
    trained = {}
    for arm, extra in (("control", {}),
                       ("adversarial", {"adversarial_eps": EPS, "adversarial_ramp": 2})):
        m = base.with_config(**TUNE, **extra)
        encoder = {k: v.clone() for k, v in m.encoder.state_dict().items()}
        before = {k: v.clone() for k, v in m.scanner.state_dict().items()}
        metrics = m.fit(data)
        assert metrics["steps_done"] == 3
        assert all(torch.equal(v, m.encoder.state_dict()[k]) for k, v in encoder.items())
        assert any(not torch.equal(v, m.scanner.state_dict()[k]) for k, v in before.items())
        trained[arm] = m.scanner.state_dict()
    # the control never attacks; the adversarial run attacks 2 + 2 of each batch of 4 from
    # its second step (ε ramps 0 → 8/255 over 2 steps: 0 at step 0, half at step 1)
    assert calls == [(4, pytest.approx(EPS / 2)), (4, pytest.approx(EPS))]
    assert any(not torch.equal(v, trained["adversarial"][k])
               for k, v in trained["control"].items())


def test_default_training_step_is_unchanged(photo):
    """``adversarial_eps`` 0 (the default) and the keyword left out give the same loss and
    the same random draws: no attack, no extra draw from the training generator."""
    m = smoke(sigma=0.25)
    x = crops(photo, 4)
    losses = []
    for kwargs in ({}, {"adversarial_eps": 0.0}):
        g = torch.Generator().manual_seed(5)
        loss, _ = af_training.joint_loss(m, x, af_training.random_bits(m, 4, g), 1.0, 0.25,
                                         1.0, g, **kwargs)
        losses.append((float(loss.detach()), int(torch.randint(0, 10**6, (1,), generator=g))))
    assert losses[0] == losses[1]


def test_the_scripts_section_names_a_joint_run_at_a_held_psnr_and_its_eps():
    """af11's options (``--joint``, ``--target-psnr``, ``--adv-eps``) reach the section; a
    run stored before them (af9's, beside the card) regenerates its card section as is."""
    import json
    from pathlib import Path

    from tests.script_modules import load_script

    root = Path(__file__).resolve().parents[1]
    script = load_script("anti_forward_adversarial_training")
    card = root / "components" / "pretrained" / "anti_forward"
    old = script.section(json.loads((card / "adversarial_training.json").read_text()))
    assert "\n".join(old) in (card / "MODEL_CARD.md").read_text()
    assert "scanner only" in old[3] and "ε = 8/255" in old[3]
    new = script.section(json.loads((card / "adversarial_training_af11.json").read_text()))
    assert "encoder and scanner jointly, every stamp at PSNR 30.5 dB" in new[3]
    assert "ε = 4/255 L∞" in new[3]
    rows = [line for line in new if line.startswith("| adversarial |")]
    # APGD-EoT at 4/255: kept (smoothed / verify), forged; then the null's photo groups
    assert len(rows) == 1 and "| 1/12 / 0/12 | 0/12 / 0/12 | 0/10 |" in rows[0]
