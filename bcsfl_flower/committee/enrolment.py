"""Admission on the ledger (BCS-FL, Sec. IV-A: "its public key is registered on the ledger").

A federation starts with a charter signed by its enrolment authority, and an identity
exists only once that authority signed its enrolment. In a real federation the
operator holds the key (``bcsfl ledger up`` writes it, ``bcsfl ledger enrol`` uses
it); in ``bcsfl simulate`` and the example app the ServerApp creates it as
``<key_dir>/enrolment.key`` and the strategy uses it to install the charter, so the
one-command run stays one command. Whoever holds this key can admit identities: on
one machine that is everyone, which is what a simulation is.

The operator's and the relay's side: :func:`authority_key`, :func:`install_charter`,
:func:`enrol_relay`, :func:`enrol_first_use`. A node's side, before it signs its first
package (``bcsfl_mod``, :mod:`bcsfl_flower.mod`): :func:`enrolment_problem` makes sure
the ledger knows the node's key, in this order:

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
from collections.abc import Iterable
from logging import ERROR
from pathlib import Path

from flwr.app import Message
from flwr.supercore import log

from ..crypto import SigningKey
from ..federation import Charter, StakePolicy
from ..keys import ENROLMENT_KEY, RELAY_ID, enrolment_ticket_path, load_key
from ..ledger import Ledger, LedgerError, Transaction, build_block
from ..ledger.replay import enrolment_of, make_charter_block, make_enrolment
from ..package import ModelPackage
from ..protocol import PACKAGE_KEY

__all__ = ["authority_key", "enrol_first_use", "enrol_relay", "enrolment_problem", "install_charter"]


def authority_key(given: str | os.PathLike[str] | SigningKey | None, key_dir: str | os.PathLike[str],
                  *, create: bool = False) -> SigningKey | None:
    """The enrolment authority's key, if this machine has it.

    Parameters
    ----------
    given : str | PathLike | SigningKey | None
        The key itself, or the path of its raw key file; None: ``<key_dir>/enrolment.key``.
    key_dir : str | PathLike
        This machine's key folder.
    create : bool (default: False)
        Create the key file when it is missing (a fresh federation's operator).
    """
    if isinstance(given, SigningKey):
        return given
    path = os.path.join(os.path.expanduser(str(key_dir)), ENROLMENT_KEY) if given is None else os.fspath(given)
    if create:
        return SigningKey.load_or_create(path)
    return load_key(path)


def install_charter(ledger: Ledger, authority: SigningKey, *, committee_size: int, policy: StakePolicy,
                    max_model_bytes: int) -> None:
    """Write block 1, the federation's charter, signed by ``authority``."""
    charter = Charter(authority.public_hex, committee_size, policy, max_model_bytes)
    ledger.install_charter(make_charter_block(authority, charter))


def enrol_relay(ledger: Ledger, relay_key: SigningKey, authority: SigningKey | None) -> None:
    """Make sure the relay's identity (role ``relay``) is enrolled; it signs model uploads.

    Raises ``RuntimeError`` when it is not and no enrolment key is at hand.
    """
    known = ledger.state().key(RELAY_ID)
    if known == relay_key.public_hex:
        return
    if authority is None or known is not None:
        raise RuntimeError(
            f"the relay's identity {RELAY_ID!r} is not enrolled with key {relay_key.public_hex}: ask the operator "
            f"to run bcsfl ledger enrol --enrolment-key FILE --client-id {RELAY_ID} --role relay --public-key {relay_key.public_hex} "
            "--ledger URL, or pass the enrolment key (--enrolment-key)")
    ledger.register_identity(make_enrolment(authority, RELAY_ID, relay_key.public_hex, role="relay"))


def enrol_first_use(ledger: Ledger, replies: Iterable[Message], authority: SigningKey | None) -> list[str]:
    """Enrol each unknown client whose package is signed by the key it carries; return their ids.

    For ledgers the clients cannot reach (``memory``): the strategy admits on their
    behalf, so the first sender under an id owns it (simulation only). All enrolments
    of a round go into one block.
    """
    state = ledger.state()
    found: dict[str, str] = {}
    for msg in replies:
        if msg.has_error() or PACKAGE_KEY not in msg.content.config_records:
            continue
        try:
            package = ModelPackage.from_record(msg.content.config_records[PACKAGE_KEY])
        except (KeyError, ValueError):
            continue  # the verifier refuses it with the reason
        cid = package.client_id
        if state.key(cid) is None and cid not in found and package.signature_valid(package.public_key):
            found[cid] = package.public_key
    if not found:
        return []
    if authority is None:
        log(ERROR, "BCS-FL: cannot enrol %s on first use without the enrolment key", sorted(found))
        return []
    txs = [make_enrolment(authority, cid, key) for cid, key in sorted(found.items())]
    try:
        ledger.append(build_block(ledger.latest(), {"transactions": txs}, SigningKey.generate()))
    except LedgerError as err:
        log(ERROR, "BCS-FL: first-use enrolment of %s refused: %s", sorted(found), err)
        return []
    return sorted(found)


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
