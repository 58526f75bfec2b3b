"""The files that found a federation: the enrolment key and the signed charter block.

A cluster folder ``D`` holds ``D/enrolment.key`` (the enrolment authority's Ed25519
key, raw 32 bytes, mode 0600: whoever holds it admits identities) and
``D/charter.json`` (block 1 of the chain, the charter signed by that key, as JSON).
Every node starts with ``--charter D/charter.json`` and installs that exact block on a
chain still at genesis, so all nodes share block 1 without ordering it; nodes on other
machines need a copy of ``charter.json``, never of the key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from bcsfl_flower.crypto import SigningKey
from bcsfl_flower.federation import Charter
from bcsfl_flower.federation.state import DEFAULT_MAX_MODEL_BYTES

from .block import Block, LedgerError
from .replay import advance, genesis_replay, make_charter_block

__all__ = [
    "CHARTER_FILE", "ENROLMENT_KEY", "ensure_charter", "load_key", "load_public_key", "read_charter",
    "write_charter",
]

ENROLMENT_KEY = "enrolment.key"
CHARTER_FILE = "charter.json"


def load_key(path: str | os.PathLike[str]) -> SigningKey:
    """The Ed25519 key stored raw (32 bytes) at ``path``; never creates one.

    Raises ``FileNotFoundError`` if absent and ``LedgerError`` if it is not a key file.
    """
    raw = Path(path).read_bytes()
    if len(raw) != 32:
        raise LedgerError(f"{path} is not a raw 32-byte Ed25519 key file")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return SigningKey(Ed25519PrivateKey.from_private_bytes(raw))


def load_public_key(path: str | os.PathLike[str]) -> str:
    """The public key (hex) of a key file: a raw ``.key`` file, or a text file holding the hex key."""
    raw = Path(path).read_bytes()
    text = raw.decode("ascii", errors="replace").strip().lower()
    if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
        return text
    return load_key(path).public_hex


def read_charter(path: str | os.PathLike[str]) -> Block:
    """The signed charter block stored at ``path``, checked to be a valid block 1.

    Raises ``LedgerError`` (with the reason) if it is not.
    """
    try:
        block = Block.from_json(json.loads(Path(path).read_text()))
    except (ValueError, UnicodeDecodeError) as err:
        raise LedgerError(f"{path}: not a charter block ({err})") from None
    if "charter" not in block.data:
        raise LedgerError(f"{path}: not a charter block (no data.charter)")
    try:
        advance(genesis_replay(), block)  # signed by the key it names, block 1 after genesis
    except LedgerError as err:
        raise LedgerError(f"{path}: invalid charter block: {err}") from None
    return block


def write_charter(path: str | os.PathLike[str], block: Block) -> None:
    """Write ``block`` as JSON to ``path`` (atomically: a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(block.to_json(), indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def ensure_charter(folder: str | os.PathLike[str], enrolment_key: str | os.PathLike[str] | None = None,
                   committee_size: int = 4, max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES,
                   ) -> tuple[SigningKey, Block]:
    """The cluster folder's enrolment key and charter block, created where missing.

    Parameters
    ----------
    folder : str | os.PathLike[str]
        The cluster folder; ``charter.json`` lives here.
    enrolment_key : str | os.PathLike[str] | None (default: None)
        The enrolment authority's key file (created if missing); None:
        ``folder/enrolment.key``.
    committee_size : int (default: 4)
        Coordinators per round, written into a new charter.
    max_model_bytes : int (default: 16 MiB)
        Largest model the ledger stores, written into a new charter.

    Returns
    -------
    tuple[SigningKey, Block]
        The enrolment key and the charter block. An existing ``charter.json`` is kept
        as it is (its settings win over the arguments).

    Raises
    ------
    LedgerError
        If an existing ``charter.json`` is invalid or names another enrolment key.
    """
    folder = Path(folder)
    key = SigningKey.load_or_create(folder / ENROLMENT_KEY if enrolment_key is None else enrolment_key)
    path = folder / CHARTER_FILE
    if path.exists():
        block = read_charter(path)
        if block.data["charter"]["enrolment"] != key.public_hex:
            raise LedgerError(f"{path} names another enrolment key than {key.public_hex[:16]}...: "
                              "use that key (--enrolment-key) or a fresh folder")
        return key, block
    block = make_charter_block(key, Charter(key.public_hex, committee_size, max_model_bytes=max_model_bytes))
    advance(genesis_replay(), block)  # the rules' limits (committee of 4 or more, ...) before writing
    write_charter(path, block)
    return key, block
