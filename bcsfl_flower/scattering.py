"""A fixed 2D scattering transform: handcrafted features for DP-SGD on small images.

Tramer & Boneh, "Differentially Private Learning Needs Better Features (or Much More
Data)" (ICLR 2021) show that a model trained with DP-SGD on the *scattering transform*
of an image (Bruna & Mallat, "Invariant Scattering Convolution Networks", 2013) beats
an end-to-end CNN at the same epsilon: the features cost no privacy (they are fixed,
learnt from nothing), so the noise is spent on a small head only.

This is the transform with ``J = 2`` scales and ``L = 8`` orientations, computed with
FFTs over a reflect-padded image: order 0 (the low-passed image), order 1
(``|x * psi_{j,t}| * phi``, ``J * L`` maps) and order 2 (``||x * psi_{j1,t1}| *
psi_{j2,t2}| * phi`` for ``j1 < j2``, ``L^2 J(J-1)/2`` maps), each low-passed by a
Gaussian ``phi`` and sampled every ``2^J`` pixels: a 28x28 image gives 81 maps of 7x7.
Morlet wavelets as in Kymatio (Andreux et al., JMLR 2020), whose filter bank this
follows; the maps are not bit-identical to Kymatio's (no subsampling between orders).

:class:`Scattering2D` has no parameters: its filters are non-persistent buffers, so a
model that uses it as a front end has the state dict of its head alone
(:func:`bcsfl_flower.training.features.trainable_part` then transforms each array once).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import nn

__all__ = ["Scattering2D"]


def _gabor(size: int, sigma: float, theta: float, xi: float, slant: float) -> np.ndarray:
    """A Gabor filter on a ``size x size`` periodic grid centred at the origin (spatial domain)."""
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    curv = rot @ np.diag([1.0, 1.0 / slant**2]) @ rot.T / (2 * sigma**2)
    out = np.zeros((size, size), np.complex128)
    for ox in range(-2, 3):  # periodise: sum the neighbouring periods
        for oy in range(-2, 3):
            x, y = np.mgrid[ox * size:(ox + 1) * size, oy * size:(oy + 1) * size]
            out += np.exp(-(curv[0, 0] * x * x + (curv[0, 1] + curv[1, 0]) * x * y + curv[1, 1] * y * y)
                          + 1j * xi * (x * math.cos(theta) + y * math.sin(theta)))
    return out * slant / (2 * math.pi * sigma**2)


def _morlet(size: int, sigma: float, theta: float, xi: float, slant: float) -> np.ndarray:
    """A Gabor filter minus its Gaussian envelope scaled so that the filter has zero mean."""
    wave, envelope = _gabor(size, sigma, theta, xi, slant), _gabor(size, sigma, theta, 0.0, slant)
    return wave - envelope * (wave.sum() / envelope.sum())


@functools.lru_cache(maxsize=4)
def _filter_bank(n: int, J: int, L: int) -> tuple[np.ndarray, np.ndarray]:
    """Fourier transforms of the ``J L`` Morlet wavelets (scale-major) and the low-pass; built once per shape."""
    psi = [_morlet(n, 0.8 * 2**j, (L // 2 - 1 - t) * math.pi / L, 3 * math.pi / 4 / 2**j, 4.0 / L)
           for j in range(J) for t in range(L)]
    phi = _gabor(n, 0.8 * 2 ** (J - 1), 0.0, 0.0, 1.0)
    # real in the Fourier domain (symmetric envelopes)
    return np.real(np.fft.fft2(psi)).astype(np.float32), np.real(np.fft.fft2(phi)).astype(np.float32)


class Scattering2D(nn.Module):
    """Scattering transform of ``(B, 1, size, size)`` images to ``(B, channels, size/2^J, size/2^J)``.

    Parameters
    ----------
    size : int
        Image side, default 28 (a multiple of ``2**J``).
    J : int
        Scales, default 2.
    L : int
        Orientations, default 8.
    """

    def __init__(self, size: int = 28, J: int = 2, L: int = 8) -> None:
        super().__init__()
        if size % 2**J:
            raise ValueError(f"image side {size} is not a multiple of 2**J = {2**J}")
        self.size, self.J, self.L, self.pad = size, J, L, 2**J
        psi_hat, phi_hat = _filter_bank(size + 2 * self.pad, J, L)
        self.register_buffer("psi_hat", torch.tensor(psi_hat), persistent=False)  # copies: the bank is shared
        self.register_buffer("phi_hat", torch.tensor(phi_hat), persistent=False)

    @property
    def cache_key(self) -> str:
        """Names the transform: arrays' features are cached per key."""
        return f"scattering2d(size={self.size},J={self.J},L={self.L})"

    @property
    def channels(self) -> int:
        """Maps per image: ``1 + J L + L^2 J (J - 1) / 2``."""
        return 1 + self.J * self.L + self.L**2 * self.J * (self.J - 1) // 2

    def _low(self, spectra: torch.Tensor, j: int) -> torch.Tensor:
        """Low-pass maps held at scale ``j`` (every ``2^j`` pixels), sample every ``2^J``, crop the padding."""
        out = torch.fft.ifft2(_periodize(spectra * _periodize(self.phi_hat, 2**j), 2 ** (self.J - j))).real
        margin, side = self.pad // 2**self.J, self.size // 2**self.J
        return out[..., margin:margin + side, margin:margin + side]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if x.dim() != 4 or x.shape[1] != 1 or x.shape[2:] != (self.size, self.size):
            raise ValueError(f"expected (B, 1, {self.size}, {self.size}) images, got {tuple(x.shape)}")
        b, L = x.shape[0], self.L
        spec = torch.fft.fft2(nn.functional.pad(x[:, 0].float(), (self.pad,) * 4, mode="reflect"))
        order1, order2 = [], []
        for j1 in range(self.J):
            # |x * psi_j1| is band-limited enough to be held every 2^j1 pixels (as Kymatio does)
            u1 = torch.fft.fft2(torch.fft.ifft2(_periodize(spec[:, None] * self.psi_hat[j1 * L:(j1 + 1) * L], 2**j1)).abs())
            order1.append(self._low(u1, j1))
            for j2 in range(j1 + 1, self.J):
                psi2 = _periodize(self.psi_hat[j2 * L:(j2 + 1) * L], 2**j1)
                u2 = torch.fft.ifft2(_periodize(u1[:, :, None] * psi2, 2 ** (j2 - j1))).abs()
                order2.append(self._low(torch.fft.fft2(u2), j2).reshape(b, L * L, *order1[0].shape[-2:]))
        return torch.cat([self._low(spec, 0)[:, None], *order1, *order2], dim=1)


def _periodize(spectra: torch.Tensor, k: int) -> torch.Tensor:
    """The spectrum of the signal sampled every ``k`` pixels (mean of the ``k x k`` aliases)."""
    if k == 1:
        return spectra
    n, m = spectra.shape[-2] // k, spectra.shape[-1] // k
    rows = spectra[..., :n, :] + spectra[..., n:2 * n, :]  # adding slices in place beats a strided mean
    for a in range(2, k):
        rows += spectra[..., a * n:(a + 1) * n, :]
    out = rows[..., :m] + rows[..., m:2 * m]
    for b in range(2, k):
        out += rows[..., b * m:(b + 1) * m]
    return out.mul_(1.0 / (k * k))
