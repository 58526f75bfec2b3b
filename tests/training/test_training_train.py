"""Local training (:mod:`bcsfl_flower.training.train`): the torch ``device`` setting and the loop used off CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bcsfl_flower.models import build_model
from bcsfl_flower.training.train import _DeviceBatches, _train_on, get_weights, resolve_device, train


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            resolve_device("cuda")


def test_device_loop_takes_the_cpu_loops_steps():
    """The loop used off CPU, run on CPU, gives the reference path's weights exactly:
    same batches in the same order, same steps."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 64)).astype(np.float32)
    y = rng.integers(0, 10, size=150).astype(np.int64)
    reference = build_model("digits", seed=1)
    result = train(reference, x, y, epochs=2, lr=0.05, batch_size=32, seed=5)

    model = build_model("digits", seed=1)
    torch.manual_seed(5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    total, batches = _train_on(torch.device("cpu"), model, optimizer, torch.nn.CrossEntropyLoss(),
                               _DeviceBatches(x, y, 32, 5, torch.device("cpu")), 2)
    for name, w in get_weights(reference).items():
        np.testing.assert_array_equal(get_weights(model)[name], w)
    assert batches == 10 and total / batches == pytest.approx(result.train_loss, rel=1e-6)
