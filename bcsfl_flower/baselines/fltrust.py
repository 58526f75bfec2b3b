"""FLTrust (Cao et al., NDSS 2021) as a Flower Message-API strategy.

The server holds a small clean *root set* and, each round, computes its own update
``g0`` on it from the current global model. Every client update ``g_i`` gets

- a trust score ``TS_i = ReLU(cos(g_i, g0))`` (zero for updates pointing away), and
- a rescaled copy ``g_i * |g0| / |g_i|`` (no client can win by magnitude),

and the global model moves by ``sum_i TS_i * rescaled_i / sum_i TS_i``. When every
trust score is zero the global model is left unchanged.

Differences from FedAvg: updates are not weighted by example counts, and the step
length is always the root update's norm, so a short root update (few examples,
one epoch) shortens every step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from logging import INFO
from typing import Any, Protocol

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from ..package import arrays_to_numpy, numpy_to_arrays, reply_client_id

__all__ = ["FLTrust", "fltrust_aggregate"]


class RootUpdate(Protocol):
    """What FLTrust needs of the root set (``bcsfl_flower.committee.rootset.RootSet``)."""

    def update(self, global_tensors: Mapping[str, np.ndarray], server_round: int) -> dict[str, np.ndarray]: ...


def _flat(tensors: Mapping[str, np.ndarray], names: list[str]) -> np.ndarray:
    return np.concatenate([np.asarray(tensors[n], dtype=np.float64).ravel() for n in names])


def fltrust_aggregate(
    updates: np.ndarray, root_update: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FLTrust on flat updates (rows of ``updates``).

    Returns ``(step, trust, cosines)``: the aggregated step (zeros when every trust
    score is zero), ``ReLU(cos)`` per row and the raw cosines.
    """
    updates = np.asarray(updates, dtype=np.float64)
    root = np.asarray(root_update, dtype=np.float64)
    root_norm = float(np.linalg.norm(root))
    norms = np.linalg.norm(updates, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    if root_norm == 0.0:
        cosines = np.zeros(len(updates))
    else:
        cosines = np.where(norms > 0, updates @ root / (safe * root_norm), 0.0)
    trust = np.maximum(cosines, 0.0)
    total = float(trust.sum())
    if total <= 0.0:
        return np.zeros_like(root), trust, cosines
    rescaled = updates * (root_norm / safe)[:, None]
    return (trust[:, None] * rescaled).sum(axis=0) / total, trust, cosines


class FLTrust(FedAvg):
    """FLTrust: trust-weighted, norm-rescaled aggregation against a root update.

    Parameters
    ----------
    fraction_train, fraction_evaluate, min_train_nodes, min_evaluate_nodes,
    min_available_nodes, weighted_by_key, arrayrecord_key, configrecord_key,
    train_metrics_aggr_fn, evaluate_metrics_aggr_fn
        As in :class:`flwr.serverapp.strategy.FedAvg` (``weighted_by_key`` only
        weights the aggregated metrics; parameters are weighted by trust).
    root_set : RootUpdate
        The server's clean data; ``root_set.update(global, round)`` returns the root
        update ``w_root - w_global`` as named arrays (a
        :class:`~bcsfl_flower.committee.rootset.RootSet`).
    """

    # pylint: disable=too-many-arguments
    def __init__(
        self,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        weighted_by_key: str = "num-examples",
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        train_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord] | None = None,
        evaluate_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord] | None = None,
        *,
        root_set: RootUpdate,
    ) -> None:
        super().__init__(
            fraction_train=fraction_train, fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes, min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes, weighted_by_key=weighted_by_key,
            arrayrecord_key=arrayrecord_key, configrecord_key=configrecord_key,
            train_metrics_aggr_fn=train_metrics_aggr_fn, evaluate_metrics_aggr_fn=evaluate_metrics_aggr_fn,
        )
        self.root_set = root_set
        self.rounds: list[dict[str, Any]] = []
        self._global: dict[str, np.ndarray] = {}

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        super().summary()
        log(INFO, "\t└──> FLTrust: trust = ReLU(cos(update, root update)), updates rescaled to the root norm")

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global model (updates are measured from it), then as FedAvg."""
        self._global = arrays_to_numpy(arrays)
        return super().configure_train(server_round, arrays, config, grid)

    @staticmethod
    def _client_id(msg: Message) -> str:
        return reply_client_id(msg) or f"node-{msg.metadata.src_node_id}"

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Trust-weight the rescaled updates against the root update; apply to the global model."""
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        g = self._global
        names = list(g)
        root = self.root_set.update(g, server_round)
        base = _flat(g, names)
        updates = np.stack([_flat(arrays_to_numpy(m.content[self.arrayrecord_key]), names) - base for m in valid])
        step, trust, cosines = fltrust_aggregate(updates, _flat(root, names))
        new_flat = base + step
        out, offset = {}, 0
        for n in names:
            t = g[n]
            out[n] = new_flat[offset: offset + t.size].reshape(t.shape).astype(t.dtype)
            offset += t.size
        ids = [self._client_id(m) for m in valid]
        norms = np.linalg.norm(updates, axis=1)
        self.rounds.append({
            "round": server_round,
            "accepted": sorted(c for c, t in zip(ids, trust) if t > 0),
            "rejected": sorted(c for c, t in zip(ids, trust) if t <= 0),
            "committee": [],
            "decisions": [
                {"client_id": c, "cosine": float(cs), "trust": float(t), "norm": float(nm), "kept": bool(t > 0)}
                for c, cs, t, nm in zip(ids, cosines, trust, norms)
            ],
        })
        log(INFO, "FLTrust round %d: %d of %d updates with trust > 0; root norm %.4g",
            server_round, int((trust > 0).sum()), len(ids), float(np.linalg.norm(_flat(root, names))))
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        return numpy_to_arrays(out), metrics
