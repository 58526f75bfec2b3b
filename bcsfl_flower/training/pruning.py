"""Magnitude pruning of a client model before upload, with an upload-size estimate.

The ``weight`` of every ``Linear`` and convolution layer (``Conv1d/2d/3d`` and their
transposed variants) is pruned by L1 magnitude with :mod:`torch.nn.utils.prune`, then
the pruning re-parametrisation is removed again (``prune.remove``), so the model is a
plain module whose pruned weights hold exact zeros. ``prune.remove`` keeps the same
``Parameter`` objects, so an optimizer built on the model stays valid, and the
original parameter / ``state_dict`` key order is restored (``prune.remove`` alone
would move each ``weight`` after its ``bias``, silently misaligning ndarray lists
exchanged with the server). Biases and all other parameters (normalisation layers,
embeddings, ...) are left untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.modules.conv import _ConvNd
from torch.nn.utils import prune

__all__ = ["PruneReport", "magnitude_prune"]

_VALUE_BYTES = 4  # float32 value
_INDEX_BYTES = 4  # int32 flat index per non-zero (COO-like)


@dataclass(frozen=True)
class PruneReport:
    """Outcome of :func:`magnitude_prune`.

    Attributes
    ----------
    amount : float
        Requested fraction of prunable weights to zero.
    params : int
        Number of scalar parameters in the whole model.
    zeros : int
        Number of parameters equal to zero after pruning (all parameters).
    dense_bytes : int
        ``4 * params``: cost of a dense float32 upload.
    sparse_bytes : int
        Cost of a COO/CSR-like upload: non-zeros of the pruned weights times
        ``4 + 4`` bytes (value and int32 index) plus every other parameter
        (biases, ...) dense at 4 bytes.
    bytes_saved : int
        ``max(0, dense_bytes - sparse_bytes)``; sparse encoding only pays off
        above 50 % sparsity of the pruned weights.
    """

    amount: float
    params: int
    zeros: int
    dense_bytes: int
    sparse_bytes: int
    bytes_saved: int


def _prunable(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [
        m
        for m in model.modules()
        if isinstance(m, (torch.nn.Linear, _ConvNd))
        and isinstance(getattr(m, "weight", None), torch.nn.Parameter)
    ]


def _restore_order(module: torch.nn.Module, order: list[str]) -> None:
    # prune.remove re-inserts ``weight`` after ``bias``; restore the original order so
    # state_dict() / parameters() order (what Flower's ndarrays lists rely on) is kept.
    params = module._parameters
    for key in order:
        params[key] = params.pop(key)


def _report(model: torch.nn.Module, amount: float, layers: list[torch.nn.Module]) -> PruneReport:
    pruned_ids = {id(m.weight) for m in layers}
    params = zeros = sparse = 0
    for p in model.parameters():  # parameters() de-duplicates shared tensors
        n = p.numel()
        nz = int(torch.count_nonzero(p.detach()))
        params += n
        zeros += n - nz
        if id(p) in pruned_ids:
            sparse += nz * (_VALUE_BYTES + _INDEX_BYTES)
        else:
            sparse += n * _VALUE_BYTES
    dense = params * _VALUE_BYTES
    return PruneReport(
        amount=float(amount),
        params=params,
        zeros=zeros,
        dense_bytes=dense,
        sparse_bytes=sparse,
        bytes_saved=max(0, dense - sparse),
    )


def magnitude_prune(
    model: torch.nn.Module, amount: float, *, global_pruning: bool = True
) -> PruneReport:
    """Zero the smallest-magnitude weights of ``model`` in place.

    Parameters
    ----------
    model : torch.nn.Module
        Model to prune in place (an Opacus ``GradSampleModule`` works too: its
        wrapped layers are found through ``modules()``).
    amount : float
        Fraction in ``[0, 1)`` of weights to zero; ``0`` changes nothing and only
        reports. ``torch`` rounds ``amount * count`` to the nearest integer.
    global_pruning : bool, optional
        ``True`` (default): one global L1 threshold over all prunable weights
        (``prune.global_unstructured``), so layers end up with different
        sparsities. ``False``: ``amount`` of each layer separately
        (``prune.l1_unstructured`` per layer).

    Returns
    -------
    PruneReport
        Counts and upload-size estimate after pruning.

    Raises
    ------
    ValueError
        If ``amount`` is outside ``[0, 1)``.
    """
    amount = float(amount)
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"amount must be in [0, 1), got {amount}")
    layers = _prunable(model)
    if amount > 0.0 and layers:
        orders = [list(m._parameters) for m in layers]
        if global_pruning:
            prune.global_unstructured(
                [(m, "weight") for m in layers],
                pruning_method=prune.L1Unstructured,
                amount=amount,
            )
        else:
            for m in layers:
                prune.l1_unstructured(m, name="weight", amount=amount)
        for m, order in zip(layers, orders):
            prune.remove(m, "weight")
            _restore_order(m, order)
    return _report(model, amount, layers)
