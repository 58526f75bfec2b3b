"""Defining properties of each model-poisoning attack."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bcsfl_flower.client.attacks import (
    ATTACKS,
    DATA_ATTACKS,
    FULL_KNOWLEDGE,
    NEEDS_REFERENCE,
    alie_z,
    flip_labels,
    poison_update,
)

D = 2_000


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def update(rng: np.random.Generator) -> np.ndarray:
    return rng.normal(0.1, 1.0, D)


@pytest.fixture
def reference(rng: np.random.Generator) -> np.ndarray:
    return rng.normal(0.5, 1.0, (8, D))


def test_names() -> None:
    assert set(ATTACKS) == {
        "none", "label-flip", "sign-flip", "gaussian", "scaling", "alie", "ipm", "min-max",
        "alie-full", "ipm-full", "ipm100-full", "minmax-full", "scaling-max",
    }
    assert DATA_ATTACKS == {"label-flip"}
    assert NEEDS_REFERENCE == {"alie", "ipm", "min-max"}
    assert FULL_KNOWLEDGE == {"alie-full", "ipm-full", "ipm100-full", "minmax-full", "scaling-max"}


def test_unknown_attack_lists_valid_names(rng: np.random.Generator, update: np.ndarray) -> None:
    with pytest.raises(ValueError, match="valid attacks: none, label-flip, sign-flip"):
        poison_update("nope", update, rng=rng)


@pytest.mark.parametrize("attack", sorted(NEEDS_REFERENCE))
def test_reference_required(attack: str, rng: np.random.Generator, update: np.ndarray) -> None:
    with pytest.raises(ValueError, match="reference"):
        poison_update(attack, update, rng=rng)
    with pytest.raises(ValueError, match="reference"):  # k < 2
        poison_update(attack, update, rng=rng, reference=update[None, :])
    with pytest.raises(ValueError, match="reference"):  # wrong width
        poison_update(attack, update, rng=rng, reference=np.zeros((3, D + 1)))


def test_update_must_be_flat(rng: np.random.Generator) -> None:
    with pytest.raises(ValueError, match="1-D"):
        poison_update("sign-flip", np.zeros((2, 3)), rng=rng)


@pytest.mark.parametrize("attack", ["none", "label-flip"])
def test_identity_attacks(attack: str, rng: np.random.Generator) -> None:
    upd = np.arange(5, dtype=np.float32)
    out = poison_update(attack, upd, rng=rng)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, upd)
    assert out is not upd


@pytest.mark.parametrize("attack", sorted(set(ATTACKS) - NEEDS_REFERENCE - FULL_KNOWLEDGE))
def test_dtype_kept(attack: str, rng: np.random.Generator, update: np.ndarray) -> None:
    out = poison_update(attack, update.astype(np.float32), rng=rng)
    assert out.dtype == np.float32 and out.shape == (D,)


def test_sign_flip(rng: np.random.Generator, update: np.ndarray) -> None:
    out = poison_update("sign-flip", update, rng=rng, scale=3.0)
    assert _cos(out, update) == pytest.approx(-1.0)
    assert np.linalg.norm(out) == pytest.approx(3.0 * np.linalg.norm(update))


def test_scaling(rng: np.random.Generator, update: np.ndarray) -> None:
    out = poison_update("scaling", update, rng=rng, scale=5.0)
    np.testing.assert_allclose(out, 5.0 * update)


def test_gaussian_uncorrelated_with_update(rng: np.random.Generator) -> None:
    upd = rng.normal(0.0, 0.01, 100_000)
    out = poison_update("gaussian", upd, rng=np.random.default_rng(1), scale=2.0)
    assert abs(np.corrcoef(out, upd)[0, 1]) < 0.02  # ~N(0, 1/sqrt(d)) = 0.003
    rms = np.sqrt(np.mean(upd**2))
    assert np.sqrt(np.mean(out**2)) == pytest.approx(2.0 * rms, rel=0.02)
    again = poison_update("gaussian", upd, rng=np.random.default_rng(1), scale=2.0)
    np.testing.assert_array_equal(out, again)
    zero = poison_update("gaussian", np.zeros(4), rng=rng)
    np.testing.assert_array_equal(zero, np.zeros(4))


def test_alie_z_values() -> None:
    # n=20, m=6: s = 11 - 6 = 5, z = Phi^-1(15/20)
    assert alie_z(20, 6) == pytest.approx(0.6744897501960817)
    assert alie_z(20, 2) == pytest.approx(0.12566134685507402)  # Phi^-1(11/20)
    assert alie_z(20, 1) == 1.0  # Phi^-1(1/2) = 0 -> fallback
    assert alie_z(20, 15) == 1.0  # s <= 0 -> fallback


def test_alie_formula(rng: np.random.Generator, update: np.ndarray, reference: np.ndarray) -> None:
    out = poison_update("alie", update, rng=rng, reference=reference)
    expected = reference.mean(0) - alie_z(20, 6) * reference.std(0)
    np.testing.assert_allclose(out, expected)


@settings(max_examples=60, deadline=None)
@given(
    ref=st.integers(2, 10).flatmap(
        lambda k: arrays(np.float64, (k, 7), elements=st.floats(-1e3, 1e3))
    )
)
def test_alie_within_reference_range_for_small_z(ref: np.ndarray) -> None:
    # mean - min >= std / sqrt(k - 1) for any sample, so z = 0.126 < 1/3 stays inside.
    out = poison_update(
        "alie", np.zeros(7), rng=np.random.default_rng(0), reference=ref,
        num_clients=20, num_malicious=2,
    )
    tol = 1e-9 * (1.0 + np.abs(ref).max())
    assert np.all(out >= ref.min(0) - tol)
    assert np.all(out <= ref.max(0) + tol)


def test_ipm_points_against_mean(rng: np.random.Generator, update: np.ndarray,
                                 reference: np.ndarray) -> None:
    out = poison_update("ipm", update, rng=rng, reference=reference, scale=0.5)
    mean = reference.mean(0)
    assert out @ mean < 0
    assert _cos(out, mean) == pytest.approx(-1.0)
    np.testing.assert_allclose(out, -0.5 * mean)


def _max_dist(x: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(ref - x, axis=1).max())


def _max_pairwise(ref: np.ndarray) -> float:
    return float(np.linalg.norm(ref[:, None, :] - ref[None, :, :], axis=2).max())


def test_min_max_is_the_largest_gamma(rng: np.random.Generator, reference: np.ndarray) -> None:
    out = poison_update("min-max", np.zeros(D), rng=rng, reference=reference)
    mu, std = reference.mean(0), reference.std(0)
    bound = _max_pairwise(reference)
    assert _max_dist(out, reference) <= bound
    # the shift is along -std ...
    assert _cos(out - mu, -std) == pytest.approx(1.0)
    gamma = float((mu - out) @ std / (std @ std))
    assert gamma > 0
    # ... and as long as the bound allows
    assert _max_dist(mu - gamma * 1.0001 * std, reference) > bound
    assert _max_dist(out, reference) == pytest.approx(bound, rel=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    ref=st.integers(2, 8).flatmap(
        lambda k: arrays(np.float64, (k, 5), elements=st.floats(-100, 100))
    )
)
def test_min_max_respects_distance_bound(ref: np.ndarray) -> None:
    out = poison_update("min-max", np.zeros(5), rng=np.random.default_rng(0), reference=ref)
    bound = _max_pairwise(ref)
    assert _max_dist(out, ref) <= bound * (1 + 1e-9) + 1e-9


def test_min_max_identical_references(rng: np.random.Generator) -> None:
    ref = np.ones((4, 3))
    out = poison_update("min-max", np.zeros(3), rng=rng, reference=ref)
    np.testing.assert_array_equal(out, np.ones(3))


def test_flip_labels() -> None:
    y = torch.tensor([0, 1, 2, 9], dtype=torch.long)
    flipped = flip_labels(y, 10)
    assert flipped.tolist() == [9, 8, 7, 0]
    assert flipped.dtype == torch.long
    assert torch.equal(flip_labels(flipped, 10), y)
