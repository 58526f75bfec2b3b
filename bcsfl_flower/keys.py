"""Where keys live on a machine (BCS-FL, Sec. IV-A: every client has a key pair): one file each.

``<key_dir>/<client id>.key`` is a client's key (``bcsfl_mod`` creates it on first use),
``<key_dir>/enrolment.key`` the enrolment authority's (the operator's; created by
``bcsfl simulate`` and the ServerApp for a fresh federation, by ``bcsfl ledger up``
for a ledger cluster), ``<key_dir>/relay.key`` the relay's own identity (uploads
models to an HTTP ledger), and ``<key_dir>/<client id>.enrolment.json`` an
enrolment ticket (the authority's signed transaction, from ``bcsfl ledger enrol``).

With the committee in the ServerApp (``committee="server"``, a simulation on one
machine), the members sign with the keys found here: a member whose key file is not
here, or does not hold its registered key, cannot sign.

Clients, the committee, the strategy and the operator's tools all name these files, so
the layout lives here, beside :mod:`.crypto`, and imports nothing else of the package.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from .crypto import SigningKey

__all__ = ["ENROLMENT_KEY", "RELAY_ID", "enrolment_ticket_path", "key_path", "load_key", "member_keys"]

#: File name of the enrolment authority's key in a key dir.
ENROLMENT_KEY = "enrolment.key"
#: Identity (and key file stem) under which a relay uploads models to an HTTP ledger.
RELAY_ID = "relay"


def key_path(key_dir: str | os.PathLike[str], identity: str) -> Path:
    """``<key_dir>/<identity>.key``."""
    return Path(key_dir).expanduser() / f"{identity}.key"


def enrolment_ticket_path(key_dir: str | os.PathLike[str], client_id: str) -> Path:
    """``<key_dir>/<client_id>.enrolment.json``."""
    return Path(key_dir).expanduser() / f"{client_id}.enrolment.json"


def load_key(path: str | os.PathLike[str]) -> SigningKey | None:
    """The key stored at ``path`` (raw 32 bytes), or None when there is no such file."""
    path = Path(path).expanduser()
    if not path.is_file():
        return None
    return SigningKey.load_or_create(path)  # exists: loads it


def member_keys(key_dir: str | os.PathLike[str], committee: Mapping[str, str]) -> dict[str, SigningKey]:
    """Keys of the ``committee`` members (member -> registered public key) found in ``key_dir``.

    Only keys that are the member's registered key count.
    """
    found = {}
    for member, public in committee.items():
        key = load_key(key_path(key_dir, member))
        if key is not None and key.public_hex == public:
            found[member] = key
    return found
