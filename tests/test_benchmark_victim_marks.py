"""The forgery scripts' shared start: a victim's marked photos, cached in safetensors."""

from __future__ import annotations

import torch

from neuralmark.components.benchmark.victim_marks import victim_marks
from neuralmark.components.methods import WatermarkKey, build
from neuralmark.components.methods.pgd_signer import PGDSigner


class CountingEmbeds:
    """The real method, counting its ``embed`` calls."""

    def __init__(self, method) -> None:  # noqa: ANN001
        self.method, self.calls = method, 0

    def embed(self, images: torch.Tensor, key: WatermarkKey) -> torch.Tensor:
        self.calls += 1
        return self.method.embed(images, key)


def test_victim_marks_are_8_bit_and_reused_from_the_cache_only_when_they_match(photo_batch,
                                                                                  tmp_path):
    torch.manual_seed(0)
    m = CountingEmbeds(build("pgd_signer", PGDSigner.smoke_config))
    clean = torch.nn.functional.interpolate(photo_batch, size=(64, 64), mode="bilinear",
                                            antialias=True)
    others, key, cache = clean.flip(-1), WatermarkKey("victim", 7), tmp_path / "marks.st"
    first = victim_marks(m, key, clean, others, cache)
    assert m.calls == 2 and cache.is_file()
    assert torch.equal(first.marked, (first.marked * 255).round() / 255)
    assert first.marked.shape == clean.shape and first.others_marked.shape == others.shape
    again = victim_marks(m, key, clean, others, cache)
    assert m.calls == 2                                   # read back, not marked again
    assert torch.equal(again.marked, first.marked)
    assert torch.equal(again.others_marked, first.others_marked)
    victim_marks(m, WatermarkKey("victim", 8), clean, others, cache)    # another claim
    victim_marks(m, key, clean[:1], None, cache)                        # other photos
    assert m.calls == 2 + 2 + 1
    assert victim_marks(m, key, clean[:1], None, cache).others_marked is None
    assert m.calls == 5
