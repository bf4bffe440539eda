"""The attacker's material for the forgery measurements: a victim's marked photos.

The forgery-at-scale and surrogate-learning measurements (``scripts/pgd_signer_*``) start
the same way: the first ``n`` held-out sample-test photos, marked once under the victim's
key and rounded to 8 bits, and optionally other photos marked under the same key. Marking
is most of such a run's time on a CPU (~70 s per 256² photo under load for the shipped
pgd_signer), so the marks can be kept in a safetensors file and reused when it holds
exactly these photos under this key (never a pickle).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from neuralmark.components.data.manifest import load_split
from neuralmark.components.data.sample import SampleDataConfig, build_sample_dataset
from neuralmark.components.files import atomic_file
from neuralmark.components.imageio import quantize_8bit
from neuralmark.components.methods.base import WatermarkKey


@dataclass
class VictimMarks:
    """Clean photos and their marks under one key.

    Attributes:
        clean: N×3×S×S held-out originals in [0, 1].
        marked: N×3×S×S their marks, 8-bit.
        others: M×3×S×S further clean photos (M may be 0).
        others_marked: M×3×S×S their marks, 8-bit (``None`` when M is 0).
    """

    clean: torch.Tensor
    marked: torch.Tensor
    others: torch.Tensor
    others_marked: torch.Tensor | None


def heldout_photos(data_dir: str | Path, n: int, size: int = 256) -> torch.Tensor:
    """The first ``n`` photos of the sample dataset's test split at ``size``² (N×3×S×S);
    the dataset is built under ``data_dir`` if it is not there."""
    manifest = build_sample_dataset(Path(data_dir), SampleDataConfig())
    return load_split(manifest, "test", size=size, limit=n)


def _secret_tensor(key: WatermarkKey) -> torch.Tensor:
    return torch.tensor(list(key.secret.encode()) + [key.message if key.message is not None
                                                     else -1])


def victim_marks(method, key: WatermarkKey, clean: torch.Tensor,  # noqa: ANN001
                 others: torch.Tensor | None = None, cache: str | Path | None = None
                 ) -> VictimMarks:
    """``clean`` (and ``others``) marked under ``key`` by ``method.embed``, rounded to 8 bits.

    Args:
        method: a content method (``embed``).
        key: the victim's key.
        clean: N×3×S×S photos in [0, 1].
        others: M×3×S×S further photos (``None``: none).
        cache: a safetensors file: read when it holds exactly these photos and key, else
            (re)written after marking.
    """
    from safetensors.torch import load_file, save

    others = clean.new_zeros((0, *clean.shape[1:])) if others is None else others
    secret = _secret_tensor(key)
    if cache is not None and Path(cache).is_file():
        held = load_file(str(cache))
        if (held.keys() >= {"clean", "others", "marked", "fresh", "secret"}
                and torch.equal(held["clean"], clean) and torch.equal(held["others"], others)
                and torch.equal(held["secret"], secret)):
            return VictimMarks(clean, held["marked"], others,
                               held["fresh"] if len(others) else None)
    marked = quantize_8bit(method.embed(clean, key)).detach()
    fresh = quantize_8bit(method.embed(others, key)).detach() if len(others) else None
    if cache is not None:
        blob = save({"clean": clean.contiguous(), "others": others.contiguous(),
                     "marked": marked.contiguous(),
                     "fresh": (fresh if fresh is not None else torch.empty(0)).contiguous(),
                     "secret": secret})
        with atomic_file(cache) as fh:
            fh.write(blob)
    return VictimMarks(clean, marked, others, fresh)
