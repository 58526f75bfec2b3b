"""Bulyan as El Mhamdi et al. define it ("The Hidden Vulnerability of Distributed Learning
in Byzantium", ICML 2018), as a Flower Message-API strategy.

With ``n`` updates of which at most ``f`` are Byzantine (``n >= 4f + 3``):

1. Selection: ``theta = n - 2f`` times, run Krum on the updates not chosen yet (score:
   sum of squared distances to the ``n' - f - 2`` nearest others, ``n'`` the number
   still in the running) and move the winner to the selection set.
2. Aggregation: per coordinate, average the ``beta = theta - 2f`` values of the
   selection set closest to the selection's coordinate-wise median.

Flower 1.42's ``Bulyan`` (kept as the ``bulyan`` baseline) replaces step 1 by one
Multi-Krum pass: it scores every update once against all ``n`` and takes the ``theta``
best. Removing a chosen update changes the others' nearest neighbours, so the two can
select different sets (:func:`bulyan_select` and the tests show a case).
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO, WARN
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from ..package import arrays_to_numpy, numpy_to_arrays, reply_client_id

__all__ = ["BulyanPaper", "bulyan_aggregate", "bulyan_select", "krum_scores"]


def krum_scores(vectors: np.ndarray, num_malicious: int) -> np.ndarray:
    """Krum's score of each row: sum of squared distances to its ``n - f - 2`` nearest other rows.

    Parameters
    ----------
    vectors : np.ndarray
        ``(n, d)`` updates (or models: distances do not depend on the origin).
    num_malicious : int
        ``f``. At least one neighbour counts (as in Flower's ``select_multikrum``), so
        the last Krum rounds of Bulyan's selection, with few rows left, stay defined.
    """
    x = np.asarray(vectors, dtype=np.float64)
    sq = np.einsum("ij,ij->i", x, x)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)
    np.fill_diagonal(dist, np.inf)  # a row is not its own neighbour
    k = min(max(1, len(x) - num_malicious - 2), len(x) - 1)
    return np.sort(dist, axis=1)[:, :k].sum(axis=1) if k > 0 else np.zeros(len(x))


def bulyan_select(vectors: np.ndarray, num_malicious: int) -> list[int]:
    """Step 1: the ``theta = n - 2f`` rows Krum picks one at a time, each removed once picked.

    Ties go to the lower row index. Returns the row indices in the order picked.
    """
    x = np.asarray(vectors, dtype=np.float64)
    theta = len(x) - 2 * num_malicious
    if theta < 1:
        raise ValueError(f"Bulyan needs n - 2f >= 1 (n={len(x)}, f={num_malicious})")
    left, chosen = list(range(len(x))), []
    for _ in range(theta):
        scores = krum_scores(x[left], num_malicious)
        chosen.append(left.pop(int(np.argmin(scores))))  # argmin: the first of equal scores
    return chosen


def bulyan_aggregate(vectors: np.ndarray, num_malicious: int) -> tuple[np.ndarray, list[int]]:
    """Bulyan of the rows of ``vectors``: (the aggregate, the selected row indices).

    Requires ``n >= 4f + 3`` (the paper's condition; ``beta = n - 4f >= 3``).
    """
    x = np.asarray(vectors, dtype=np.float64)
    n, f = len(x), int(num_malicious)
    if f < 0 or n < 4 * f + 3:
        raise ValueError(f"Bulyan needs n >= 4f + 3 updates (n={n}, f={f})")
    selected = bulyan_select(x, f)
    s = x[selected]
    beta = len(selected) - 2 * f
    median = np.median(s, axis=0)
    # per coordinate, the beta values nearest the median (stable sort: ties to the earlier pick)
    nearest = np.argsort(np.abs(s - median), axis=0, kind="stable")[:beta]
    return np.take_along_axis(s, nearest, axis=0).mean(axis=0), selected


class BulyanPaper(FedAvg):
    """Bulyan with the paper's iterated Krum selection (see the module docstring).

    Parameters
    ----------
    fraction_train, fraction_evaluate, min_train_nodes, min_evaluate_nodes,
    min_available_nodes, weighted_by_key, arrayrecord_key, configrecord_key,
    train_metrics_aggr_fn, evaluate_metrics_aggr_fn
        As in :class:`flwr.serverapp.strategy.FedAvg` (defaults 1.0, 1.0, 2, 2, 2,
        ``"num-examples"``, ``"arrays"``, ``"config"``, None, None); updates are
        not weighted by examples (as in the paper).
    num_malicious_nodes : int (default: 0)
        ``f``, the Byzantine updates tolerated; a round with fewer than ``4f + 3``
        valid replies is not aggregated (as Flower's ``Bulyan``).
    """

    # pylint: disable=too-many-arguments
    def __init__(self, fraction_train: float = 1.0, fraction_evaluate: float = 1.0, min_train_nodes: int = 2,
                 min_evaluate_nodes: int = 2, min_available_nodes: int = 2, num_malicious_nodes: int = 0,
                 weighted_by_key: str = "num-examples", arrayrecord_key: str = "arrays",
                 configrecord_key: str = "config", train_metrics_aggr_fn=None, evaluate_metrics_aggr_fn=None) -> None:
        super().__init__(
            fraction_train=fraction_train, fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes, min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes, weighted_by_key=weighted_by_key,
            arrayrecord_key=arrayrecord_key, configrecord_key=configrecord_key,
            train_metrics_aggr_fn=train_metrics_aggr_fn, evaluate_metrics_aggr_fn=evaluate_metrics_aggr_fn,
        )
        self.num_malicious_nodes = num_malicious_nodes
        self.rounds: list[dict[str, Any]] = []

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        log(INFO, "\t├──> Bulyan (El Mhamdi et al. 2018, iterated Krum selection): f = %d", self.num_malicious_nodes)
        super().summary()

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Select by iterated Krum, then average the ``beta`` values nearest the median per coordinate."""
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        f = self.num_malicious_nodes
        if len(valid) < 4 * f + 3:
            log(WARN, "Bulyan: %d replies, at least 4f + 3 = %d needed; no aggregate", len(valid), 4 * f + 3)
            return None, None
        models = [arrays_to_numpy(m.content[self.arrayrecord_key]) for m in valid]
        names = list(models[0])
        flat = np.stack([np.concatenate([np.asarray(t[n], np.float64).ravel() for n in names]) for t in models])
        agg, selected = bulyan_aggregate(flat, f)
        out, offset = {}, 0
        for n in names:
            ref = models[0][n]
            out[n] = agg[offset: offset + ref.size].reshape(ref.shape).astype(ref.dtype)
            offset += ref.size
        ids = [_client_id(m) for m in valid]
        picked = {ids[i] for i in selected}
        self.rounds.append({"round": server_round, "accepted": sorted(picked),
                            "rejected": sorted(set(ids) - picked), "committee": [], "committed": True})
        metrics = self.train_metrics_aggr_fn([valid[i].content for i in selected], self.weighted_by_key)
        return numpy_to_arrays(out), metrics


def _client_id(msg: Message) -> str:
    return reply_client_id(msg) or f"node-{msg.metadata.src_node_id}"
