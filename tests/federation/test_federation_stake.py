"""PoS draw (proportional to stake, recomputable, without repeats) and stake moves (``federation.stake``)."""

from collections import Counter

import numpy as np

from bcsfl_flower.federation.stake import StakePolicy, draw_committee, next_stakes


def test_same_seed_same_committee_and_no_repeats():
    stakes = {f"n{i}": float(i + 1) for i in range(10)}
    a = draw_committee(stakes, 4, "block-hash|round-1")
    assert a == draw_committee(dict(reversed(list(stakes.items()))), 4, "block-hash|round-1")
    assert len(set(a)) == 4
    assert a != draw_committee(stakes, 4, "block-hash|round-2") or a != draw_committee(stakes, 4, "other")


def test_first_member_frequency_proportional_to_stake():
    stakes = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}
    draws = 8000
    counts = Counter(draw_committee(stakes, 2, f"seed-{i}")[0] for i in range(draws))
    total = sum(stakes.values())
    expected = np.array([stakes[m] / total * draws for m in stakes])
    observed = np.array([counts[m] for m in stakes])
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 16.3, (observed, expected)  # p = 0.001 with 3 degrees of freedom


def test_membership_grows_with_stake_and_zero_stake_never_drawn():
    stakes = {"poor": 0.5, "rich": 20.0, "broke": 0.0, **{f"m{i}": 5.0 for i in range(5)}}
    counts = Counter(m for i in range(2000) for m in draw_committee(stakes, 3, f"s{i}"))
    assert counts["broke"] == 0
    assert counts["rich"] > counts["m0"] > counts["poor"]


def test_next_stakes_rewards_and_penalties_are_bounded():
    policy = StakePolicy(initial=10, reward=1, penalty=0.5, floor=0.1)
    book = {"b": 10.0, "a": 10.0, "c": 10.0}
    for _ in range(20):
        book = next_stakes(book, kept=["a"], rejected=["b"], policy=policy)
    assert book["a"] == 30 and book["b"] == 0.1 and book["c"] == 10
    assert list(book) == ["a", "b", "c"]  # sorted: the form the chain records


def test_next_stakes_moves_only_enrolled_ids_and_is_pure():
    policy = StakePolicy()
    book = {"a": 10.0}
    after = next_stakes(book, kept=["ghost"], rejected=["phantom"], policy=policy)
    assert after == {"a": 10.0} and book == {"a": 10.0}


def test_policy_round_trips_and_refuses_nonsense():
    import pytest

    policy = StakePolicy(initial=5, reward=2, penalty=0.25, floor=1)
    assert StakePolicy.from_json(policy.to_json()) == policy
    for bad in ({**policy.to_json(), "penalty": 2.0}, {**policy.to_json(), "reward": float("nan")}, {"initial": 1}):
        with pytest.raises(ValueError):
            StakePolicy.from_json(bad)
