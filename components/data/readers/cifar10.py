"""CIFAR-10, python version (``cifar-10-python.tar.gz``), for the visible-watermark method.

Published layout (the tarball, or the folder it extracts to)::

    cifar-10-batches-py/
        batches.meta            # {b'label_names': [10 bytes], ...}
        data_batch_1 … data_batch_5, test_batch
                                # {b'data': N×3072 uint8 (R plane, G plane, B plane,
                                #   each 32×32 row-major), b'labels': [N ints 0..9], ...}
        readme.html

Items carry their pixels (``raw``, 32×32×3 uint8), ``label`` and the publisher
split (``data_batch_*`` → train, ``test_batch`` → test). Batches are read one
at a time, so at most one batch (10 000 images, 30 MB) is in memory.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from neuralmark.components.data.datasets import PrepareConfig, register_dataset
from neuralmark.components.data.readers.base import DatasetReader, SourceItem, describe

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
N_CLASSES = 10
SIDE = 32


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles what CIFAR-10's python batches hold and refuses every other global.

    The batches are dicts of bytes, ints, lists and one uint8 numpy array. Plain
    ``pickle.load`` would call any importable function a crafted archive names (code
    execution); this one resolves only the numpy array constructors, so a hostile "batch"
    fails with ``UnpicklingError`` naming what it asked for. (``_codecs.encode`` is how a
    protocol-2 pickle written by Python 3 spells a bytes literal.)
    """

    ALLOWED = frozenset({
        ("_codecs", "encode"), ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR-10 batch "
                                     "holds only lists, bytes and uint8 arrays")


class Cifar10Reader(DatasetReader):
    """Reads ``cifar-10-python.tar.gz`` or its extracted ``cifar-10-batches-py/``."""

    name = "cifar10"
    layout = (f"cifar-10-python.tar.gz, or a folder {FOLDER}/ (or its parent) holding "
              f"{META}, {', '.join(TRAIN_BATCHES)} and {TEST_BATCH}")

    def items(self, source: Path) -> Iterator[SourceItem]:
        """Stream the 50 000 train then 10 000 test images, batch by batch.

        Raises:
            DatasetLayoutError: a missing/extra-shaped batch, a truncated or
                non-tar archive, or a folder without the batches.
        """
        source = Path(source)
        if source.is_file():
            yield from self._from_tar(source)
        elif source.is_dir():
            folder = source if (source / META).exists() else source / FOLDER
            missing = [n for n in (META, *TRAIN_BATCHES, TEST_BATCH) if not (folder / n).is_file()]
            if missing:
                raise self.layout_error(source, f"{describe(source)} (missing {missing})")
            names = self._label_names(source, (folder / META).read_bytes())
            for batch in (*TRAIN_BATCHES, TEST_BATCH):
                yield from self._batch_items(source, batch, (folder / batch).read_bytes(), names)
        else:
            raise self.layout_error(source, describe(source))

    def _from_tar(self, source: Path) -> Iterator[SourceItem]:
        try:
            with tarfile.open(source, "r:*") as tf:
                members = {m.name: m for m in tf.getmembers() if m.isfile()}
                wanted = [f"{FOLDER}/{n}" for n in (META, *TRAIN_BATCHES, TEST_BATCH)]
                missing = [w for w in wanted if w not in members]
                if missing:
                    found = ", ".join(sorted(members)[:8]) or "no files"
                    raise self.layout_error(source, f"an archive with {found} "
                                                    f"(missing {missing})")

                def read(name: str) -> bytes:
                    f = tf.extractfile(members[f"{FOLDER}/{name}"])
                    assert f is not None  # members are regular files
                    return f.read()

                names = self._label_names(source, read(META))
                for batch in (*TRAIN_BATCHES, TEST_BATCH):
                    yield from self._batch_items(source, batch, read(batch), names)
        except (tarfile.TarError, EOFError, OSError) as err:
            raise self.layout_error(
                source, f"an unreadable or truncated archive ({type(err).__name__}: {err})"
            ) from None

    def _unpickle(self, source: Path, name: str, data: bytes) -> dict[bytes, Any]:
        # pickle is the publisher's own format for this dataset (there is no other
        # distribution of the python version); it is only ever applied to the
        # seven known member names, through an unpickler that builds nothing but
        # containers and uint8 arrays, and the result is type/shape-checked below.
        try:
            obj = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
        except Exception as err:  # noqa: BLE001 - a bad pickle raises many types
            raise self.layout_error(source, f"{name} is not a readable pickle ({err})") from None
        if not isinstance(obj, dict):
            raise self.layout_error(source, f"{name} holds a {type(obj).__name__}, not a dict")
        return obj

    def _label_names(self, source: Path, data: bytes) -> list[str]:
        meta = self._unpickle(source, META, data)
        names = meta.get(b"label_names")
        if not isinstance(names, list) or len(names) != N_CLASSES:
            raise self.layout_error(source, f"{META} without {N_CLASSES} b'label_names' "
                                            f"(keys {sorted(meta)})")
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names]

    def _batch_items(self, source: Path, batch: str, raw: bytes,
                     names: list[str]) -> Iterator[SourceItem]:
        obj = self._unpickle(source, batch, raw)
        data, labels = obj.get(b"data"), obj.get(b"labels")
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
                and data.shape[1] == 3 * SIDE * SIDE):
            found = (f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray)
                     else type(data).__name__)
            raise self.layout_error(source, f"{batch}[b'data'] is {found}, expected an N×3072 "
                                            "uint8 array")
        if not isinstance(labels, list | np.ndarray) or len(labels) != data.shape[0]:
            raise self.layout_error(source, f"{batch}[b'labels'] does not hold one label per "
                                            f"row ({data.shape[0]} rows)")
        labels_arr = np.asarray(labels)
        if labels_arr.dtype.kind not in "iu" or labels_arr.min(initial=0) < 0 \
                or labels_arr.max(initial=0) >= N_CLASSES:
            raise self.layout_error(source, f"{batch}[b'labels'] outside 0..{N_CLASSES - 1}")
        split = "test" if batch == TEST_BATCH else "train"
        pixels = data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)  # n h w c
        for i in range(data.shape[0]):
            item_id = f"{batch}_{i:05d}"
            label = int(labels_arr[i])
            yield SourceItem(item_id=item_id, location=f"{FOLDER}/{batch}#{i}", group=item_id,
                             split=split, label=label, extra={"label_name": names[label]},
                             raw=np.ascontiguousarray(pixels[i]).tobytes(),
                             raw_shape=(SIDE, SIDE, 3))


@register_dataset("cifar10", reader=Cifar10Reader, domains=("image",),
                  description="CIFAR-10 32×32 RGB, 10 classes, publisher train/test split",
                  defaults={"size": SIDE}, fixed_size=SIDE, label_range=(0, N_CLASSES - 1))
def cifar10_transform(image: Image.Image, item: SourceItem,
                      config: PrepareConfig) -> dict[str, Image.Image]:
    """Keep the 32×32 pixels as they are (no resize)."""
    return {"image": image.convert("RGB")}
