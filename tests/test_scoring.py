"""The scoring maths against float64 / pure-Python references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tis_ray.scorer import SIMILARITY_DECIMALS, cosine_rows, similarity_from_cosine


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def python_similarity(cosine: float) -> float:
    """The documented formula, on Python floats: round((c + 1) / 2, 4)."""
    return round((float(cosine) + 1) / 2, 4)


def on_grid(values: np.ndarray) -> bool:
    """Every value is within 1e-12 of a multiple of 0.0001."""
    values = np.asarray(values, dtype=np.float64)
    return bool((np.abs(values - np.round(values * 10**4) / 10**4) <= 1e-12).all())


# ---------------------------------------------------------------- cosine_rows


@pytest.mark.parametrize(("n", "d"), [(1, 16), (257, 512), (1000, 768)])
def test_cosine_rows_matches_float64_reference(n, d):
    rng = np.random.default_rng(n * d)
    a, b = unit_rows(rng, n, d), unit_rows(rng, n, d)
    out = cosine_rows(a, b)
    assert out.dtype == np.float32
    assert out.shape == (n,)
    expected = (a.astype(np.float64) * b.astype(np.float64)).sum(axis=1)
    assert np.abs(out.astype(np.float64) - expected).max() <= 2e-6


def test_cosine_rows_pairs_row_i_with_row_i_only():
    rng = np.random.default_rng(7)
    a, b = unit_rows(rng, 50, 32), unit_rows(rng, 50, 32)
    expected = np.array([float(np.dot(a[i].astype(np.float64), b[i])) for i in range(50)])
    assert np.abs(cosine_rows(a, b) - expected).max() <= 1e-6
    # Not a matrix product, not the wrong pairing.
    assert np.abs(cosine_rows(a, b[::-1]) - expected).max() > 0.1


def test_cosine_rows_known_values():
    rng = np.random.default_rng(3)
    a = unit_rows(rng, 3, 64)
    basis = np.eye(64, dtype=np.float32)
    a[2], b2 = basis[5], basis[9]
    out = cosine_rows(a, np.stack([a[0], -a[1], b2]))
    assert out[0] == pytest.approx(1.0, abs=1e-6)
    assert out[1] == pytest.approx(-1.0, abs=1e-6)
    assert out[2] == 0.0


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_cosine_rows_accepts_other_float_dtypes_and_returns_float32(dtype):
    rng = np.random.default_rng(11)
    a, b = unit_rows(rng, 20, 128), unit_rows(rng, 20, 128)
    out = cosine_rows(a.astype(dtype), b.astype(dtype))
    assert out.dtype == np.float32
    expected = (a.astype(dtype).astype(np.float64) * b.astype(dtype).astype(np.float64)).sum(axis=1)
    assert np.abs(out - expected).max() <= 2e-6


def test_cosine_rows_empty_batch():
    out = cosine_rows(np.zeros((0, 16), np.float32), np.zeros((0, 16), np.float32))
    assert out.shape == (0,) and out.dtype == np.float32


def test_cosine_rows_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        cosine_rows(np.zeros((3, 16), np.float32), np.zeros((4, 16), np.float32))
    with pytest.raises(ValueError):
        cosine_rows(np.zeros((3, 16), np.float32), np.zeros((3, 8), np.float32))


# ---------------------------------------------------------------- similarity_from_cosine


def test_similarity_fixed_points():
    out = similarity_from_cosine(np.array([-1.0, 0.0, 1.0, 0.5, -0.5], dtype=np.float32))
    assert out.tolist() == [0.0, 0.5, 1.0, 0.75, 0.25]
    assert out.dtype == np.float64
    assert SIMILARITY_DECIMALS == 4


def test_similarity_rounds_to_four_decimals():
    out = similarity_from_cosine(np.array([0.123456, -0.98765432, 0.99999], dtype=np.float32))
    assert on_grid(out)
    assert [f"{v}" for v in out] == ["0.5617", "0.0062", "1.0"]


def test_similarity_keeps_shape_and_accepts_lists():
    assert similarity_from_cosine([0.0, 1.0]).tolist() == [0.5, 1.0]
    assert similarity_from_cosine(np.zeros((2, 3), np.float32)).shape == (2, 3)
    assert similarity_from_cosine(np.zeros(0, np.float32)).shape == (0,)


def test_similarity_matches_python_round_on_a_million_float32_cosines():
    """Cosines come out of the scorer as float32, and the cosine column is their float64 value."""
    cosine = np.random.default_rng(0).uniform(-1, 1, 1_000_000).astype(np.float32)
    out = similarity_from_cosine(cosine)
    expected = np.array([python_similarity(c) for c in cosine.tolist()])
    assert np.abs(out - expected).max() <= 1e-12
    assert on_grid(out)


def near_half_grid(k: int, ulps: int) -> np.float32:
    """The float32 cosine a few ulps from where (c + 1) / 2 is exactly k + 0.5 ten-thousandths."""
    c = np.float32(2 * (k + 0.5) / 10**4 - 1)
    step = np.float32(np.inf) if ulps > 0 else np.float32(-np.inf)
    for _ in range(abs(ulps)):
        c = np.nextafter(c, step)
    return c


def test_similarity_on_rounding_boundaries():
    """Right next to a .5 in the fifth decimal, float32 arithmetic picks the wrong neighbour."""
    cosine = np.array([near_half_grid(k, u) for k in range(0, 10_000, 7) for u in (-2, -1, 0, 1, 2)])
    out = similarity_from_cosine(cosine)
    expected = np.array([python_similarity(c) for c in cosine.tolist()])
    assert np.abs(out - expected).max() <= 1e-12


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(hnp.arrays(np.float32, st.integers(1, 64), elements=st.floats(-1, 1, width=32)))
def test_similarity_property(cosine):
    out = similarity_from_cosine(cosine)
    expected = np.array([python_similarity(c) for c in cosine.tolist()])
    assert np.abs(out - expected).max() <= 1e-12
    assert on_grid(out)
    assert ((out >= 0) & (out <= 1)).all()


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.integers(0, 9_999), st.integers(-3, 3))
def test_similarity_property_at_boundaries(k, ulps):
    c = near_half_grid(k, ulps)
    assert abs(float(similarity_from_cosine(np.array([c]))[0]) - python_similarity(c)) <= 1e-12


def test_similarity_is_monotonic():
    cosine = np.sort(np.random.default_rng(5).uniform(-1, 1, 100_000).astype(np.float32))
    assert (np.diff(similarity_from_cosine(cosine)) >= 0).all()
