"""The crowd half of the filter's reference: the median of the anchor updates, leaving each out.

:func:`crowd_cosines` scores each update against the root update's direction plus that of
the coordinate-wise median of the anchors (the updates the root update alone accepts);
see :mod:`.filter` (step 1) for why.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["crowd_cosines", "others_medians", "unit"]


def unit(v: np.ndarray) -> np.ndarray:
    """``v`` scaled to length 1 (a zero vector as is)."""
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))


def crowd_cosines(deltas: np.ndarray, root_dir: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Each update's cosine to the root direction plus that of the median anchor update.

    ``anchors`` (three or more) are the updates the root update alone accepts; an
    anchor is scored against the median of the *other* anchors, any other update
    against the median of all anchors.
    """
    all_dir = root_dir + unit(np.median(deltas[anchors], axis=0))
    out = np.array([_cosine(d, all_dir) for d in deltas])
    for j, m in others_medians(deltas[anchors]):
        out[anchors[j]] = _cosine(deltas[anchors[j]], root_dir + unit(m))
    return out


def others_medians(deltas: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(i, coordinate-wise median of every update but i)`` for each row ``i``.

    Leaving ``i`` out matters: an update is part of the median it would be scored
    against, which tilts that median towards it by a cosine of order 1/n, far above
    a noise floor of 2/sqrt(d). One sort serves every row: without row ``i``, the
    k-th smallest value of a coordinate is the k-th of all values below ``i``'s rank
    there and the (k+1)-th from it on.
    """
    n = len(deltas)
    order = np.argsort(deltas, axis=0, kind="stable")
    ordered = np.take_along_axis(deltas, order, axis=0)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(n)[:, None].repeat(deltas.shape[1], axis=1), axis=0)
    m = n - 1
    middle = [(m - 1) // 2] if m % 2 else [m // 2 - 1, m // 2]
    for i in range(n):
        picks = [np.take_along_axis(ordered, (k + (k >= ranks[i]))[None, :], axis=0)[0] for k in middle]
        yield i, picks[0] if len(picks) == 1 else (picks[0] + picks[1]) / 2
