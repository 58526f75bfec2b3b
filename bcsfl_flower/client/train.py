"""Local training and evaluation with PyTorch (plain SGD, optionally DP-SGD)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["TrainResult", "evaluate", "get_weights", "set_weights", "train"]


def get_weights(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's state as named float32 numpy arrays, in ``state_dict`` order."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def set_weights(model: nn.Module, tensors: Mapping[str, np.ndarray]) -> None:
    """Load named numpy arrays into ``model`` (strict: names and shapes must match)."""
    state = OrderedDict((k, torch.from_numpy(np.array(v, copy=True))) for k, v in tensors.items())
    model.load_state_dict(state, strict=True)


@dataclass(frozen=True)
class TrainResult:
    """What one local training run produced."""

    num_examples: int
    train_loss: float
    epsilon: float | None = None
    privacy_record: dict | None = None


def _loader(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, shuffle: bool) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    dataset = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int = 1,
    lr: float = 0.05,
    batch_size: int = 32,
    momentum: float = 0.0,
    seed: int = 0,
    dp_noise: float = 0.0,
    dp_max_grad_norm: float = 1.0,
    dp_delta: float = 1e-5,
    privacy_record: dict | None = None,
) -> TrainResult:
    """Train ``model`` in place with SGD on ``(x, y)``.

    Parameters
    ----------
    model : nn.Module
        Model to update in place.
    x, y : np.ndarray
        Normalised inputs and integer labels.
    epochs, lr, batch_size, momentum : training hyper-parameters.
    seed : int
        Seeds the batch order (and the DP noise), so a run is reproducible.
    dp_noise : float
        Opacus DP-SGD noise multiplier; 0 disables differential privacy.
    dp_max_grad_norm : float
        Per-example gradient clipping bound for DP-SGD.
    dp_delta : float
        Delta of the reported (epsilon, delta) guarantee.
    privacy_record : dict, optional
        Accountant history from earlier rounds (``PrivacyBudget.to_record()``), so
        epsilon accumulates across rounds for this client.
    """
    torch.manual_seed(seed)
    loader = _loader(x, y, batch_size, seed, shuffle=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    trained, budget = model, None
    if dp_noise > 0:
        from .privacy import DPConfig, PrivacyBudget, make_private, silence_opacus_warnings

        silence_opacus_warnings()
        history = PrivacyBudget.from_record(privacy_record).history if privacy_record else None
        trained, optimizer, loader, budget = make_private(
            model, optimizer, loader, DPConfig(dp_noise, dp_max_grad_norm, dp_delta),
            history=history, seed=seed,
        )
    criterion = nn.CrossEntropyLoss()
    trained.train()
    total_loss, batches = 0.0, 0
    for _ in range(epochs):
        for xb, yb in loader:
            if len(yb) == 0:  # Poisson sampling can draw an empty batch
                continue
            optimizer.zero_grad()
            loss = criterion(trained(xb), yb)
            loss.backward()
            optimizer.step()
            total_loss += float(loss.item())
            batches += 1
    return TrainResult(
        num_examples=len(y),
        train_loss=total_loss / max(1, batches),
        epsilon=budget.epsilon(dp_delta) if budget is not None else None,
        privacy_record=budget.to_record() if budget is not None else None,
    )


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 1024) -> tuple[float, float]:
    """Return ``(mean cross-entropy loss, accuracy)`` of ``model`` on ``(x, y)``."""
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        xb = torch.from_numpy(x[start : start + batch_size])
        yb = torch.from_numpy(y[start : start + batch_size])
        logits = model(xb)
        loss += float(criterion(logits, yb))
        correct += int((logits.argmax(1) == yb).sum())
    return loss / max(1, len(y)), correct / max(1, len(y))
