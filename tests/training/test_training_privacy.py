"""DP-SGD budget accounted across rounds with fresh models, optimizers and loaders."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from flwr.app import ConfigRecord
from opacus.accountants import RDPAccountant
from torch.utils.data import DataLoader, TensorDataset

from bcsfl_flower.training.privacy import (
    DPConfig,
    PrivacyBudget,
    epsilon_for,
    make_private,
    noise_for_epsilon,
    silence_opacus_warnings,
)

N, BATCH = 320, 32  # -> 10 batches, sample_rate 0.1
CONFIG = DPConfig(noise_multiplier=1.1, max_grad_norm=1.0, delta=1e-5)


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(N, 6, generator=g), torch.randint(0, 3, (N,), generator=g))


def _round(
    history: list[tuple[float, float, int]] | None, seed: int, config: DPConfig = CONFIG
) -> tuple[torch.nn.Module, torch.nn.Module, PrivacyBudget, int]:
    """One local round in a 'fresh process': new model, optimizer and loader."""
    torch.manual_seed(123)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(_data(), batch_size=BATCH)
    gsm, dp_opt, dp_loader, budget = make_private(
        model, optimizer, loader, config, history=history, seed=seed
    )
    steps = 0
    for x, y in dp_loader:
        dp_opt.zero_grad()
        torch.nn.functional.cross_entropy(gsm(x), y).backward()
        dp_opt.step()
        steps += 1
    return model, gsm, budget, steps


@pytest.fixture(autouse=True)
def _quiet() -> None:
    silence_opacus_warnings()


def test_epsilon_grows_across_rounds_via_config_record() -> None:
    _, _, b1, steps1 = _round(None, seed=1)
    q = 1 / math.ceil(N / BATCH)
    assert b1.history == [(1.1, q, steps1)] and steps1 == 10
    eps1 = b1.epsilon()
    assert eps1 > 0

    rec = ConfigRecord(b1.to_record())  # what travels to the next round
    carried = PrivacyBudget.from_record(rec)
    assert carried.history == b1.history and carried.epsilon() == pytest.approx(eps1)

    _, _, b2, steps2 = _round(carried.history, seed=2)
    eps2 = b2.epsilon()
    assert eps2 > eps1
    assert b2.steps == steps1 + steps2

    reference = RDPAccountant()  # the same history in one go
    reference.history = [(1.1, q, steps1), (1.1, q, steps2)]
    assert eps2 == pytest.approx(reference.get_epsilon(delta=1e-5), rel=1e-9)
    assert eps2 == pytest.approx(b2.epsilon(delta=1e-5))
    assert b2.epsilon(delta=1e-3) < eps2


def test_heterogeneous_history_is_composed() -> None:
    _, _, b1, s1 = _round(None, seed=1)
    _, _, b2, s2 = _round(b1.history, seed=2, config=DPConfig(noise_multiplier=2.0))
    q = 0.1
    assert b2.history == [(1.1, q, s1), (2.0, q, s2)]
    acc = RDPAccountant()
    acc.history = b2.history
    assert b2.epsilon() == pytest.approx(acc.get_epsilon(delta=1e-5))
    assert b2.epsilon() > b1.epsilon()


def test_original_module_shares_parameters_without_prefix() -> None:
    model, gsm, _, _ = _round(None, seed=3)
    assert all(k.startswith("_module.") for k in gsm.state_dict())
    assert not any(k.startswith("_module.") for k in model.state_dict())
    for name, p in model.named_parameters():
        assert gsm.get_parameter(f"_module.{name}") is p
    torch.manual_seed(123)
    fresh = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    assert not torch.equal(fresh[0].weight, model[0].weight)  # training changed it
    plain = gsm.to_standard_module()
    assert plain is model and not hasattr(model[0].weight, "grad_sample")


def test_seed_reproducible() -> None:
    a, _, _, _ = _round(None, seed=7)
    b, _, _, _ = _round(None, seed=7)
    c, _, _, _ = _round(None, seed=8)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_no_secure_rng_warning() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _round(None, seed=1)
    assert not [w for w in caught if "Secure RNG" in str(w.message)]


def test_record_is_plain_lists_and_empty_budget() -> None:
    b = PrivacyBudget([(1.0, 0.01, 5), (2.0, 0.02, 7)], delta=1e-6)
    rec = b.to_record()
    assert rec == {
        "noise": [1.0, 2.0],
        "sample_rate": [0.01, 0.02],
        "steps": [5, 7],
        "accountant": ["rdp"],
        "delta": [1e-6],
    }
    back = PrivacyBudget.from_record(ConfigRecord(rec))
    assert back.history == b.history and back.delta == 1e-6
    assert PrivacyBudget.from_record({}).epsilon() == 0.0
    assert PrivacyBudget.from_record(ConfigRecord(PrivacyBudget().to_record())).history == []
    assert PrivacyBudget([(0.0, 0.1, 3)]).epsilon() == math.inf
    with pytest.raises(ValueError):
        PrivacyBudget.from_record({"noise": [1.0], "sample_rate": [], "steps": [1]})


def test_prv_accountant_round_trip() -> None:
    b = PrivacyBudget([(1.0, 0.01, 500)], accountant="prv")
    back = PrivacyBudget.from_record(b.to_record())
    assert back.mechanism == "prv"
    assert 0 < back.epsilon() < PrivacyBudget(b.history).epsilon()  # PRV is tighter


def test_config_validation() -> None:
    for bad in (
        dict(noise_multiplier=-1.0),
        dict(noise_multiplier=1.0, max_grad_norm=0.0),
        dict(noise_multiplier=1.0, delta=1.0),
        dict(noise_multiplier=1.0, accountant="gdp"),
    ):
        with pytest.raises(ValueError):
            DPConfig(**bad)


# Typical client: 3000 examples, batch 32 (q = 1/94), 1 epoch x 10 rounds, delta 1e-5.
Q, STEPS = 1 / math.ceil(3000 / 32), 10 * math.ceil(3000 / 32)


@pytest.mark.parametrize(
    ("sigma", "eps_10_rounds", "eps_1_round"),
    [(1.56, 0.99, 0.44), (0.88, 2.97, 1.73), (0.63, 7.67, 4.30)],
)
def test_documented_epsilon_table(sigma: float, eps_10_rounds: float, eps_1_round: float) -> None:
    assert epsilon_for(sigma, Q, STEPS) == pytest.approx(eps_10_rounds, abs=0.01)
    assert epsilon_for(sigma, Q, STEPS // 10) == pytest.approx(eps_1_round, abs=0.01)


def test_noise_for_epsilon_hits_target() -> None:
    sigma = noise_for_epsilon(3.0, Q, STEPS)
    assert sigma == pytest.approx(0.876, abs=0.005)
    assert 2.98 <= epsilon_for(sigma, Q, STEPS) <= 3.0
