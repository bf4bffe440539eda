"""pgd_signer's residual embedder (issue #17): a small CNN trained through a key's decoder
predicts the residual, and PGD refines it in a few steps."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from neuralmark.components.errors import InputError
from neuralmark.components.methods import WatermarkKey, build
from neuralmark.components.methods.pgd_signer import PGDSigner, signing
from neuralmark.components.methods.pgd_signer.embedder import (
    ResidualEmbedder,
    initial_residual,
    load_embedder,
    save_embedder,
    train_embedder,
)
from neuralmark.components.metrics import psnr


def _crops(photo_batch: torch.Tensor) -> torch.Tensor:
    """Eight distinct 64² views of the real photo crops (two crops, flips, two scales)."""
    small = torch.nn.functional.interpolate(
        photo_batch, size=(64, 64), mode="bilinear", antialias=True
    )
    half = torch.nn.functional.interpolate(
        photo_batch[..., :64, :64], size=(64, 64), mode="bilinear", antialias=True
    )
    x = torch.cat([small, half])
    return torch.cat([x, x.flip(-2)])


@pytest.fixture()
def signer(photo_batch) -> PGDSigner:
    torch.manual_seed(0)
    m = build(
        "pgd_signer",
        {**PGDSigner.smoke_config, "eot_samples": 2, "pgd_steps": 0, "psnr_target": 34.0},
    )
    m.set_whitening_set(_crops(photo_batch))
    return m


def test_a_trained_embedder_writes_the_keyed_word_and_pgd_refines_from_it(signer, photo_batch):
    """Trained through the key's decoder (one message, as an owner signs), the embedder alone
    writes most of the word, within the budget; PGD from its residual reads better than
    the same few PGD steps from zero (model card, session ps9, has the 256² figures)."""
    torch.set_num_threads(1)
    key = WatermarkKey("owner", 3)
    photos = _crops(photo_batch)[:4]
    fresh = train_embedder(signer, key, photos, steps=1, width=8, messages=[3])
    trained = train_embedder(
        signer, key, photos, steps=60, batch_size=4, width=8, lr=1e-2, messages=[3]
    )
    reads = {}
    for name, net in (("fresh", fresh), ("trained", trained)):
        marked = signer.embed(photos, key, embedder=net)  # pgd_steps 0: the net alone
        assert float(psnr(marked, photos).min()) >= 34.0 - 0.05
        reads[name] = sum(v.bit_accuracy for v in signer.verify(marked, key)) / len(photos)
    assert reads["trained"] >= 0.7 and reads["trained"] >= reads["fresh"] + 0.15, reads
    four = signer.with_config(pgd_steps=4)
    refined, plain = (
        sum(v.bit_accuracy for v in four.verify(four.embed(photos, key, **kw), key)) / len(photos)
        for kw in ({"embedder": trained}, {})
    )
    assert refined > plain, (refined, plain)


def test_embedder_weights_round_trip_and_bad_inputs_are_named(signer, tmp_path):
    net = ResidualEmbedder(32, 64, 1, width=8)
    x, bits = torch.rand(2, 3, 64, 64), torch.randint(0, 2, (2, 32)).float()
    save_embedder(net, tmp_path / "e.safetensors")
    again = load_embedder(tmp_path / "e.safetensors")
    assert torch.equal(net(x, bits), again(x, bits))
    with torch.no_grad():
        delta = initial_residual(signer, again, x, bits)
    assert float(delta.flatten(1).norm(dim=1).max()) <= signing.radius(signer.config, 34.0) + 1e-5
    with pytest.raises(InputError, match="B×32 bits"):
        net(x, bits[:, :8])
    with pytest.raises(InputError, match="64×64"):
        net(torch.rand(2, 3, 96, 96), bits)
    with pytest.raises(InputError, match="signs at 64²"):
        initial_residual(
            signer, ResidualEmbedder(32, 128, 1, width=8), torch.rand(2, 3, 128, 128), bits
        )
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(InputError, match="not a pgd_signer embedder"):
        load_embedder(tmp_path / "other.safetensors")
    with pytest.raises(InputError, match="no such embedder file"):
        load_embedder(tmp_path / "missing.safetensors")
