"""Contract tests: every registered method honours the common interface."""

from __future__ import annotations

import json

import pytest
import torch

from neuralmark.components.methods import (
    InputError,
    Status,
    WatermarkKey,
    available,
    build,
    load_bundle,
)
from neuralmark.components.methods.registry import method_class

# keys starting with "_" are test doubles registered by other test modules
METHODS = [k for k in available() if not k.startswith("_")]


def smoke(key: str):
    torch.manual_seed(0)
    return build(key, method_class(key).smoke_config)


def test_registry_lists_pgd_signer():
    assert "pgd_signer" in METHODS


def test_unknown_method_is_named():
    with pytest.raises(InputError, match="unknown method 'nope'"):
        build("nope")


@pytest.mark.parametrize("key", METHODS)
def test_config_typo_names_the_field(key):
    with pytest.raises(InputError, match="widht"):
        build(key, {"widht": 3})


@pytest.mark.parametrize("key", METHODS)
def test_config_is_frozen(key):
    m = smoke(key)
    with pytest.raises(Exception, match="frozen"):
        m.config.seed = 3  # type: ignore[misc]


@pytest.mark.parametrize("key", [k for k in METHODS if method_class(k).kind == "content"])
def test_embed_keeps_shape_and_range(key, photo_batch):
    m = smoke(key)
    out = m.embed(photo_batch, WatermarkKey("contract-key", 1))
    assert out.shape == photo_batch.shape
    assert out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not torch.equal(out, photo_batch), "embed must change the image"


@pytest.mark.parametrize("key", [k for k in METHODS if method_class(k).kind == "content"])
def test_clean_images_are_not_detected(key, photo_batch):
    m = smoke(key)
    for v in m.verify(photo_batch, WatermarkKey("contract-key")):
        assert v.status is Status.NOT_DETECTED
        assert not v.detected
        assert v.payload is None
        assert v.p_value is not None and v.p_value > 1e-6
        assert v.reason


@pytest.mark.parametrize("key", [k for k in METHODS if method_class(k).kind == "content"])
def test_too_small_and_bad_tensors_are_refused(key):
    m = smoke(key)
    with pytest.raises(InputError, match="px"):
        m.verify(torch.rand(1, 3, 20, 30), WatermarkKey("k"))
    with pytest.raises(InputError, match="B×3×H×W"):
        m.verify(torch.rand(1, 1, 80, 80), WatermarkKey("k"))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        m.verify(torch.rand(1, 3, 80, 80) * 255, WatermarkKey("k"))


@pytest.mark.parametrize("key", METHODS)
def test_bundle_round_trip(key, tmp_path, photo_batch):
    m = smoke(key)
    m.to_bundle(tmp_path / "b")
    files = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert files == ["config.json", "state.json", "weights.safetensors"]
    assert json.loads((tmp_path / "b" / "config.json").read_text())["method"] == key
    again = load_bundle(tmp_path / "b")
    assert again.config == m.config
    for name, mod in m.modules().items():
        other = again.modules()[name].state_dict()
        for k, v in mod.state_dict().items():
            assert torch.equal(v, other[k]), f"{name}.{k} differs after round trip"
    if method_class(key).kind == "content":
        a = m.verify(photo_batch, WatermarkKey("k"))
        b = again.verify(photo_batch, WatermarkKey("k"))
        assert [v.bits for v in a] == [v.bits for v in b]


@pytest.mark.parametrize("key", METHODS)
def test_bundle_write_is_atomic(key, tmp_path, monkeypatch):
    m = smoke(key)
    m.to_bundle(tmp_path / "b")
    before = (tmp_path / "b" / "weights.safetensors").read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("neuralmark.components.methods.base.save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        m.to_bundle(tmp_path / "b")
    assert (tmp_path / "b" / "weights.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"], "no temp dirs left behind"


@pytest.mark.parametrize("key", METHODS)
def test_gradient_reaches_every_trainable_parameter(key, photo_batch):
    m = smoke(key)
    loss = m.training_loss(photo_batch)
    loss.backward()
    missing = [n for name, mod in m.modules().items() for n, p in mod.named_parameters()
               if p.requires_grad and (p.grad is None or float(p.grad.abs().sum()) == 0.0)]
    assert not missing, f"no gradient reaches: {missing}"


def test_bundle_missing_files_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"method": "pgd_signer"}))
    with pytest.raises(InputError, match="weights.safetensors"):
        load_bundle(tmp_path)
    with pytest.raises(InputError, match="not a neuralmark bundle"):
        load_bundle(tmp_path / "nowhere")
