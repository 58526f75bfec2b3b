"""Local training and evaluation with PyTorch (plain SGD, optionally DP-SGD).

The CPU path is the reference. On another device (``device="cuda"``) the model and
each batch move there; batches come in the same order as on CPU, but the numbers are
not bit-identical to CPU's.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from .features import trainable_part

__all__ = ["TrainResult", "evaluate", "get_weights", "resolve_device", "set_weights", "torch_threads", "train"]

THREADS_ENV = "BCSFL_TORCH_THREADS"


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """The torch device a ``device`` setting names.

    ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (any name ``torch.device`` takes), or ``"auto"``:
    cuda when torch sees a GPU, else cpu. A cuda name on a machine where torch sees no
    GPU raises ``RuntimeError`` rather than silently training on CPU.
    """
    if isinstance(device, torch.device):
        return device
    name = (device or "cpu").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(name)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r}: torch {torch.__version__} sees no CUDA GPU here")
    return resolved


def torch_threads() -> int:
    """Intra-op threads for one training process: ``$BCSFL_TORCH_THREADS``, default 1.

    Flower's simulation gives each virtual client one core, so 1 is the reference;
    ``bcsfl simulate --threads T`` sets the variable (also for Ray's workers).
    """
    try:
        return max(1, int(os.environ.get(THREADS_ENV, "1")))
    except ValueError:
        return 1


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


class _DeviceBatches:
    """The batches ``_loader`` gives, cut from copies of ``(x, y)`` already on ``device``.

    An index loader with the same seed, size and batch size draws the same permutation
    each epoch, so the batch order matches the CPU path's; only indices cross to the
    device, not every example each epoch.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, device: torch.device) -> None:
        self.x = torch.from_numpy(x).to(device)
        self.y = torch.from_numpy(y).to(device)
        self.device = device
        self.order = _loader(np.arange(len(y)), np.arange(len(y)), batch_size, seed, shuffle=True)

    def __iter__(self):
        for idx, _ in self.order:
            idx = idx.to(self.device)
            yield self.x[idx], self.y[idx]


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
    device: str | torch.device = "cpu",
    dp_grad_sample_mode: str = "hooks",
    dp_accountant: str = "rdp",
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
    device : str or torch.device
        Where to train (see :func:`resolve_device`): ``"cpu"`` (default, the reference),
        ``"cuda"``, ``"auto"``. The model moves there and stays there; read it back with
        :func:`get_weights`, which copies to CPU.
    dp_grad_sample_mode : str
        Opacus' per-example gradient method, ``"hooks"`` (default), ``"functorch"`` or
        ``"ew"`` (see :class:`~bcsfl_flower.training.privacy.DPConfig`).
    dp_accountant : str
        ``"rdp"`` (default) or ``"prv"``: how the client's epsilon is accounted.
    """
    dev = resolve_device(device)
    on_cpu = dev.type == "cpu"
    torch.manual_seed(seed)
    if not on_cpu:
        model.to(dev)
    model, x = trainable_part(model, x)  # a fixed front end runs once, not per step
    loader = _loader(x, y, batch_size, seed, shuffle=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    trained, budget = model, None
    if dp_noise > 0:
        from .privacy import DPConfig, PrivacyBudget, make_private, silence_opacus_warnings

        silence_opacus_warnings()
        history = PrivacyBudget.from_record(privacy_record).history if privacy_record else None
        trained, optimizer, loader, budget = make_private(
            model, optimizer, loader, DPConfig(dp_noise, dp_max_grad_norm, dp_delta, accountant=dp_accountant,
                                                    grad_sample_mode=dp_grad_sample_mode),
            history=history, seed=seed,
        )
    criterion = nn.CrossEntropyLoss()
    trained.train()
    total_loss, batches = 0.0, 0
    if on_cpu:
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
    else:
        # DP-SGD keeps Opacus' Poisson loader (batches move one by one); plain SGD cuts
        # batches on the device.
        batch_source = loader if budget is not None else _DeviceBatches(x, y, batch_size, seed, dev)
        total_loss, batches = _train_on(dev, trained, optimizer, criterion, batch_source, epochs)
    if budget is not None:
        trained.remove_hooks()  # Opacus' hooks stay on the model otherwise: it could not be trained again
        for p in model.parameters():
            p.grad_sample = None
    return TrainResult(
        num_examples=len(y),
        train_loss=total_loss / max(1, batches),
        epsilon=budget.epsilon(dp_delta) if budget is not None else None,
        privacy_record=budget.to_record() if budget is not None else None,
    )


def _train_on(device: torch.device, model: nn.Module, optimizer, criterion, batches, epochs: int) -> tuple[float, int]:
    """The training loop off the CPU path; returns (sum of batch losses, batches).

    The same steps as the CPU loop, but each batch moves to ``device`` and the losses
    stay there until the end (no device sync per batch).
    """
    losses = []
    for _ in range(epochs):
        for xb, yb in batches:
            if len(yb) == 0:  # Poisson sampling can draw an empty batch
                continue
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            optimizer.zero_grad()
            loss = criterion(model(xb), yb)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
    return (float(torch.stack(losses).double().sum()) if losses else 0.0), len(losses)


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 1024,
             device: str | torch.device = "cpu") -> tuple[float, float]:
    """Return ``(mean cross-entropy loss, accuracy)`` of ``model`` on ``(x, y)``.

    ``device`` (see :func:`resolve_device`) is where the model is moved (and stays)
    and each batch is evaluated; ``"cpu"`` is the reference.
    """
    dev = resolve_device(device)
    on_cpu = dev.type == "cpu"
    if not on_cpu:
        model.to(dev)
    model, x = trainable_part(model, x)
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        xb = torch.from_numpy(x[start : start + batch_size])
        yb = torch.from_numpy(y[start : start + batch_size])
        if not on_cpu:
            xb, yb = xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
        logits = model(xb)
        loss += float(criterion(logits, yb))
        correct += int((logits.argmax(1) == yb).sum())
    return loss / max(1, len(y)), correct / max(1, len(y))
