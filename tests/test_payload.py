"""Keyed payload with BCH and exact binomial p-values."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neuralmark.components.methods import InputError, WatermarkKey
from neuralmark.components.payload import PayloadCodec, key_mask
from neuralmark.components.stats import binomial_sf, clopper_pearson


def test_binomial_tail_exact_values():
    assert binomial_sf(32, 32) == pytest.approx(2.0**-32)
    assert binomial_sf(30, 32) == pytest.approx((1 + 32 + 496) / 2**32)
    assert binomial_sf(0, 32) == 1.0
    assert binomial_sf(33, 32) == 0.0


def test_clopper_pearson_known_values():
    lo, hi = clopper_pearson(0, 1_000_000)
    assert lo == 0.0 and hi == pytest.approx(3.6889e-6, rel=1e-3)
    lo, hi = clopper_pearson(3, 100)
    assert lo == pytest.approx(0.0062300, rel=1e-4) and hi == pytest.approx(0.0851761, rel=1e-4)


def test_mask_depends_on_secret_only():
    a, b = key_mask("alice", 32), key_mask("bob", 32)
    assert a.shape == (32,) and set(np.unique(a)) <= {0, 1}
    assert not np.array_equal(a, b)
    assert np.array_equal(a, key_mask("alice", 32))


@settings(max_examples=40, deadline=None)
@given(message=st.integers(0, 255), flips=st.lists(st.integers(0, 17), max_size=2, unique=True))
def test_bch_corrects_two_errors_in_the_code_part(message, flips):
    codec = PayloadCodec(32, 8, 2)
    key = WatermarkKey("s3cret", message)
    bits = codec.encode(key)
    bits[flips] ^= 1
    d = codec.read(bits, WatermarkKey("s3cret"))
    assert d.message == message
    assert d.corrected == len(flips)


def test_claimed_message_gives_exact_binomial_p_value():
    codec = PayloadCodec(32, 8, 2)
    bits = codec.encode(WatermarkKey("k", 42))
    bits[[3, 20]] ^= 1
    d = codec.read(bits, WatermarkKey("k", 42))
    assert d.claimed and d.matches == 30
    assert d.p_value == pytest.approx(binomial_sf(30, 32))


def test_unknown_message_p_value_is_bonferroni_corrected():
    codec = PayloadCodec(32, 8, 2)
    d = codec.read(codec.encode(WatermarkKey("k", 9)), WatermarkKey("k"))
    assert d.message == 9 and d.matches == 32
    assert d.p_value == pytest.approx(256 * 2.0**-32)


def test_wrong_key_p_values_follow_the_null():
    """Over many wrong keys, P(p ≤ a) ≤ a (the p-value is valid)."""
    codec = PayloadCodec(32, 8, 2)
    bits = codec.encode(WatermarkKey("right", 5))
    p = np.array([codec.read(bits, WatermarkKey(f"wrong-{i}", 5)).p_value for i in range(2000)])
    for a in (0.01, 0.05, 0.2):
        assert (p <= a).mean() <= a + 0.02
    p_unknown = np.array([codec.read(bits, WatermarkKey(f"wrong-{i}")).p_value
                          for i in range(500)])
    assert (p_unknown <= 0.05).mean() <= 0.07


def test_message_too_large_and_bad_layout_are_named():
    codec = PayloadCodec(32, 8, 2)
    with pytest.raises(InputError, match="does not fit in 8 bits"):
        codec.encode(WatermarkKey("k", 256))
    with pytest.raises(InputError, match="multiple of 8"):
        PayloadCodec(32, 5, 2)
    with pytest.raises(InputError, match="do not fit"):
        PayloadCodec(16, 16, 2)


def test_empty_secret_is_refused():
    with pytest.raises(ValueError, match="non-empty secret"):
        WatermarkKey("  ")
    with pytest.raises(ValueError, match="non-negative"):
        WatermarkKey("k", -1)


def test_vectorised_null_p_values_match_read():
    codec = PayloadCodec(32, 8, 2)
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2, (3, 32)).astype(np.uint8)
    secrets = [f"s{i}" for i in range(50)]
    fast = codec.null_p_values(bits, secrets, claimed=True)
    slow = np.array([[codec.read(b, WatermarkKey(s, 0)).p_value for s in secrets] for b in bits])
    np.testing.assert_allclose(fast, slow)
    unknown = codec.null_p_values(bits, secrets[:5], claimed=False)
    assert unknown.shape == (3, 5) and (unknown >= fast[:, :5] - 1e-12).all()
