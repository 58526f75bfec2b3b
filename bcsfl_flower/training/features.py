"""Features of a model's fixed front end, computed once per array.

A model can put a parameter-free transform in front of its trainable layers (the
scattering transform of :class:`bcsfl_flower.models.ScatterLinear`, after Tramer &
Boneh, ICLR 2021). Recomputing it every step would cost more than the training itself,
and under DP-SGD it needs no per-example gradients, so training and evaluation run on
the head alone, over the front's features of the whole array, cached by content: a
client's shard is transformed once per process, whatever round asks for it.

A model opts in with two attributes: ``fixed_front`` (a module without parameters, with
a ``cache_key`` string naming it) and ``head`` (what follows it).

With ``$BCSFL_FEATURE_CACHE`` set to a folder, features are also kept there as ``.npy``
files named by the front's key and the array's digest, so later processes (the next run
of an experiment) load them instead of transforming again. Nothing is kept on disk
otherwise.
"""

from __future__ import annotations

import collections
import copy
import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["FeatureCache", "trainable_part"]


class FeatureCache:
    """Features of whole arrays, keyed by the arrays' bytes; least recently used dropped past ``max_bytes``.

    Parameters
    ----------
    transform : callable
        Maps a float32 CPU tensor batch to features (called without gradients).
    max_bytes : int
        Bound on the cached features, default 2 GiB (MNIST's 70,000 images take 1.1 GB as 81x7x7 maps).
    chunk : int
        Examples transformed at a time, default 512 (bounds the transform's buffers).
    folder : str or Path, optional
        Where features are also kept as files, to be loaded by later processes (default: none).
    name : str
        Names the transform in those files' names, default ``"features"``.
    """

    def __init__(self, transform, max_bytes: int = 2 << 30, chunk: int = 512,
                 folder: str | os.PathLike | None = None, name: str = "features") -> None:
        self.transform, self.max_bytes, self.chunk = transform, max_bytes, chunk
        self.folder, self.name = (Path(folder) if folder else None), name
        self._entries: collections.OrderedDict[bytes, torch.Tensor] = collections.OrderedDict()
        self._bytes = 0
        self.hits = self.misses = 0

    def __call__(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Features of ``x``: the cached tensor itself, not to be modified."""
        arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        key = hashlib.blake2b(arr.data, digest_size=16, person=str(arr.shape).encode()[:16]).digest()
        hit = self._entries.get(key)
        if hit is not None:
            self.hits += 1
            self._entries.move_to_end(key)
            return hit
        self.misses += 1
        out = self._load(key)
        if out is None:
            with torch.no_grad():
                src = torch.from_numpy(arr)
                out = torch.cat([self.transform(src[i:i + self.chunk]) for i in range(0, max(1, len(src)), self.chunk)])
            self._store(key, out)
        size = out.numel() * out.element_size()
        if size <= self.max_bytes:
            self._entries[key] = out
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, old = self._entries.popitem(last=False)
                self._bytes -= old.numel() * old.element_size()
        return out

    def _file(self, key: bytes) -> Path | None:
        safe = "".join(c if c.isalnum() else "_" for c in self.name)
        return self.folder / f"{safe}-{key.hex()}.npy" if self.folder else None

    def _load(self, key: bytes) -> torch.Tensor | None:
        path = self._file(key)
        try:
            return torch.from_numpy(np.load(path)) if path and path.exists() else None
        except (OSError, ValueError):  # a torn or foreign file: transform again
            return None

    def _store(self, key: bytes, out: torch.Tensor) -> None:
        path = self._file(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, out.numpy())
        os.replace(tmp, path)  # whole files only, also with runs in parallel


_caches: dict[str, FeatureCache] = {}  # one per front end and process


def trainable_part(model: nn.Module, x: np.ndarray) -> tuple[nn.Module, np.ndarray]:
    """``(module, inputs)`` to train or evaluate ``model`` on ``x`` with.

    A model with a ``fixed_front`` gives its ``head`` and the front's features of ``x``
    (computed on the CPU, cached by content); any other model gives itself and ``x``.
    """
    front = getattr(model, "fixed_front", None)
    if front is None:
        return model, x
    cache = _caches.get(front.cache_key)
    if cache is None:
        cache = _caches[front.cache_key] = FeatureCache(copy.deepcopy(front).cpu().eval(),
                                                        folder=os.environ.get("BCSFL_FEATURE_CACHE") or None,
                                                        name=front.cache_key)
    return model.head, cache(x).numpy()
