"""Re-running the federation's rules over stored blocks, and building the blocks that admit.

Every backend keeps a :class:`Replay` of its chain: the federation state after the head
(:class:`~bcsfl_flower.federation.FederationState`) and the head itself. ``append`` and
every read of the state advance it block by block with :func:`advance`, which runs the
structural checks (link, hash, signatures) and then the state transition, so a block
that another process wrote into the same file is checked before anyone relies on it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bcsfl_flower.crypto import SigningKey
from bcsfl_flower.federation import Charter, FederationState, PooledPackage, RuleViolation, enrolment_data

from .block import GENESIS, Block, LedgerError, Transaction, build_block, make_transaction
from .rules import ChainHead, check_append, check_block, check_link

__all__ = [
    "Probe", "Replay", "admissible", "advance", "enrolment_of", "genesis_replay", "make_charter_block",
    "make_enrolment", "replay",
]


@dataclass(frozen=True)
class Replay:
    """The federation state after ``head``, and ``head`` (what linking the next block needs)."""

    state: FederationState
    head: ChainHead


def genesis_replay() -> Replay:
    """The replay of a fresh chain (the genesis block only)."""
    return Replay(FederationState(height=1, head=GENESIS.hash), GENESIS)


def advance(rep: Replay, block: Block, has_model: Callable[[str], bool] | None = None) -> Replay:
    """Check ``block`` against ``rep`` (structure, then the federation's rules); the next replay.

    Parameters
    ----------
    rep : Replay
        The state after the current head.
    block : Block
        The block that follows the head.
    has_model : Callable[[str], bool] | None (default: None)
        Whether the model store holds a digest; when given, every model the block
        references must be stored (``append`` passes it; a replay of stored blocks
        checks models separately).

    Raises
    ------
    LedgerError
        With the reason, if the block is malformed or does not follow from the state.
    """
    if has_model is None:
        check_link(rep.head, block)
        check_block(block)
    else:
        check_append(rep.head, block, has_model)
    try:
        state = rep.state.apply(block)
    except RuleViolation as err:
        raise LedgerError(str(err)) from None
    except (TypeError, AttributeError, KeyError, ValueError) as err:  # shapes the rules do not name
        raise LedgerError(f"malformed block data ({type(err).__name__}: {err})") from None
    return Replay(state, block)


def replay(blocks: Iterable[Block], start: Replay | None = None) -> Replay:
    """Advance ``start`` (default: genesis) over ``blocks`` (``blocks`` excludes genesis)."""
    rep = start or genesis_replay()
    for block in blocks:
        rep = advance(rep, block)
    return rep


def make_charter_block(authority: SigningKey, charter: Charter, timestamp: float | None = None) -> Block:
    """Block 1 of a federation: ``charter``, signed by the enrolment authority it names."""
    if charter.enrolment_key != authority.public_hex:
        raise LedgerError("the charter must name the key that signs it")
    return build_block(GENESIS, {"charter": charter.to_json()}, authority, timestamp=timestamp or time.time())


def make_enrolment(authority: SigningKey, client_id: str, public_key: str, role: str = "client") -> Transaction:
    """The enrolment authority's signed transaction that admits ``client_id`` with ``public_key``.

    Anyone may submit it (the client itself, the operator): it binds only this id to
    this key, so replaying it changes nothing.
    """
    tx_id = f"enrol:{client_id}:{public_key[:16]}:{uuid.uuid4().hex[:8]}"
    return make_transaction(authority, enrolment_data(client_id, public_key, role), tx_id=tx_id)


def pool_transaction(packages: Iterable[PooledPackage], carrier: SigningKey) -> Transaction:
    """One transaction pooling ``packages`` for the next round, signed by whoever carries them
    (their authority is each client's own signature: :mod:`bcsfl_flower.federation.pool`)."""
    return make_transaction(carrier, {"pool": [p.to_json() for p in packages]}, tx_id=f"pool:{uuid.uuid4()}")


def enrolment_of(tx: Transaction) -> tuple[str, str, str]:
    """``(client_id, public_key, role)`` of an enrolment transaction; ``LedgerError`` if it is none."""
    enrol = tx.data.get("enrol") if isinstance(tx.data, dict) else None
    if not isinstance(enrol, dict) or set(enrol) != {"client_id", "public_key", "role"}:
        raise LedgerError("not an enrolment transaction (data.enrol = {client_id, public_key, role})")
    return enrol["client_id"], enrol["public_key"], enrol["role"]


@dataclass(frozen=True)
class Probe:
    """A transaction block that would follow ``state``'s head: what the rules read of a block.

    For dry runs of transactions through :meth:`FederationState.apply` before any block
    exists (the structural checks are not run on it).
    """

    sequence_no: int
    hash: str
    last_hash: str
    public: str
    data: dict[str, Any]

    @classmethod
    def of(cls, state: FederationState, txs: list[dict[str, Any]]) -> Probe:
        """The probe holding ``txs`` (JSON objects) after ``state``."""
        return cls(state.height, state.head, state.head, "", {"transactions": txs})


def admissible(state: FederationState, txs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The transactions (JSON objects) that the rules admit in order after ``state``.

    Each is tried as a block of its own on the state the ones kept before it leave,
    so of two enrolments that conflict the first is kept. Signatures are not checked
    here (``rules.check_transaction`` does that).

    Parameters
    ----------
    state : FederationState
        The state after the chain's head.
    txs : Iterable[dict[str, Any]]
        Transactions in their JSON form, in the order a block would hold them.

    Returns
    -------
    list[dict[str, Any]]
        Those admitted, in order (the same objects).
    """
    kept = []
    for tx in txs:
        try:
            state = state.apply(Probe.of(state, [tx]))
        except (RuleViolation, AttributeError, TypeError, KeyError):
            continue
        kept.append(tx)
    return kept
