"""Small models for the supported datasets (no BatchNorm, so Opacus DP-SGD applies).

Variants per dataset: ``"default"`` (ReLU, the non-DP reference whose model hashes
committed results depend on), ``"dp"``, shaped for DP-SGD after Papernot et al.,
"Tempered Sigmoid Activations for Deep Learning with Differential Privacy" (AAAI 2021)
and Tramer & Boneh, "Differentially Private Learning Needs Better Features" (ICLR 2021):
few parameters (the noise norm grows with sqrt(d)), tanh activations (bounded, so
clipped per-example gradients lose less), GroupNorm where a norm layer is needed;
and for 28x28 images ``"scatter"``, Tramer & Boneh's ScatterNet + linear model: a fixed
scattering transform (:mod:`bcsfl_flower.scattering`, no parameters) and a linear head,
the best of them under DP-SGD. Its fixed front end is computed once per array
(:func:`bcsfl_flower.training.features.trainable_part`), so training and evaluation
run on the head alone.
"""

from __future__ import annotations

import torch
from torch import nn

from .scattering import Scattering2D

__all__ = ["VARIANTS", "ScatterLinear", "build_model"]

VARIANTS = ("default", "dp", "scatter")


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


class TanhCNN(nn.Module):
    """Papernot et al.'s DP-SGD CNN for 28x28 grey images: strided convs, tanh, ~26k parameters."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 8, stride=2, padding=3), nn.Tanh(), nn.MaxPool2d(2, 1),
            nn.Conv2d(16, 32, 4, stride=2), nn.Tanh(), nn.MaxPool2d(2, 1),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 32), nn.Tanh(), nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.head(self.features(x))


class TanhMLP(nn.Module):
    """The digits MLP with tanh: the DP variant for 8x8 digits."""

    def __init__(self, in_features: int, num_classes: int = 10, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, hidden), nn.Tanh(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.net(x)


class ScatterLinear(nn.Module):
    """Tramer & Boneh's ScatterNet + linear for 28x28 grey images: 81x7x7 fixed features, ~40k parameters.

    ``fixed_front`` (the scattering transform) has no parameters; ``head`` normalises the
    features per example (GroupNorm without affine terms, so no statistic of other
    examples leaks into a DP-SGD step) and classifies them linearly.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.fixed_front = Scattering2D(28, J=2, L=8)
        c = self.fixed_front.channels
        self.head = nn.Sequential(nn.GroupNorm(c // 3, c, affine=False), nn.Flatten(), nn.Linear(c * 7 * 7, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.head(self.fixed_front(x))


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


def build_model(dataset: str, num_classes: int = 10, seed: int = 0, variant: str = "default") -> nn.Module:
    """The model used for ``dataset``, initialised deterministically from ``seed``.

    Parameters
    ----------
    dataset : str
        ``"digits"``, ``"mnist"``, ``"fashion-mnist"`` or ``"cifar10"``.
    num_classes : int
        Output classes, default 10.
    seed : int
        Seeds the initialisation, default 0.
    variant : str
        ``"default"`` (the non-DP reference), ``"dp"`` (tanh, fewer parameters; for
        CIFAR-10 the GroupNorm ResNet serves both) or ``"scatter"`` (ScatterNet + linear,
        28x28 images only).
    """
    if variant not in VARIANTS:
        raise ValueError(f"model variant must be one of {VARIANTS}, got {variant!r}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if variant == "dp" and dataset == "digits":
            return TanhMLP(64, num_classes)
        if variant == "scatter":
            if dataset not in ("mnist", "fashion-mnist"):
                raise ValueError(f"the scatter model is for 28x28 images (mnist, fashion-mnist), not {dataset!r}")
            return ScatterLinear(num_classes)
        if variant == "dp" and dataset in ("mnist", "fashion-mnist"):
            return TanhCNN(num_classes)
        if dataset == "digits":
            return MLP(64, num_classes)
        if dataset in ("mnist", "fashion-mnist"):
            return SmallCNN(num_classes)
        if dataset == "cifar10":
            return SmallResNet(num_classes)
    raise ValueError(f"no model for dataset {dataset!r}")
