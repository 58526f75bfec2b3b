"""DP by budget: each client's own noise for --target-epsilon, the DP model variant, Opacus modes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bcsfl_flower.models import build_model
from bcsfl_flower.settings import RunSettings
from bcsfl_flower.training.privacy import client_noise, epsilon_for, silence_opacus_warnings
from bcsfl_flower.training.train import get_weights, train


@pytest.fixture(autouse=True)
def _quiet() -> None:
    silence_opacus_warnings()


def _data(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 64)).astype(np.float32), rng.integers(0, 10, n).astype(np.int64)


@pytest.mark.parametrize("n, batch", [(200, 32), (3000, 64), (57, 64)])
def test_client_noise_spends_the_target_over_all_rounds(n: int, batch: int) -> None:
    sigma = client_noise(3.0, n, batch, local_epochs=1, rounds=10)
    per_epoch = math.ceil(n / batch)
    eps = epsilon_for(sigma, 1 / per_epoch, 10 * per_epoch)
    assert 2.95 <= eps <= 3.0  # Opacus' search ends within 0.01 below the target


def test_train_rounds_with_client_noise_end_at_the_target() -> None:
    """The accountant carried across rounds sees exactly the steps client_noise planned for."""
    x, y = _data()
    sigma = client_noise(2.0, len(y), 32, local_epochs=2, rounds=3)
    record = None
    for r in range(3):  # a fresh model each round, as a client builds one
        result = train(build_model("digits", variant="dp"), x, y, epochs=2, batch_size=32, seed=r, dp_noise=sigma, privacy_record=record)
        record = result.privacy_record
    assert 1.95 <= result.epsilon <= 2.0


def test_the_prv_accountant_needs_less_noise_for_the_same_target_and_the_client_still_ends_at_it() -> None:
    x, y = _data()
    rdp = client_noise(2.0, len(y), 32, local_epochs=2, rounds=3)
    prv = client_noise(2.0, len(y), 32, local_epochs=2, rounds=3, accountant="prv")
    assert prv < 0.97 * rdp
    record = None
    for r in range(3):
        result = train(build_model("digits", variant="dp"), x, y, epochs=2, batch_size=32, seed=r, dp_noise=prv,
                       privacy_record=record, dp_accountant="prv")
        record = result.privacy_record
    assert list(record["accountant"]) == ["prv"]
    assert 1.9 <= result.epsilon <= 2.0  # PRV's upper bound, the guarantee
    assert epsilon_for(prv, record["sample_rate"][0], sum(record["steps"])) > 2.0  # RDP would not certify it


def test_infinite_target_is_no_noise_and_bad_target_refused() -> None:
    assert client_noise(math.inf, 100, 10, 1, 1) == 0.0
    with pytest.raises(ValueError):
        client_noise(0.0, 100, 10, 1, 1)


def test_dp_variant_is_small_tanh_without_batchnorm() -> None:
    default, dp = build_model("mnist"), build_model("mnist", variant="dp")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(dp) < count(default) / 1.5  # the noise norm grows with sqrt(parameters)
    assert any(isinstance(m, torch.nn.Tanh) for m in dp.modules())
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in dp.modules())
    assert dp(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    # the default variant is unchanged: committed results depend on its exact weights
    assert [k for k in default.state_dict()] == [k for k in build_model("mnist", variant="default").state_dict()]
    with pytest.raises(ValueError):
        build_model("mnist", variant="big")


def test_settings_pick_the_dp_model_when_dp_is_on() -> None:
    assert RunSettings().model_variant() == "default"
    assert RunSettings(target_epsilon=3.0).model_variant() == "dp"
    assert RunSettings(target_epsilon=math.inf).model_variant() == "default"
    assert RunSettings(dp_noise=1.0).model_variant() == "dp"
    assert RunSettings(dataset="mnist", target_epsilon=3.0).model_variant() == "scatter"
    assert RunSettings(dataset="fashion-mnist", dp_noise=1.0).model_variant() == "scatter"
    assert RunSettings(dataset="mnist").model_variant() == "default"
    assert RunSettings(dataset="cifar10", target_epsilon=3.0).model_variant() == "dp"
    assert RunSettings(target_epsilon=3.0, model="default").model_variant() == "default"
    assert RunSettings.from_mapping({"target-epsilon": "3", "model": "auto"}).dp_enabled
    assert RunSettings(target_epsilon=-1.0).problems() and RunSettings(model="x").problems()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["functorch", "ew"])
def test_grad_sample_modes_train_the_same_model(mode: str) -> None:
    """Same seed, same clipped gradients and noise: the modes differ only in CPU cost."""
    x, y = _data(96)
    out = {}
    for m in ("hooks", mode):
        model = build_model("digits", variant="dp")
        train(model, x, y, batch_size=32, seed=5, dp_noise=1.0, dp_grad_sample_mode=m)
        out[m] = get_weights(model)
    for k in out["hooks"]:
        np.testing.assert_allclose(out["hooks"][k], out[mode][k], rtol=1e-4, atol=1e-5)


def test_cosine_schedule_starts_at_the_lr_and_decays_every_round() -> None:
    s = RunSettings(learning_rate=4.0, num_server_rounds=10, lr_schedule="cosine")
    lrs = [s.round_lr(r) for r in range(1, 11)]
    assert lrs[0] == 4.0 and all(a > b for a, b in zip(lrs, lrs[1:])) and 0 < lrs[-1] < 0.1
    assert RunSettings(learning_rate=4.0, num_server_rounds=10).round_lr(7) == 4.0
    assert RunSettings(lr_schedule="linear").problems()
