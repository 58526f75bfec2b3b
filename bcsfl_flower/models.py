"""Small models for the supported datasets (no BatchNorm, so Opacus DP-SGD applies)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["build_model"]


class MLP(nn.Module):
    """Two-layer perceptron for 8x8 digits."""

    def __init__(self, in_features: int, num_classes: int = 10, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.net(x)


class SmallCNN(nn.Module):
    """LeNet-style CNN for 28x28 grey images (MNIST, Fashion-MNIST)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.head(self.features(x))


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(8, channels), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(8, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class SmallResNet(nn.Module):
    """ResNet-style network for 32x32 colour images (CIFAR-10); GroupNorm keeps it DP-compatible."""

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.GroupNorm(8, width), nn.ReLU(),
            _Residual(width), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.GroupNorm(8, 2 * width), nn.ReLU(),
            _Residual(2 * width), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.net(x)


def build_model(dataset: str, num_classes: int = 10, seed: int = 0) -> nn.Module:
    """The model used for ``dataset``, initialised deterministically from ``seed``."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if dataset == "digits":
            return MLP(64, num_classes)
        if dataset in ("mnist", "fashion-mnist"):
            return SmallCNN(num_classes)
        if dataset == "cifar10":
            return SmallResNet(num_classes)
    raise ValueError(f"no model for dataset {dataset!r}")
