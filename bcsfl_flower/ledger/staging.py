"""A node's staging area: model bytes it holds before (and until) their upload is ordered.

An upload's bytes reach every node over HTTP before the small ``model`` operation that
names them is ordered (:mod:`~.receipts`, :mod:`~.model_relay`), so they wait
somewhere that is not the ledger: not its model store, not its application digest, not
what a state transfer copies. That is this folder, one file per model named by its
SHA-256 hex digest, next to the node's SQLite file. Files survive a restart, so a node
that restarts between staging and execution usually still has the bytes; when it does
not (evicted, lost, corrupted: every read re-checks the digest), it fetches them again
from a node that signed a receipt.

The folder is bounded (total bytes and file count): staging more evicts the oldest
files first. A model that executes moves into the store and leaves the folder; one
whose operation is refused or never ordered stays until evicted. Methods are thread
safe (the event loop and FastAPI's worker threads both call them).
"""

from __future__ import annotations

import collections
import hashlib
import os
import re
import threading
from pathlib import Path
from typing import Any

__all__ = ["Staging"]

_NAME = re.compile(r"[0-9a-f]{64}")


class Staging:
    """A bounded folder of model bytes named by digest (see the module docstring).

    Parameters
    ----------
    folder : str | os.PathLike[str]
        Where the files live (created if absent; files already there are kept,
        oldest first by modification time).
    max_bytes : int (default: 1 GiB)
        Total bytes held; staging more evicts the oldest files.
    max_count : int (default: 256)
        Files held; staging more evicts the oldest files.
    """

    def __init__(self, folder: str | os.PathLike[str], max_bytes: int = 1 << 30, max_count: int = 256) -> None:
        if max_bytes < 1 or max_count < 1:
            raise ValueError("staging bounds must be positive")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.max_count = max_bytes, max_count
        self._lock = threading.Lock()
        self._held: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.evicted = 0
        found = []
        for path in self.folder.iterdir():
            if _NAME.fullmatch(path.name) and path.is_file():
                found.append((path.stat().st_mtime, path.name, path.stat().st_size))
            elif path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)  # a write cut short by a crash
        for _, name, size in sorted(found):
            self._held[name] = size

    def _path(self, digest: str) -> Path:
        if _NAME.fullmatch(digest) is None:
            raise ValueError(f"not a SHA-256 hex digest: {digest[:80]!r}")
        return self.folder / digest

    def has(self, digest: str) -> bool:
        """Whether bytes for ``digest`` are staged (not re-checked; :meth:`get` does).

        Parameters
        ----------
        digest : str
            SHA-256 hex digest.
        """
        with self._lock:
            return digest in self._held

    def put(self, data: bytes, digest: str | None = None) -> str:
        """Stage ``data`` (idempotent); evict the oldest others beyond the bounds; return its digest.

        Parameters
        ----------
        data : bytes
            The model bytes.
        digest : str | None (default: None)
            Their SHA-256 hex digest if the caller computed it (None: computed here).

        Raises
        ------
        OSError
            The file could not be written.
        """
        digest = digest or hashlib.sha256(data).hexdigest()
        path = self._path(digest)
        with self._lock:
            if digest in self._held:
                self._held.move_to_end(digest)
                return digest
        tmp = path.with_name(f"{digest}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        with self._lock:
            self._held[digest] = len(data)
            self._held.move_to_end(digest)
            self._evict(keep=digest)
        return digest

    def _evict(self, keep: str) -> None:
        total = sum(self._held.values())
        while len(self._held) > 1 and (total > self.max_bytes or len(self._held) > self.max_count):
            oldest = next(iter(self._held))
            if oldest == keep:
                break
            total -= self._held.pop(oldest)
            (self.folder / oldest).unlink(missing_ok=True)
            self.evicted += 1

    def get(self, digest: str) -> bytes | None:
        """The staged bytes for ``digest``, checked against it; None if absent or corrupt (then dropped).

        Parameters
        ----------
        digest : str
            SHA-256 hex digest.
        """
        if not self.has(digest):
            return None
        try:
            data = self._path(digest).read_bytes()
        except FileNotFoundError:
            data = None
        if data is None or hashlib.sha256(data).hexdigest() != digest:
            self.discard(digest)
            return None
        return data

    def discard(self, digest: str) -> None:
        """Drop the bytes for ``digest`` if staged (e.g. once the model store holds them).

        Parameters
        ----------
        digest : str
            SHA-256 hex digest.
        """
        with self._lock:
            if self._held.pop(digest, None) is None:
                return
        self._path(digest).unlink(missing_ok=True)

    def stats(self) -> dict[str, Any]:
        """Files and bytes held, files evicted (for ``GET /health``)."""
        with self._lock:
            return {"models": len(self._held), "bytes": sum(self._held.values()), "evicted": self.evicted}
