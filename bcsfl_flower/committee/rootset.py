"""The coordinators' root set: a small clean dataset that anchors the filter.

Honest non-IID updates are far apart, so rules that trust the crowd lose. A reference
that does not come from the crowd holds: the update the coordinators compute on their
own small root set (FLTrust's idea) gives the direction, and the root-set loss says
whether a candidate helps. The root update is trained for as many SGD steps as a
typical client takes, because a short root update points in a noisy direction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..training.train import evaluate, get_weights, set_weights, train

__all__ = ["RootSet"]


@dataclass
class RootSet:
    """Data the coordinators hold, and the model that reads it.

    Parameters
    ----------
    model_fn : Callable[[], nn.Module]
        Builds the (untrained) model architecture.
    x, y : np.ndarray
        Root examples and labels; a few hundred at most.
    steps : int
        SGD steps for the root update (about a typical client's steps per round).
    lr, batch_size : float, int
        Root training hyper-parameters, ideally the clients' own.
    seed : int
        Seeds the batch order, so every coordinator computes the same root update.
    source : str
        Where the data comes from, recorded on the ledger (e.g. "operator validation set").
    """

    model_fn: Callable[[], nn.Module]
    x: np.ndarray
    y: np.ndarray
    steps: int = 80
    lr: float = 0.05
    batch_size: int = 32
    seed: int = 0
    source: str = "operator-provided validation set"

    def __post_init__(self) -> None:
        self._model = self.model_fn()

    def update(self, global_tensors: Mapping[str, np.ndarray], server_round: int) -> dict[str, np.ndarray]:
        """The root update ``w_root - w_global`` trained from ``global_tensors``."""
        model = self.model_fn()
        set_weights(model, global_tensors)
        per_epoch = max(1, -(-len(self.y) // self.batch_size))
        epochs = max(1, round(self.steps / per_epoch))
        with torch.random.fork_rng():
            train(model, self.x, self.y, epochs=epochs, lr=self.lr, batch_size=self.batch_size,
                  seed=self.seed * 100_003 + server_round)
        trained = get_weights(model)
        return {k: trained[k].astype(np.float64) - global_tensors[k] for k in global_tensors}

    def loss(self, tensors: Mapping[str, np.ndarray]) -> float:
        """Cross-entropy of the model ``tensors`` on the root set."""
        set_weights(self._model, tensors)
        return evaluate(self._model, self.x, self.y)[0]

    def losses(self, tensors: Mapping[str, np.ndarray]) -> np.ndarray:
        """Each root example's cross-entropy under the model ``tensors`` (float64)."""
        set_weights(self._model, tensors)
        self._model.eval()
        with torch.no_grad():
            logits = self._model(torch.from_numpy(self.x))
            out = nn.functional.cross_entropy(logits, torch.from_numpy(self.y), reduction="none")
        return out.double().numpy()
