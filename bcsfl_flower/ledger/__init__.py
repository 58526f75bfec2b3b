"""The BCS-FL ledger: an append-only, signed hash chain plus a content-addressed model store.

Backends: ``MemoryLedger`` (in process), ``SqliteLedger`` (one crash-safe file) and
``RemoteLedger`` (a PBFT cluster of ledger nodes over HTTP, see ``node``/``service``);
``open_ledger`` picks one from a URL.
"""

from __future__ import annotations

import os

from .base import Ledger
from .block import (
    GENESIS,
    Block,
    LedgerError,
    Transaction,
    build_block,
    canonical_json,
    make_transaction,
    make_vote,
)
from .memory import MemoryLedger
from .sqlite import SqliteLedger
from .verify import VerifyReport, verify_chain

__all__ = [
    "GENESIS",
    "Block",
    "Ledger",
    "LedgerError",
    "MemoryLedger",
    "SqliteLedger",
    "Transaction",
    "VerifyReport",
    "build_block",
    "canonical_json",
    "make_transaction",
    "make_vote",
    "open_ledger",
    "sqlite_path",
    "verify_chain",
]


def sqlite_path(url: str | os.PathLike[str]) -> str | None:
    """The file path a ledger URL names, or ``None`` for non-file ledgers.

    Parameters
    ----------
    url : str | os.PathLike[str]
        ``"sqlite:///relative.db"``, ``"sqlite:////abs/path.db"`` or a bare path.

    Returns
    -------
    str | None
        The path (relative to the working directory unless absolute), or ``None``
        for ``memory`` and ``http(s)`` URLs.
    """
    text = os.fspath(url)
    if text in ("memory", "memory://") or text.startswith(("memory://", "http://", "https://")):
        return None
    if text.startswith("sqlite:"):
        if not text.startswith("sqlite:///") or len(text) == len("sqlite:///"):
            raise ValueError(f"bad sqlite URL {text!r}: use sqlite:///relative or sqlite:////abs")
        return text[len("sqlite:///") :]
    if "://" in text:
        raise ValueError(f"unknown ledger URL scheme in {text!r}")
    if not text:
        raise ValueError("empty ledger URL")
    return text


def open_ledger(url: str | os.PathLike[str], create: bool = True) -> Ledger:
    """Open the ledger a URL names.

    Parameters
    ----------
    url : str | os.PathLike[str]
        ``"memory"`` or ``"memory://"``: a fresh ``MemoryLedger``.
        ``"sqlite:///relative.db"``, ``"sqlite:////abs/path.db"`` (SQLAlchemy style)
        or a bare filesystem path: a ``SqliteLedger``.
        ``"http://..."``/``"https://..."``: a ``RemoteLedger`` speaking HTTP to a
        cluster of ledger nodes (``bcsfl ledger up``); writes are ordered by PBFT.
    create : bool (default: True)
        Whether a missing SQLite file is created (else ``FileNotFoundError``);
        ignored for remote ledgers.

    Returns
    -------
    Ledger
        The opened ledger; close it (or use it as a context manager) when done.
    """
    text = os.fspath(url)
    if text.startswith(("http://", "https://")):
        from .remote import RemoteLedger  # httpx is only needed for remote ledgers

        return RemoteLedger(text)
    path = sqlite_path(text)
    if path is None:
        return MemoryLedger()
    return SqliteLedger(path, create=create)
