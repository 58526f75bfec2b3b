"""Model-poisoning attacks applied by malicious clients.

Every model attack acts on a flat 1-D update vector ``update = local - global``
(float32 or float64; the result keeps the input dtype). Data attacks (label flipping)
act on the training labels instead, through :func:`flip_labels`.

Attacks in :data:`NEEDS_REFERENCE` are *omniscient / partial-knowledge* attacks: they
need a ``(k, d)`` array of honest-update estimates (for instance the colluding
clients' own benign updates, as in the original papers).
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import torch

__all__ = [
    "ATTACKS",
    "DATA_ATTACKS",
    "NEEDS_REFERENCE",
    "alie_z",
    "flip_labels",
    "poison_update",
]

ATTACKS: tuple[str, ...] = (
    "none",
    "label-flip",
    "sign-flip",
    "gaussian",
    "scaling",
    "alie",
    "ipm",
    "min-max",
)
DATA_ATTACKS: frozenset[str] = frozenset({"label-flip"})
NEEDS_REFERENCE: frozenset[str] = frozenset({"alie", "ipm", "min-max"})


def flip_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Flip class labels ``y -> num_classes - 1 - y`` (label-flipping data poisoning).

    Parameters
    ----------
    labels : torch.Tensor
        Integer class labels in ``[0, num_classes)``.
    num_classes : int
        Number of classes of the task.

    Returns
    -------
    torch.Tensor
        A new tensor with the same dtype and device as ``labels``.

    References
    ----------
    Tolpegin et al., "Data Poisoning Attacks Against Federated Learning Systems",
    ESORICS 2020.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return (num_classes - 1) - labels


def alie_z(num_clients: int, num_malicious: int) -> float:
    """Return the ALIE perturbation factor ``z_max`` of Baruah et al. (2019).

    ``s = floor(n / 2 + 1) - m`` and ``z = Phi^{-1}((n - s) / n)``. When this gives
    ``z <= 0`` (``m`` already a majority, so ``s <= 0``; or ``(n - s) / n <= 1/2``) the
    formula is outside its intended regime and ``z = 1.0`` is used instead. A
    probability of 1 or more (possible only when ``s <= 0``) also falls back to 1.0.

    Parameters
    ----------
    num_clients : int
        Total number of clients ``n`` taking part in the round.
    num_malicious : int
        Number of colluding malicious clients ``m``.

    Returns
    -------
    float
        The number of standard deviations to shift each coordinate by.
    """
    n, m = int(num_clients), int(num_malicious)
    if n < 1 or m < 0:
        raise ValueError(f"need num_clients >= 1 and num_malicious >= 0, got {n}, {m}")
    s = (n // 2 + 1) - m
    p = (n - s) / n
    if not 0.0 < p < 1.0:
        return 1.0
    z = NormalDist().inv_cdf(p)
    return z if z > 0.0 else 1.0


def _check_reference(reference: np.ndarray | None, d: int, attack: str) -> np.ndarray:
    if reference is None:
        raise ValueError(f"attack {attack!r} needs a reference array of honest updates")
    ref = np.asarray(reference, dtype=np.float64)
    if ref.ndim != 2 or ref.shape[0] < 2 or ref.shape[1] != d:
        raise ValueError(
            f"attack {attack!r} needs reference of shape (k >= 2, {d}), "
            f"got {ref.shape}"
        )
    return ref


def _min_max(ref: np.ndarray) -> np.ndarray:
    """AGR-agnostic Min-Max with the ``std`` perturbation, solved exactly."""
    mu = ref.mean(axis=0)
    perturb = ref.std(axis=0)  # malicious = mu - gamma * perturb
    a = ref - mu  # centring first limits cancellation in the Gram-matrix distances
    sq = np.einsum("ij,ij->i", a, a)
    gram = a @ a.T
    pair = sq[:, None] + sq[None, :] - 2.0 * gram
    bound2 = max(float(pair.max()), 0.0)  # squared max pairwise distance
    pp = float(perturb @ perturb)
    if pp == 0.0 or bound2 == 0.0:
        return mu
    # ||mu - g*p - r_i||^2 = g^2 |p|^2 + 2 g (a_i . p) + |a_i|^2 <= bound2, with
    # a_i = r_i - mu. gamma = 0 is feasible (|mu - r_i| <= max pairwise distance),
    # so each constraint holds on an interval containing 0: take the smallest
    # upper root over i.
    ap = a @ perturb
    disc = np.maximum(ap * ap - pp * (sq - bound2), 0.0)
    gamma = float(np.min((-ap + np.sqrt(disc)) / pp))
    gamma = max(gamma, 0.0) * (1.0 - 1e-9)  # stay inside the bound despite rounding
    return mu - gamma * perturb


def poison_update(
    attack: str,
    update: np.ndarray,
    *,
    rng: np.random.Generator,
    scale: float = 4.0,
    reference: np.ndarray | None = None,
    num_clients: int = 20,
    num_malicious: int = 6,
) -> np.ndarray:
    """Return the poisoned version of a flat model update.

    Parameters
    ----------
    attack : str
        One of :data:`ATTACKS`:

        - ``"none"``, ``"label-flip"``: a copy of ``update`` (label flipping acts on
          the data through :func:`flip_labels`, not on the update).
        - ``"sign-flip"``: ``-scale * update``, scaled sign flipping
          (Damaskinos et al., "Asynchronous Byzantine Machine Learning", ICML 2018;
          Li et al., "RSA", AAAI 2019).
        - ``"gaussian"``: the update is *replaced* by ``N(0, (scale * rms)^2)`` noise
          per coordinate, ``rms = sqrt(mean(update**2))``, so the noise has the
          update's energy times ``scale`` but no correlation with it (Gaussian
          Byzantine attack, Blanchard et al., "Krum", NeurIPS 2017). An all-zero
          update yields all-zero noise.
        - ``"scaling"``: ``scale * update``, boosting / model replacement
          (Bhagoji et al., ICML 2019; Bagdasaryan et al., AISTATS 2020).
        - ``"alie"``: ``mean(reference) - z * std(reference)`` per coordinate, "A
          Little Is Enough" (Baruah et al., NeurIPS 2019), ``z`` from
          :func:`alie_z` (``n = num_clients``, ``m = num_malicious``; falls back
          to 1.0 when the formula gives ``z <= 0``). ``std`` is the population std.
        - ``"ipm"``: ``-scale * mean(reference)``, inner-product manipulation
          (Xie et al., "Fall of Empires", UAI 2019); ``scale`` is the paper's
          epsilon: callers pass small values such as 0.1 (beats Krum) or 0.5; large
          values (> 1 with many attackers) flip the mean of the aggregate.
        - ``"min-max"``: AGR-agnostic Min-Max (Shejwalkar & Houmansadr, NDSS 2021)
          with the paper's ``std`` perturbation: ``mean - gamma * std(reference)``
          with the largest ``gamma`` whose maximum distance to any reference update
          is at most the maximum pairwise distance among reference updates. The
          paper finds ``gamma`` by binary search; each constraint is a quadratic in
          ``gamma``, so it is solved here in closed form (the exact limit of that
          search, shrunk by 1e-9 relative to absorb rounding). ``scale`` is unused.
    update : np.ndarray
        1-D update vector (``local - global``).
    rng : np.random.Generator
        Randomness source (only ``"gaussian"`` draws from it).
    scale : float, optional
        Attack strength (see above), default 4.0.
    reference : np.ndarray, optional
        ``(k, d)`` honest-update estimates, ``k >= 2``; required for
        :data:`NEEDS_REFERENCE` attacks, ignored otherwise.
    num_clients : int, optional
        ``n`` for ALIE, default 20.
    num_malicious : int, optional
        ``m`` for ALIE, default 6.

    Returns
    -------
    np.ndarray
        A new 1-D array with the dtype of ``update``.

    Raises
    ------
    ValueError
        Unknown attack name, non 1-D update, or a missing/ill-shaped reference for
        an attack in :data:`NEEDS_REFERENCE`.
    """
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; valid attacks: {', '.join(ATTACKS)}")
    vec = np.asarray(update)
    if vec.ndim != 1:
        raise ValueError(f"update must be a 1-D vector, got shape {vec.shape}")
    dtype = vec.dtype if np.issubdtype(vec.dtype, np.floating) else np.dtype(np.float64)
    x = vec.astype(np.float64, copy=False)

    if attack in ("none", "label-flip"):
        out = x.copy()
    elif attack == "sign-flip":
        out = -scale * x
    elif attack == "scaling":
        out = scale * x
    elif attack == "gaussian":
        rms = float(np.sqrt(np.mean(x * x))) if x.size else 0.0
        out = rng.normal(0.0, scale * rms, size=x.shape) if rms > 0 else np.zeros_like(x)
    else:
        ref = _check_reference(reference, x.shape[0], attack)
        if attack == "alie":
            z = alie_z(num_clients, num_malicious)
            out = ref.mean(axis=0) - z * ref.std(axis=0)
        elif attack == "ipm":
            out = -scale * ref.mean(axis=0)
        else:  # min-max
            out = _min_max(ref)
    return np.asarray(out, dtype=dtype)
