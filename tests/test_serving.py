"""Batch verification (``components.serving``): same answers as one-by-one, in order, robust."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from neuralmark.components.methods import load_bundle
from neuralmark.components.methods.base import InputError, Status, WatermarkKey
from neuralmark.components.methods.registry import PRETRAINED_DIR
from neuralmark.components.serving import BatchVerifier, working_view

KEY = WatermarkKey("owner secret", 3)


@pytest.fixture(scope="module")
def signer():
    return load_bundle(PRETRAINED_DIR / "pgd_signer")


def _crops(photo) -> list[torch.Tensor]:
    """Three real-photo crops of different sizes, 3×H×W in [0, 1]."""
    t = torch.from_numpy(photo).permute(2, 0, 1).float() / 255
    return [t[:, :256, :256], t[:, 100:420, 50:290], t[:, 200:296, 300:460]]


def test_batches_give_the_one_by_one_answers_in_order(signer, photo):
    crops = _crops(photo)
    verifier = BatchVerifier(signer, KEY, batch_size=2)
    batched = verifier.verify_tensors(crops)
    size = signer.config.working_size
    single = [signer.verify(working_view(c, size), KEY)[0] for c in crops]
    assert [v.bits for v in batched] == [v.bits for v in single]
    assert [v.score for v in batched] == pytest.approx([v.score for v in single], abs=1e-6)


def test_bad_images_are_unreadable_and_do_not_stop_the_batch(signer, photo, tmp_path):
    crops = _crops(photo)
    good = tmp_path / "a.png"
    Image.fromarray(photo[:200, :200]).save(good)
    corrupt = tmp_path / "b.png"
    corrupt.write_bytes(good.read_bytes()[:300])
    tiny = tmp_path / "c.png"
    Image.fromarray(photo[:20, :20]).save(tiny)
    out = list(BatchVerifier(signer, KEY, batch_size=2).verify_files([good, corrupt, tiny, good]))
    assert [p.name for p, _ in out] == ["a.png", "b.png", "c.png", "a.png"]
    assert [v.status for _, v in out] == [out[0][1].status, Status.UNREADABLE,
                                          Status.UNREADABLE, out[0][1].status]
    assert out[0][1].status != Status.UNREADABLE
    assert "b.png" in out[1][1].reason and "c.png" in out[2][1].reason
    assert out[0][1].score == pytest.approx(out[3][1].score)

    nan = crops[0].clone()
    nan[0, 0, 0] = float("nan")
    verdicts = BatchVerifier(signer, KEY).verify_tensors([nan, crops[1], crops[2][:, :30, :30]])
    assert [v.status for v in verdicts][0::2] == [Status.UNREADABLE, Status.UNREADABLE]
    assert verdicts[1].status != Status.UNREADABLE


def test_rejects_what_it_cannot_batch(signer):
    with pytest.raises(InputError, match="batch_size"):
        BatchVerifier(signer, KEY, batch_size=0)
