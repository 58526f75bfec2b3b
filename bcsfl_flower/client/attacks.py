"""Model-poisoning attacks applied by malicious clients.

Every model attack acts on a flat 1-D update vector ``update = local - global``
(float32 or float64; the result keeps the input dtype). Data attacks (label flipping)
act on the training labels instead, through :func:`flip_labels`.

Attacks in :data:`NEEDS_REFERENCE` are *partial-knowledge* attacks: they need a
``(k, d)`` array of honest-update *estimates*, which the attackers compute from shards
of their own data (they know nothing of the other clients).

Attacks in :data:`FULL_KNOWLEDGE` are the *omniscient* variants the original papers
evaluate: the colluding attackers know the honest updates of the very round
(:func:`full_knowledge_update` computes the vector from them). A client cannot learn
those, so in simulation the clients train honestly and a server-side evaluation device
(:mod:`bcsfl_flower.omniscient`) replaces the attackers' replies once every honest
reply of the round is in.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import torch

__all__ = [
    "ATTACKS",
    "DATA_ATTACKS",
    "FULL_KNOWLEDGE",
    "IPM_EPSILON",
    "NEEDS_REFERENCE",
    "SCALING_MAX_MARGIN",
    "alie_z",
    "flip_labels",
    "full_knowledge_update",
    "poison_update",
    "scaling_max_norm",
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
    "alie-full",
    "ipm-full",
    "ipm100-full",
    "minmax-full",
    "scaling-max",
)
DATA_ATTACKS: frozenset[str] = frozenset({"label-flip"})
NEEDS_REFERENCE: frozenset[str] = frozenset({"alie", "ipm", "min-max"})
FULL_KNOWLEDGE: frozenset[str] = frozenset({"alie-full", "ipm-full", "ipm100-full", "minmax-full", "scaling-max"})
#: IPM's epsilon per full-knowledge variant: 0.5 and 100, the two values Xie et al. evaluate.
IPM_EPSILON: dict[str, float] = {"ipm-full": 0.5, "ipm100-full": 100.0}
#: scaling-max lands this fraction below the clip bound (float32 rounding must not push it over).
SCALING_MAX_MARGIN = 1e-4


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
    """Return the ALIE perturbation factor ``z_max`` of Baruch et al. (2019).

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


def scaling_max_norm(honest_norms: np.ndarray, num_malicious: int, norm_bound: float = 2.0) -> float:
    """The largest norm BCS-FL's filter keeps unclipped when ``num_malicious`` updates share it.

    The filter (:mod:`bcsfl_flower.committee.filter`, step 3) clips kept updates to
    ``norm_bound`` times the median norm of the kept updates, the attackers' own
    included, so ``c`` is the largest norm with ``c <= norm_bound * median(honest norms
    and c, m times)``. From ``norm_bound`` 2 up the attackers sit above the median and
    ``c`` is ``norm_bound`` times an order statistic of the honest norms; below it
    (1, say) ``c`` itself can be one of the middle values, so it is searched
    for. When the attackers hold half the updates or more the median is theirs and no
    bound exists: ``norm_bound`` times the largest honest norm is returned instead.

    Parameters
    ----------
    honest_norms : np.ndarray
        L2 norms of the round's honest updates (at least one).
    num_malicious : int
        Number of attackers ``m`` submitting an update of the same norm.
    norm_bound : float, optional
        The filter's ``FilterConfig.norm_bound``, default 2.0.

    Returns
    -------
    float
        The clip bound the attackers' norm may reach.
    """
    h = np.asarray(honest_norms, dtype=np.float64).ravel()
    if h.size < 1 or num_malicious < 0 or norm_bound <= 0:
        raise ValueError("need at least one honest norm, num_malicious >= 0 and norm_bound > 0")
    m = int(num_malicious)
    if not np.isfinite(np.median(np.concatenate([h, np.full(m, np.inf)]))):
        return norm_bound * float(h.max())

    def unclipped(c: float) -> bool:
        return c <= norm_bound * float(np.median(np.concatenate([h, np.full(m, c)])))

    # c moves the median it is judged by (below the bound 2 it can lower it), so search:
    # the largest grid point that stays unclipped, then bisection up to the next one
    grid = np.unique(np.concatenate([h, norm_bound * h, np.linspace(0.0, norm_bound * h.max(), 2001)]))
    ok = [c for c in grid if unclipped(c)]
    lo = max(ok) if ok else 0.0
    above = grid[grid > lo]
    hi = float(above[0]) if above.size else lo
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if unclipped(mid) else (lo, mid)
    return float(lo)


