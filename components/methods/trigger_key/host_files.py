"""Host weights as files, for audits: safetensors state dicts only, never a pickle.

:func:`load_host_file` reads a suspect host (a ``.safetensors`` state dict of a DnCNN /
RED / VDSR) into the architecture the caller names, and refuses a pickle checkpoint
(``.pt``, ``.pth``, ``.pkl``, ``.ckpt``, ``.bin`` or any file that starts like one)
before reading it: unpickling an untrusted file runs its code. :func:`save_host_file`
writes a host atomically. :func:`sample_task_images` are the photos that ship with
scikit-image / scikit-learn (what ``mark-model --host`` and ``attack-model`` train on when
no dataset is given). :func:`attack_host` applies one named model attack of the shared
registry to a host, with :func:`.evaluation.attacker_data` as the attacker's data.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from neuralmark.components.attacks.model_registry import ModelAttackSettings, get_model_attack
from neuralmark.components.errors import InputError
from neuralmark.components.files import atomic_write_bytes
from neuralmark.components.methods.trigger_key.config import TriggerKeyConfig
from neuralmark.components.methods.trigger_key.host import HostMark
from neuralmark.components.nets.restoration import build_host

#: extensions of pickle-based checkpoints (torch.save, pickle, Lightning, HF .bin)
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".tar")
_PICKLE_MAGIC = (b"\x80", )  # pickle protocol 2+ opcode PROTO


def _looks_pickled(path: Path) -> bool:
    """A torch.save zip archive (``data.pkl`` inside) or a raw pickle stream."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return any(n.endswith(".pkl") for n in z.namelist())
    with path.open("rb") as fh:
        return fh.read(1) in _PICKLE_MAGIC


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file.

    Raises:
        InputError: missing file, a pickle checkpoint (refused, never unpickled), or a
            file that is not valid safetensors (e.g. truncated).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"no host weights file at {p}")
    if p.suffix.lower() in PICKLE_SUFFIXES or _looks_pickled(p):
        raise InputError(f"{p} is a pickle checkpoint: refused, since unpickling an untrusted "
                         "file can run arbitrary code. Convert it where you trust it: "
                         "safetensors.torch.save_file(model.state_dict(), 'host.safetensors')")
    try:
        return load_file(str(p))
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(f"{p} is not a readable safetensors file (truncated or another "
                         f"format): {err}") from None


def load_host_file(path: str | os.PathLike, arch: str, channels: int, depth: int,
                   width: int) -> nn.Module:
    """A host of ``arch`` (``channels``, ``depth``, ``width``) with the file's weights.

    Returns:
        The host, eval mode, CPU.

    Raises:
        InputError: see :func:`read_state_dict`, or weights of another architecture (the
            message names the architecture expected and the first mismatch).
    """
    state = read_state_dict(path)
    host = build_host(arch, channels, depth, width).eval()
    try:
        host.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise InputError(f"{path} does not hold a {arch} host of depth {depth}, width {width}, "
                         f"{channels} channel(s) (give --arch/--depth/--width of the file's "
                         f"network): {first}") from None
    return host


def save_host_file(host: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``host``'s state dict as safetensors, atomically (temp file + rename)."""
    p = Path(path)
    if p.suffix.lower() != ".safetensors":
        raise InputError(f"{p}: host weights are written as .safetensors only")
    state = {k: v.detach().cpu().contiguous() for k, v in host.state_dict().items()}
    return atomic_write_bytes(p, save(state))


def sample_task_images() -> dict[str, list[torch.Tensor]]:
    """The bundled photos (``components/data/sample``) as ``3×H×W`` tensors in [0, 1]:
    all but the last three to train on, the last three as the test split."""
    from neuralmark.components.data.sample import BUNDLED_PHOTOS, load_bundled_photo

    imgs = [torch.from_numpy(np.array(load_bundled_photo(p))).permute(2, 0, 1).float() / 255
            for p in BUNDLED_PHOTOS]
    return {"train": imgs[:-3], "test": imgs[-3:]}


def host_config(method: HostMark) -> dict[str, Any]:
    """``arch``, ``channels``, ``depth``, ``width`` of ``method``'s host."""
    c: TriggerKeyConfig = method.config
    return {"arch": c.arch, "channels": c.channels, "depth": c.depth, "width": c.width}


def attack_host(method: HostMark, host: nn.Module, attack: str, strength: float | None,
                data: Any, settings: ModelAttackSettings | None = None,
                callbacks: Any = ()) -> tuple[nn.Module, dict[str, Any]]:
    """Apply the model attack ``attack`` at ``strength`` to ``host`` (not modified).

    ``method`` gives the task and schedule (its data: ``data``, clean images as for
    ``set_task_data``); the attacker's data are :func:`.evaluation.attacker_data`'s.

    Returns:
        ``(attacked copy, the attack's params)``.
    """
    from neuralmark.components.methods.trigger_key.evaluation import attacker_data

    spec = get_model_attack(attack)
    method.set_task_data(data)
    adata = attacker_data(method)
    params = spec.params(strength, adata, settings)
    return spec(host, strength, adata, settings, callbacks), params


__all__ = ["PICKLE_SUFFIXES", "attack_host", "host_config", "load_host_file",
           "read_state_dict", "sample_task_images", "save_host_file"]
