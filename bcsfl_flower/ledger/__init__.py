"""The BCS-FL ledger: an append-only, signed hash chain plus a content-addressed model store.

Backends: ``MemoryLedger`` (in process), ``SqliteLedger`` (one crash-safe file) and
``RemoteLedger`` (a PBFT cluster of ledger nodes over HTTP, see ``node``/``service``);
``open_ledger`` picks one from a URL. Every backend enforces the federation's rules
(:mod:`bcsfl_flower.federation`) on append: block 1 is the charter
(``make_charter_block``), identities enrol by the authority's signed transaction
(``make_enrolment``), and identities and stakes are replayed from the blocks
(``Replay``/``replay``).
"""

from __future__ import annotations

import os

from bcsfl_flower.crypto import SigningKey

from .base import Ledger
from .block import (
    GENESIS,
    Block,
    LedgerError,
    Transaction,
    build_block,
    canonical_json,
    make_transaction,
)
from .memory import MemoryLedger
from .replay import Replay, enrolment_of, make_charter_block, make_enrolment, replay
from .sqlite import SqliteLedger
from .verify import VerifyReport, verify_chain

__all__ = [
    "GENESIS",
    "Block",
    "Ledger",
    "LedgerError",
    "MemoryLedger",
    "Replay",
    "SqliteLedger",
    "Transaction",
    "VerifyReport",
    "build_block",
    "canonical_json",
    "enrolment_of",
    "make_charter_block",
    "make_enrolment",
    "make_transaction",
    "open_ledger",
    "replay",
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


def open_ledger(url: str | os.PathLike[str], create: bool = True,
                uploader: tuple[str, SigningKey] | None = None, read_only: bool = False) -> Ledger:
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
    uploader : tuple[str, SigningKey] | None (default: None)
        For a remote ledger: the enrolled identity ``(client_id, key)`` that signs
        model uploads (a cluster refuses unsigned ones); ignored for local ledgers,
        whose owner needs no signature to write their own file.
    read_only : bool (default: False)
        Open a SQLite file read-only (never written, not even its journal mode;
        implies ``create=False``); ignored for other ledgers.

    Returns
    -------
    Ledger
        The opened ledger; close it (or use it as a context manager) when done.
    """
    text = os.fspath(url)
    if text.startswith(("http://", "https://")):
        from .remote import RemoteLedger  # httpx is only needed for remote ledgers

        return RemoteLedger(text, uploader=uploader)
    path = sqlite_path(text)
    if path is None:
        return MemoryLedger()
    return SqliteLedger(path, create=create and not read_only, read_only=read_only)
