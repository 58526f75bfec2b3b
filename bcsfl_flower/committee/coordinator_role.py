"""The coordinator role a client node plays when the PoS draw picks it (BCS-FL, Sec. IV-B/C).

The committee's node side: :mod:`.relay` is its ServerApp side, and ``bcsfl_mod``
(:mod:`bcsfl_flower.mod`) hands a node its role messages. With ``committee="nodes"``
the ServerApp only relays. A drawn node receives the round's packages and the global
model in a TRAIN message marked ``bcsfl.role`` (:data:`~bcsfl_flower.protocol.ROLE_KEY`;
the record names are :mod:`bcsfl_flower.protocol`'s):

* ``coordinate``: read the certified state off its own ledger, recompute the committee
  (and refuse if this node is not in it, or it has fewer than 4 members), take the
  global model the chain certifies (the message's only before the chain certifies
  one) and, with server momentum, the one it certified before (never the message's),
  verify the round's pool with each package's parameters read from the ledger's
  store by hash (:func:`~.verify.verify_pool`), run the same pure
  :func:`~bcsfl_flower.committee.coordinator.coordinate` the in-process committee runs,
  build the round record and statement, and reply with its signature over the
  statement plus its copy of the record (and, when asked, the candidate's tensors).
* ``candidate``: send the candidate of the statement it signed this round (the relay
  asks when the member that sent one was outvoted).

One signing phase suffices: a statement 2f+1 members signed is the certificate, and
an honest member signs only what it computed itself. The relay can drop or delay
these messages; it cannot forge a signature or make an honest member sign a model,
inputs, decisions or stakes it did not compute.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from ..crypto import SigningKey
from ..federation import MIN_COMMITTEE
from ..ledger import Ledger
from ..package import arrays_to_numpy, numpy_to_arrays, parse_canonical_bytes
from ..protocol import (
    CANDIDATE_KEY, CHAIN_ROUND_KEY, RETURN_CANDIDATE_KEY, ROLE_CANDIDATE, ROLE_COORDINATE, ROLE_KEY, STATEMENT_KEY,
    VOTE_KEY,
)
from .coordinator import coordinate, previous_model
from .filter import FilterConfig
from .outcome import round_record
from .rootset import RootSet
from .verify import StoreReader, verify_pool

__all__ = ["is_role_message", "play_role"]

_STATE_KEY = "bcsfl.coordinator"


def _reply(msg: Message, vote: dict, extra: Mapping[str, ArrayRecord] | None = None) -> Message:
    content = RecordDict({VOTE_KEY: ConfigRecord(vote)})
    for k, v in (extra or {}).items():
        content[k] = v
    return Message(content=content, reply_to=msg)


def play_role(
    msg: Message,
    context: Context,
    *,
    client_id: str,
    key: SigningKey,
    ledger: Ledger,
    root_set: Callable[[Context], RootSet | None] | None = None,
    filter_config: FilterConfig | None = None,
    max_package_age: float = 600.0,
) -> Message:
    """Answer a ``coordinate`` or ``candidate`` message (see the module docstring).

    Parameters
    ----------
    msg, context : Message, Context
        The role message and this node's context (its state keeps this round's candidate).
    client_id, key : str, SigningKey
        This node's enrolled identity and its key.
    ledger : Ledger
        This node's view of the chain (read, never written).
    root_set : Callable[[Context], RootSet | None] | None (default: None)
        The root data this node uses (None: median reference).
    filter_config : FilterConfig | None (default: None, i.e. ``FilterConfig()``)
        The filter's thresholds (the same on every member).
    max_package_age : float (default: 600.0)
        Packages older than this many seconds are refused as stale.
    """
    config = msg.content["config"]
    role = str(config[ROLE_KEY])
    server_round = int(config["server-round"])
    base = {"member": client_id, "public-key": key.public_hex, "server-round": server_round}
    if role == ROLE_CANDIDATE:
        kept = context.state.config_records.get(_STATE_KEY)
        if kept is None or int(kept["round"]) != server_round or kept["statement"] != config.get(STATEMENT_KEY):
            return _reply(msg, {**base, "error": "no candidate of mine for that statement"})
        return _reply(msg, {**base, "statement-digest": str(kept["statement"])},
                      {CANDIDATE_KEY: context.state.array_records[CANDIDATE_KEY]})
    if role != ROLE_COORDINATE:
        return _reply(msg, {**base, "error": f"unknown role {role!r}"})
    state = ledger.state()
    committee = state.committee()
    if client_id not in committee:
        return _reply(msg, {**base, "error": f"{client_id} is not in round {server_round}'s committee"})
    if len(committee) < MIN_COMMITTEE:
        return _reply(msg, {**base, "error": f"committee of {len(committee)} is below {MIN_COMMITTEE}"})
    chain_round = int(config.get(CHAIN_ROUND_KEY, server_round))  # the relay's count; the rules need it to grow
    if chain_round <= state.round:
        return _reply(msg, {**base, "error": f"round {chain_round} does not follow certified round {state.round}"})
    if committee[client_id] != key.public_hex:
        return _reply(msg, {**base, "error": "my key is not the one enrolled for me"})
    fetched = 0
    if state.model is not None:  # the certified model, whatever the relay sent
        blob = ledger.get_model(state.model)
        fetched, global_tensors = len(blob), parse_canonical_bytes(blob)
    elif "arrays" in msg.content.array_records:
        global_tensors = arrays_to_numpy(msg.content.array_records["arrays"])
    else:
        return _reply(msg, {**base, "error": "no certified model on the chain and no initial model sent"})
    reader = StoreReader(ledger.get_model, global_tensors)
    updates, refused = verify_pool(state.pool, reader,
                                   server_round=server_round, reference=global_tensors, now=time.time(),
                                   max_age=max_package_age)
    rules = filter_config or FilterConfig()
    output = coordinate(global_tensors, updates, server_round=server_round,
                        root=root_set(context) if root_set else None, config=rules,
                        previous=previous_model(state, ledger.get_model, rules))
    record = round_record(state, output.candidate_hash, updates, refused,
                          [d.to_json() for d in output.result.decisions])
    statement = record.statement(state, chain_round)
    candidate = numpy_to_arrays(output.result.candidate)
    context.state[_STATE_KEY] = ConfigRecord({"round": server_round, "statement": statement.digest})
    context.state[CANDIDATE_KEY] = candidate
    signature = statement.sign(client_id, key)
    vote = {**base, "statement": json.dumps(statement.to_json()), "signature": signature.sign,
            "beacon": signature.beacon, "record": json.dumps(record.to_json()),
            "fetched-bytes": fetched + reader.bytes_read}
    return _reply(msg, vote, {CANDIDATE_KEY: candidate} if config.get(RETURN_CANDIDATE_KEY) else None)


def is_role_message(msg: Message) -> bool:
    """True for a TRAIN message that asks for the coordinator role, not for training."""
    config = msg.content.config_records.get("config")
    return config is not None and ROLE_KEY in config
