"""What a ledger node admits on arrival: every write needs the authority the chain grants.

Reads are open; writes are judged against the federation state after the node's head
before anything is ordered, so an outsider's write is refused with its reason (401 no
authority shown, 403 authority refused) and never reaches PBFT:

* an enrolment must be a transaction signed by the charter's enrolment key;
* any other transaction must be signed by an enrolled identity's key;
* a block that follows the head must follow from the state by the federation's rules
  (a round block needs the certificate of the committee the chain draws).

These are the same rules every node runs again when it executes the ordered write
(``Ledger.append``), so a faulty node that skips them gains nothing. Model uploads
are checked by :func:`~.upload.check_upload`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bcsfl_flower.federation import FederationState, RuleViolation

from .block import Block, LedgerError, Transaction
from .replay import Probe, enrolment_of
from .rules import check_transaction, is_digest

__all__ = ["Refused", "admit_block", "admit_enrolment", "admit_transaction", "is_enrolment"]

_HOW = "submit the enrolment authority's signed enrolment transaction (bcsfl ledger enrol)"


class Refused(Exception):
    """A write refused on arrival: ``status`` (HTTP) and ``detail`` (the reason)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def is_enrolment(tx: Transaction) -> bool:
    """Whether ``tx`` claims to enrol an identity (``data.enrol``)."""
    return "enrol" in tx.data


def _parse(item: Any, what: str, *, copy: bool = False) -> Transaction:
    try:
        return Transaction.from_json(item, copy=copy)
    except LedgerError as err:
        raise Refused(422, f"{what}: {err}") from None
    except RecursionError:
        raise Refused(422, f"{what}: data nested too deeply") from None


def admit_enrolment(obj: Any, state: FederationState) -> tuple[Transaction, bool]:
    """Check an enrolment (``POST /identities`` body); the transaction and whether it is new.

    Parameters
    ----------
    obj : Any
        The parsed body: an enrolment transaction (``make_enrolment(...).to_json()``).
    state : FederationState
        The state after the node's head.

    Returns
    -------
    tuple[Transaction, bool]
        The transaction, and False when the identity is already enrolled with this
        key and role (nothing to order).

    Raises
    ------
    Refused
        401 without a signed transaction, 403 when it is not validly signed by the
        enrolment authority, 409 when the id is enrolled with another key or role,
        422 when the enrolment itself is malformed.
    """
    if not isinstance(obj, dict) or not {"public", "sign"} <= set(obj):
        raise Refused(401, f"enrolment signature required: {_HOW}")
    tx = _parse(obj, "enrolment")
    if state.charter is None:
        raise Refused(403, "this ledger has no charter, so nobody can enrol")
    if tx.public != state.charter.enrolment_key:
        raise Refused(403, f"enrolment not signed by the enrolment authority (the charter's key "
                           f"{state.charter.enrolment_key[:16]}...): {_HOW}")
    try:
        check_transaction(tx)
        cid, key, role = enrolment_of(tx)
    except LedgerError as err:
        raise Refused(403 if "signature" in str(err) or "hash" in str(err) else 422,
                      f"enrolment refused: {err}") from None
    try:
        cid.encode("utf-8")
    except (UnicodeEncodeError, AttributeError):
        raise Refused(422, "enrolment refused: client_id must be valid Unicode text") from None
    known = state.identities.get(cid)
    if known is not None:
        if known.public_key == key and known.role == role:
            return tx, False
        raise Refused(409, f"identity {cid!r} is already enrolled with another key or role")
    try:
        state.apply(Probe.of(state, [tx.to_json()]))
    except RuleViolation as err:
        raise Refused(422, f"enrolment refused: {err}") from None
    return tx, True


def admit_transaction(i: int, item: Any, state: FederationState, known_keys: set[str],
                      has_model: Callable[[str], bool]) -> Transaction:
    """Check one transaction of ``POST /postModelUpdate``; raises :class:`Refused`.

    Parameters
    ----------
    i : int
        Its index in the request (for the message).
    item : Any
        The parsed transaction object (fresh from the body's parser: not copied).
    state : FederationState
        The state after the node's head.
    known_keys : set[str]
        Every enrolled identity's public key (``state``'s, kept by the node).
    has_model : Callable[[str], bool]
        Whether the model store holds a digest.
    """
    tx = _parse(item, f"transaction {i}")
    if is_enrolment(tx):
        return admit_enrolment(item, state)[0]
    if tx.public not in known_keys:
        raise Refused(403, f"transaction {tx.id}: unknown client key {tx.public[:16]}...; only enrolled "
                           "identities may submit (enrol with POST /identities first)")
    pooled = tx.data.get("pool")
    if isinstance(pooled, list):  # clients' packages for the round pool: the rules say if they may enter
        for item in pooled:
            model = item.get("model_hash") if isinstance(item, dict) else None
            if isinstance(model, str) and is_digest(model) and not has_model(model):
                raise Refused(422, f"transaction {tx.id}: pooled model {model} is not stored; upload it first")
        try:
            state.apply(Probe.of(state, [tx.to_json()]))
        except RuleViolation as err:
            raise Refused(422, f"pool transaction refused: {err}") from None
    model = tx.data.get("model-params")
    if isinstance(model, str) and is_digest(model) and not has_model(model):
        raise Refused(422, f"transaction {tx.id}: model {model} is not stored; upload it with POST /models first")
    try:
        check_transaction(tx)
    except LedgerError as err:
        raise Refused(422, str(err)) from None
    return tx


def admit_block(block: Block, head: Block, state: FederationState) -> None:
    """Dry-run a block that follows ``head`` through the federation's rules (403 if refused).

    A block that does not follow the head is left to execution, which refuses it with
    the reason (already committed, or a stale parent) on every node alike.

    Parameters
    ----------
    block : Block
        The submitted block, already structurally checked (``rules.check_block``).
    head : Block
        This node's chain head.
    state : FederationState
        The state after ``head``.

    Raises
    ------
    Refused
        403 with the rule's reason; 422 for data of a shape the rules cannot read.
    """
    if block.sequence_no != head.sequence_no + 1 or block.last_hash != head.hash:
        return
    try:
        state.apply(block)
    except RuleViolation as err:
        raise Refused(403, f"refused by the federation's rules: {err}") from None
    except (AttributeError, TypeError, KeyError, ValueError) as err:  # odd shapes the rules do not name
        raise Refused(422, f"malformed block data: {type(err).__name__}") from None
