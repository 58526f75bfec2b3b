"""A client's side of admission: make sure its key is enrolled before it signs (BCS-FL, Sec. IV-A).

An identity exists on the chain only once the federation's enrolment authority signed
its enrolment (:mod:`bcsfl_flower.federation`). Before a node signs its first package,
:func:`enrolment_problem` makes sure the ledger knows its key, in this order:

1. already enrolled with this key: nothing to do;
2. a ticket ``<key_dir>/<client_id>.enrolment.json`` (the authority's signed enrolment
   transaction as JSON, from ``bcsfl ledger enrol --out``): submit it;
3. the authority's key on this machine (``<key_dir>/enrolment.key``, or the path
   configured as ``bcsfl-enrolment-key``; a simulation, where the operator's key is on
   the same machine): sign the enrolment with it and submit it;
4. else the node is not enrolled and says how to fix it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..keys import enrolment_ticket_path, load_key
from ..crypto import SigningKey
from ..ledger import Ledger, LedgerError, Transaction
from ..ledger.replay import enrolment_of, make_enrolment

__all__ = ["enrolment_problem"]


def enrolment_problem(ledger: Ledger, client_id: str, key: SigningKey, key_dir: str | os.PathLike[str],
                      authority_path: str | os.PathLike[str]) -> str | None:
    """Enrol ``client_id`` with ``key`` if needed (see the module docstring); why it is not, or None."""
    try:
        known = ledger.state().key(client_id)
        if known == key.public_hex:
            return None
        if known is not None:
            return f"not enrolled: {client_id} is enrolled with another key than {key.public_hex[:16]}..."
        ticket = enrolment_ticket_path(key_dir, client_id)
        if ticket.is_file():
            tx = Transaction.from_json(json.loads(ticket.read_text()))
            if enrolment_of(tx) != (client_id, key.public_hex, "client"):
                return f"not enrolled: the ticket {ticket} is for another id, key or role"
        elif (authority := load_key(Path(authority_path).expanduser())) is not None:
            tx = make_enrolment(authority, client_id, key.public_hex)
        else:
            return (f"not enrolled: ask the operator to run bcsfl ledger enrol --enrolment-key FILE --client-id {client_id} "
                    f"--public-key {key.public_hex} --out {ticket}")
        ledger.register_identity(tx)
    except (LedgerError, ValueError, OSError) as err:
        return f"not enrolled: {err}"
    return None
