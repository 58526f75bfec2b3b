"""The scattering front end (Tramer & Boneh's ScatterNet + linear) and the cache of its features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bcsfl_flower.models import ScatterLinear, build_model
from bcsfl_flower.scattering import Scattering2D
from bcsfl_flower.settings import RunSettings
from bcsfl_flower.training.features import FeatureCache, trainable_part
from bcsfl_flower.training.train import evaluate, get_weights, train


def _digit_like(n: int, seed: int = 0) -> np.ndarray:
    """Strokes on a blank 28x28 canvas: a bar whose angle and place vary."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 1, 28, 28), np.float32)
    for i in range(n):
        r, c = rng.integers(6, 18, size=2)
        if i % 2:
            out[i, 0, r:r + 10, c:c + 2] = 1.0  # vertical bar
        else:
            out[i, 0, r:r + 2, c:c + 10] = 1.0  # horizontal bar
    return out


def test_scattering_has_81_maps_of_7x7_and_no_state() -> None:
    s = Scattering2D()
    out = s(torch.from_numpy(_digit_like(4)))
    assert s.channels == 81 and out.shape == (4, 81, 7, 7)
    assert torch.isfinite(out).all()
    assert list(s.state_dict()) == [] and not list(s.parameters())  # nothing of it travels in a model
    with pytest.raises(ValueError, match="expected"):
        s(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match="multiple"):
        Scattering2D(size=30)


def test_wavelets_ignore_a_constant_image_and_the_low_pass_keeps_it() -> None:
    s = Scattering2D()
    flat = s(torch.full((1, 1, 28, 28), 2.0))
    assert torch.allclose(flat[0, 0], torch.full((7, 7), 2.0 * float(s.phi_hat[0, 0])), atol=1e-4)
    assert flat[0, 1:].abs().max() < 1e-4  # zero-mean wavelets: no response to a constant
    assert s.psi_hat[:, 0, 0].abs().max() < 1e-6


def test_features_see_orientation_and_barely_move_with_a_one_pixel_shift() -> None:
    s = Scattering2D()
    img = torch.zeros(3, 1, 28, 28)
    img[0, 0, 9:19, 12:14] = 1.0  # vertical bar
    img[1, 0, 10:20, 12:14] = 1.0  # the same bar, one pixel lower
    img[2, 0, 12:14, 9:19] = 1.0  # horizontal bar, same place
    f = s(img).flatten(1)
    shifted, turned = (f[0] - f[1]).norm(), (f[0] - f[2]).norm()
    assert shifted < 0.5 * turned  # translation-stable, orientation-selective


def test_cache_transforms_an_array_once_and_stays_bounded() -> None:
    calls = []

    def transform(t: torch.Tensor) -> torch.Tensor:
        calls.append(len(t))
        return t.flatten(1) * 2

    cache = FeatureCache(transform, max_bytes=2 * 10 * 784 * 4, chunk=4)
    a, b, c = _digit_like(10, 1), _digit_like(10, 2), _digit_like(10, 3)
    fa = cache(a)
    assert calls == [4, 4, 2] and torch.equal(fa, torch.from_numpy(a).flatten(1) * 2)
    assert cache(a.copy()) is fa and calls == [4, 4, 2]  # same bytes, another array: a hit
    cache(b), cache(c)  # third array: the least recently used (a) goes
    calls.clear()
    cache(c)
    assert calls == []
    cache(a)
    assert calls == [4, 4, 2] and cache.hits == 2 and cache.misses == 4


def test_scatter_model_trains_its_head_on_cached_features() -> None:
    model = build_model("mnist", variant="scatter")
    assert isinstance(model, ScatterLinear)
    assert list(get_weights(model)) == ["head.2.weight", "head.2.bias"]  # the front has no state
    x = _digit_like(64)
    head, feats = trainable_part(model, x)
    assert head is model.head and feats.shape == (64, 81, 7, 7)
    np.testing.assert_allclose(feats, model.fixed_front(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)
    cnn = build_model("mnist")
    assert trainable_part(cnn, x) == (cnn, x)
    with torch.no_grad():  # the whole model and its head on features agree
        np.testing.assert_allclose(model(torch.from_numpy(x)).numpy(), head(torch.from_numpy(feats)).numpy(),
                                   rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="28x28"):
        build_model("digits", variant="scatter")


def test_a_model_trains_with_dp_twice_and_learns_orientation() -> None:
    """Opacus' hooks are removed after each round: the same model object can be trained again."""
    x = _digit_like(200, 4)
    y = (np.arange(200) % 2).astype(np.int64)
    model = build_model("mnist", variant="scatter")
    first = train(model, x, y, lr=2.0, batch_size=50, seed=1, dp_noise=0.5, dp_max_grad_norm=1.0)
    second = train(model, x, y, lr=2.0, batch_size=50, seed=2, dp_noise=0.5, dp_max_grad_norm=1.0,
                   privacy_record=first.privacy_record)
    assert second.epsilon > first.epsilon  # the budget composes across the two rounds
    assert evaluate(model, _digit_like(100, 5), (np.arange(100) % 2).astype(np.int64))[1] > 0.9


def test_settings_accept_the_scatter_model() -> None:
    assert RunSettings(model="scatter").model_variant() == "scatter"
    assert not RunSettings(model="scatter").problems()


def test_a_feature_folder_serves_later_caches_and_ignores_a_torn_file(tmp_path) -> None:
    calls = []

    def transform(t: torch.Tensor) -> torch.Tensor:
        calls.append(len(t))
        return t.flatten(1) + 1

    x = _digit_like(6, 7)
    first = FeatureCache(transform, folder=tmp_path, name="t(a=1)")(x)
    files = list(tmp_path.glob("*.npy"))
    assert calls == [6] and len(files) == 1 and files[0].name.startswith("t_a_1_-")
    again = FeatureCache(transform, folder=tmp_path, name="t(a=1)")(x)  # a new process, in effect
    assert calls == [6] and torch.equal(first, again)
    files[0].write_bytes(b"not an npy file")
    assert torch.equal(FeatureCache(transform, folder=tmp_path, name="t(a=1)")(x), first) and calls == [6, 6]
    assert list(tmp_path.glob("*.tmp")) == []