def full_knowledge_update(
    attack: str,
    honest: np.ndarray,
    *,
    own: np.ndarray | None = None,
    num_clients: int = 20,
    num_malicious: int = 6,
    norm_bound: float = 2.0,
) -> np.ndarray:
    """The vector a full-knowledge (omniscient) attacker submits, from the round's honest updates.

    Parameters
    ----------
    attack : str
        One of :data:`FULL_KNOWLEDGE`:

        - ``"alie-full"``: ``mean(honest) - z * std(honest)`` per coordinate (population
          std), "A Little Is Enough" (Baruch et al., NeurIPS 2019) with the true
          statistics of the round; ``z`` from :func:`alie_z`.
        - ``"ipm-full"``, ``"ipm100-full"``: ``-epsilon * mean(honest)``,
          inner-product manipulation (Xie et al., "Fall of Empires", UAI 2020), with
          the paper's ``epsilon`` 0.5 and 100 (:data:`IPM_EPSILON`).
        - ``"minmax-full"``: AGR-agnostic Min-Max (Shejwalkar & Houmansadr, NDSS
          2021), ``mean - gamma * std`` with the largest ``gamma`` whose distance to
          every honest update is at most the largest pairwise distance between honest
          updates (solved exactly, as for ``"min-max"``).
        - ``"scaling-max"``: boosting (Bhagoji et al., ICML 2019) to the worst norm
          BCS-FL still accepts unclipped: ``own`` rescaled to ``(1 -``
          :data:`SCALING_MAX_MARGIN` ``) *`` :func:`scaling_max_norm` (an all-zero
          ``own`` takes the honest mean's direction).
    honest : np.ndarray
        ``(k, d)`` honest updates of the round (``k >= 2``; one is enough for
        ``"scaling-max"``).
    own : np.ndarray, optional
        The attacker's own benign update (``d``); required for ``"scaling-max"``.
    num_clients : int, optional
        ``n`` for ALIE, default 20.
    num_malicious : int, optional
        ``m`` for ALIE and for the median behind scaling-max's bound, default 6.
    norm_bound : float, optional
        The filter's clip multiple for ``"scaling-max"``, default 2.0
        (``FilterConfig.norm_bound``).

    Returns
    -------
    np.ndarray
        A float64 vector of length ``d``.
    """
    if attack not in FULL_KNOWLEDGE:
        raise ValueError(f"{attack!r} is not a full-knowledge attack; choose from {', '.join(sorted(FULL_KNOWLEDGE))}")
    ref = np.asarray(honest, dtype=np.float64)
    if attack == "scaling-max":
        if ref.ndim != 2 or ref.shape[0] < 1 or own is None or np.shape(own) != (ref.shape[1],):
            raise ValueError("scaling-max needs honest updates of shape (k >= 1, d) and the attacker's own (d,) update")
        x = np.asarray(own, dtype=np.float64)
        norm = float(np.linalg.norm(x))
        if norm == 0.0:  # no direction of its own: boost the honest mean instead
            x = ref.mean(axis=0)
            norm = float(np.linalg.norm(x))
        if norm == 0.0:
            return np.zeros(ref.shape[1])
        target = scaling_max_norm(np.linalg.norm(ref, axis=1), num_malicious, norm_bound)
        return x * ((1.0 - SCALING_MAX_MARGIN) * target / norm)
    ref = _check_reference(ref, ref.shape[-1] if ref.ndim == 2 else -1, attack)
    if attack == "alie-full":
        return ref.mean(axis=0) - alie_z(num_clients, num_malicious) * ref.std(axis=0)
    if attack in IPM_EPSILON:
        return -IPM_EPSILON[attack] * ref.mean(axis=0)
    return _min_max(ref)  # minmax-full


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
          Little Is Enough" (Baruch et al., NeurIPS 2019), ``z`` from
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
        - :data:`FULL_KNOWLEDGE` attacks (``"alie-full"``, ``"ipm-full"``,
          ``"ipm100-full"``, ``"minmax-full"``, ``"scaling-max"``): with
          ``reference`` (the round's true honest updates) the vector of
          :func:`full_knowledge_update` (``update`` as the attacker's own); without
          it, a copy of ``update``: the client's half of the attack is honest
          training, and the evaluation device (:mod:`bcsfl_flower.omniscient`)
          replaces the reply once the round's honest updates are known. ``scale``
          is unused.
    update : np.ndarray
        1-D update vector (``local - global``).
    rng : np.random.Generator
        Randomness source (only ``"gaussian"`` draws from it).
    scale : float, optional
        Attack strength (see above), default 4.0.
    reference : np.ndarray, optional
        ``(k, d)`` honest-update estimates, ``k >= 2``; required for
        :data:`NEEDS_REFERENCE` attacks; the round's honest updates for
        :data:`FULL_KNOWLEDGE` ones (optional, see above); ignored otherwise.
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

    if attack in ("none", "label-flip") or (attack in FULL_KNOWLEDGE and reference is None):
        out = x.copy()
    elif attack in FULL_KNOWLEDGE:
        out = full_knowledge_update(attack, reference, own=x, num_clients=num_clients, num_malicious=num_malicious)
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
