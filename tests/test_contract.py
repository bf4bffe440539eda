"""Contract tests: every registered method honours the common interface."""

from __future__ import annotations

import json
import math

import pytest
import torch

from neuralmark.components.evaluation import calibrate_fpr
from neuralmark.components.methods import (
    InputError,
    Status,
    WatermarkKey,
    WatermarkMethod,
    available,
    build,
    load_bundle,
)
from neuralmark.components.methods.base import random_keys
from neuralmark.components.methods.registry import method_class

# keys starting with "_" are test doubles registered by other test modules
METHODS = [k for k in available() if not k.startswith("_")]


def smoke(key: str):
    torch.manual_seed(0)
    return build(key, method_class(key).smoke_config)


def _model_only(key: str) -> bool:
    """A model method with no content ``verify``: judged through ``verify_model``."""
    cls = method_class(key)
    return cls.kind == "model" and cls.verify is WatermarkMethod.verify


def _judged_method(key: str, photo_batch):
    """The smoke method; a model-only one marks its own host with ``KEY`` first (its
    ``set_task_data`` / ``embed_model``, and ``calibrate`` where it has one)."""
    m = smoke(key)
    if _model_only(key):
        m.set_task_data(photo_batch)
        m.embed_model(m.host, KEY)
        if hasattr(m, "calibrate"):
            m.calibrate(KEY)
    return m


def _verdicts(m, images, key):
    """Content methods: ``verify`` per image; model-only methods: ``verify_model`` of the
    marked host and of the unmarked one (both exposed as ``host`` / ``unmarked``)."""
    if type(m).verify is not WatermarkMethod.verify:
        return m.verify(images, key)
    return [m.verify_model(m.host, key), m.verify_model(m.unmarked, key)]


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
    with pytest.raises(InputError, match="px"):  # one side below the method's minimum
        m.verify(torch.rand(1, 3, m.min_size - 1, m.min_size + 10), WatermarkKey("k"))
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
    elif _model_only(key):
        a = [v.to_dict() for v in _verdicts(m, photo_batch, WatermarkKey("k"))]
        assert a == [v.to_dict() for v in _verdicts(again, photo_batch, WatermarkKey("k"))]


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


# -- the detection contract (declared on WatermarkMethod, honoured by every method) -----------

KEY = WatermarkKey("contract-key", 0)
#: methods with a fast null path of their own (the others inherit ``None``)
FAST_NULL = [k for k in METHODS
             if method_class(k).null_p_values is not WatermarkMethod.null_p_values]


def _judged(m, photo_batch) -> torch.Tensor:
    """Clean images plus, for content methods, the same images marked with ``KEY``."""
    if m.kind != "content":
        return photo_batch
    return torch.cat([photo_batch, m.embed(photo_batch, KEY).detach()])


@pytest.mark.parametrize("key", METHODS)
def test_method_declares_the_detection_contract(key):
    cls = method_class(key)
    assert isinstance(cls.keyed_detection, bool) and isinstance(cls.has_scanner, bool)
    field = cls.detection_alpha_field
    m = smoke(key)
    if field is None:
        assert m.detection_alpha is None
    else:
        assert field in cls.Config.model_fields, f"{key}: {field!r} is not a config field"
        assert 0 < m.detection_alpha < 1
        assert m.detection_alpha == float(getattr(m.config, field))
        assert m.with_config(**{field: 0.25}).detection_alpha == 0.25  # follows the config
    if cls.has_scanner:
        stamped = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        assert m.scanner_logits(stamped).shape == (2, 2)
        assert m.classifier_module()(stamped).shape == (2, 2)
        view = m.to_grid(stamped)  # the scanner's own view: a view maps to itself
        assert view.shape[:2] == (2, 3) and torch.equal(m.to_grid(view), view)
        assert isinstance(m.smoothed, bool) and m.config.sigma >= 0


@pytest.mark.parametrize("key", [k for k in METHODS
                                 if method_class(k).detection_alpha_field is not None])
def test_verify_never_detects_above_its_level(key, photo_batch):
    m = _judged_method(key, photo_batch)
    images = _judged(m, photo_batch)
    field = method_class(key).detection_alpha_field
    checked = expected = 0
    for level in (m.detection_alpha, 0.5):
        at = m.with_config(**{field: level})
        verdicts = _verdicts(at, images, KEY)
        expected += 2 if _model_only(key) else len(images)
        for v in verdicts:
            assert not v.detected or (v.p_value is not None and v.p_value <= level), v.reason
            checked += 1
    assert checked == expected


@pytest.mark.parametrize("key", METHODS)
def test_keyed_detection_is_what_the_method_declares(key, photo_batch):
    m = _judged_method(key, photo_batch)
    images = _judged(m, photo_batch)
    keys = [KEY, *random_keys(3, torch.Generator().manual_seed(1))]
    answers = [[(v.detected, v.p_value, v.score) for v in _verdicts(m, images, k)]
               for k in keys]
    if method_class(key).keyed_detection:
        assert any(a != answers[0] for a in answers[1:]), "the key changes nothing"
    else:
        assert all(a == answers[0] for a in answers[1:]), "an unkeyed detector read the key"


@pytest.mark.parametrize("key", FAST_NULL)
def test_null_p_values_are_verify_against_the_same_random_keys(key, photo_batch):
    m = smoke(key)
    fast = m.null_p_values(photo_batch, 5, torch.Generator().manual_seed(4))
    assert fast is not None and fast.shape == (len(photo_batch), 5)
    for j, k in enumerate(random_keys(5, torch.Generator().manual_seed(4))):
        for i, v in enumerate(m.verify(photo_batch, k)):
            expected = math.nan if v.p_value is None else v.p_value
            assert float(fast[i, j]) == pytest.approx(expected, nan_ok=True), (i, j)


@pytest.mark.parametrize("key", FAST_NULL)
def test_calibrate_fpr_gives_the_same_count_with_or_without_the_fast_path(key, photo_batch):
    class VerifyOnly(method_class(key)):  # the same method with no fast path
        def null_p_values(self, images, n_keys, generator):
            return None

    m = smoke(key)
    slow = VerifyOnly(m.config)
    for name, mod in m.modules().items():
        slow.modules()[name].load_state_dict(mod.state_dict())
    slow.load_extra_state(m.extra_state())
    fast_result = calibrate_fpr(m, photo_batch, n_keys=6, alpha=0.5, seed=2)
    slow_result = calibrate_fpr(slow, photo_batch, n_keys=6, alpha=0.5, seed=2)
    assert fast_result == slow_result
    assert fast_result["trials"] == len(photo_batch) * (6 if m.keyed_detection else 1)


@pytest.mark.parametrize("key", FAST_NULL)
def test_fast_null_path_refuses_what_verify_refuses(key):
    m = smoke(key)
    side = m.min_size - 1  # below what the method reads
    tiny = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    with pytest.raises(InputError, match="px"):
        m.verify(tiny, KEY)
    with pytest.raises(InputError, match="px"):
        m.null_p_values(tiny, 3, torch.Generator().manual_seed(0))
    result = calibrate_fpr(m, tiny, n_keys=3, alpha=0.5)  # counted unreadable, as verify's
    assert result["unreadable"] == result["trials"] and result["detections"] == 0
