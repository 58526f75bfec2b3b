"""Full-knowledge (omniscient) attacks: each gives the vector its paper defines from the round's honest updates."""

from __future__ import annotations

import numpy as np
import pytest

from bcsfl_flower.client.attacks import (
    FULL_KNOWLEDGE,
    SCALING_MAX_MARGIN,
    alie_z,
    full_knowledge_update,
    poison_update,
    scaling_max_norm,
)
from bcsfl_flower.committee.filter import FilterConfig, filter_and_aggregate
from bcsfl_flower.committee.verify import VerifiedUpdate
from bcsfl_flower.package import ModelPackage

D = 400


@pytest.fixture
def honest() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.normal(0.2, 1.0, D) + rng.normal(0.0, 0.7, (9, D)) * rng.uniform(0.5, 1.5, (9, 1))


def _pairwise_max(x: np.ndarray) -> float:
    return float(np.linalg.norm(x[:, None] - x[None], axis=2).max())


def test_alie_full_is_mean_minus_z_std_of_the_honest_updates(honest):
    out = full_knowledge_update("alie-full", honest, num_clients=12, num_malicious=3)
    # n=12, m=3: s = 7 - 3 = 4, z = Phi^-1(8/12)
    assert alie_z(12, 3) == pytest.approx(0.4307272992954576)
    np.testing.assert_allclose(out, honest.mean(0) - 0.4307272992954576 * honest.std(0))


@pytest.mark.parametrize(("attack", "epsilon"), [("ipm-full", 0.5), ("ipm100-full", 100.0)])
def test_ipm_full_is_minus_epsilon_times_the_honest_mean(honest, attack, epsilon):
    out = full_knowledge_update(attack, honest)
    np.testing.assert_allclose(out, -epsilon * honest.mean(0))
    # the inner product with the true gradient estimate (the honest mean) is negative
    assert out @ honest.mean(0) < 0


def test_minmax_full_reaches_the_largest_honest_distance_and_no_further(honest):
    out = full_knowledge_update("minmax-full", honest)
    mu, std = honest.mean(0), honest.std(0)
    bound = _pairwise_max(honest)
    dist = np.linalg.norm(honest - out, axis=1).max()
    assert dist <= bound and dist == pytest.approx(bound, rel=1e-6)
    gamma = float((mu - out) @ std / (std @ std))
    np.testing.assert_allclose(out, mu - gamma * std, atol=1e-9)
    assert gamma > 0
    assert np.linalg.norm(honest - (mu - 1.001 * gamma * std), axis=1).max() > bound


def test_scaling_max_norm_hand_checked():
    # attackers on top: [1, 2, 3, 4, 5, c, c] has median 4 -> bound 8 (4 at bound 1)
    assert scaling_max_norm(np.array([5.0, 1, 3, 2, 4]), 2) == pytest.approx(8.0)
    assert scaling_max_norm(np.array([5.0, 1, 3, 2, 4]), 2, norm_bound=1.0) == pytest.approx(4.0)
    # bound 1, even count: [1, 2, 3, 4, c, c] -> c above 3 makes the median (3 + c) / 2 < c, so c = 3
    assert scaling_max_norm(np.array([1.0, 2, 3, 4]), 2, norm_bound=1.0) == pytest.approx(3.0)
    # even count: [1, 2, 3, 4, c, c] -> (3 + 4) / 2 = 3.5 -> 7 (c = 7 >= 4 keeps the median)
    assert scaling_max_norm(np.array([1.0, 2, 3, 4]), 2, norm_bound=2.0) == 7.0
    assert scaling_max_norm(np.array([1.0, 2, 3, 4]), 0, norm_bound=1.5) == 3.75
    # attackers hold half or more: no bound of the honest median; twice the largest honest norm
    assert scaling_max_norm(np.array([1.0, 2]), 2, norm_bound=2.0) == 4.0


def _verified(cid: str, delta: np.ndarray) -> VerifiedUpdate:
    package = ModelPackage(packet_id=cid, model_hash="", timestamp=0.0, client_id=cid, public_key="",
                           server_round=1, num_examples=100)
    return VerifiedUpdate(package, {"w": delta.copy()}, {})


def test_scaling_max_is_the_largest_update_the_bcsfl_filter_keeps_unclipped(honest):
    own = honest[0] * 0.9 + 0.1  # an attacker's benign update, like the honest ones
    m = 3
    out = full_knowledge_update("scaling-max", honest, own=own, num_malicious=m)
    norms = np.linalg.norm(honest, axis=1)
    expected = (1 - SCALING_MAX_MARGIN) * scaling_max_norm(norms, m)  # the filter below checks it is the bound
    assert np.linalg.norm(out) == pytest.approx(expected)
    assert out @ own / (np.linalg.norm(out) * np.linalg.norm(own)) == pytest.approx(1.0)  # own direction, boosted

    g = {"w": np.zeros(D)}
    updates = [_verified(f"h{i}", h) for i, h in enumerate(honest)]
    attacked = filter_and_aggregate(g, updates + [_verified(f"m{i}", out) for i in range(m)], server_round=1)
    by_id = {d.client_id: d for d in attacked.decisions}
    assert all(d.kept for d in attacked.decisions)
    assert all(by_id[f"m{i}"].reason == "kept" for i in range(m))  # kept, not clipped
    assert np.linalg.norm(out) <= attacked.clip_norm * (1 + 1e-12) and attacked.clip_norm < np.linalg.norm(out) * 1.001
    # a bit more and the filter clips it: the bound is tight
    over = filter_and_aggregate(g, updates + [_verified(f"m{i}", out * 1.001) for i in range(m)], server_round=1)
    assert all("clipped" in d.reason for d in over.decisions if d.client_id.startswith("m"))
    assert FilterConfig().norm_bound == 2.0  # the default the attack is sized for


def test_client_half_is_honest_training_and_the_reference_gives_the_attack(honest):
    rng = np.random.default_rng(0)
    own = honest[1].astype(np.float32)
    for attack in sorted(FULL_KNOWLEDGE):
        passed = poison_update(attack, own, rng=rng)
        assert passed.dtype == np.float32 and passed is not own
        np.testing.assert_array_equal(passed, own)
        with_ref = poison_update(attack, own, rng=rng, reference=honest, num_clients=12, num_malicious=3)
        expected = full_knowledge_update(attack, honest, own=own, num_clients=12, num_malicious=3)
        np.testing.assert_allclose(with_ref, expected.astype(np.float32), rtol=1e-6)


def test_wrong_inputs_are_refused(honest):
    with pytest.raises(ValueError, match="not a full-knowledge attack"):
        full_knowledge_update("alie", honest)
    with pytest.raises(ValueError, match="reference"):
        full_knowledge_update("alie-full", honest[:1])
    with pytest.raises(ValueError, match="own"):
        full_knowledge_update("scaling-max", honest)
