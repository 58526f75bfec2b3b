"""The coordinator role a client node plays when the PoS draw picks it.

With ``committee="nodes"`` the ServerApp only relays. A drawn node receives the
round's packages and the global model in a TRAIN message marked ``bcsfl.role``:

* ``coordinate``: recompute the committee from the ledger (and refuse if this node is
  not in it), verify every package against the ledger's identity registry, run the
  same pure :func:`~bcsfl_flower.committee.coordinator.coordinate` the in-process
  committee runs, remember the candidate hash, and reply with a PREPARE vote signed
  with this node's own key (plus, when asked, the candidate and the decisions).
* ``commit``: given the PREPARE votes the relay collected, check that 2f+1 committee
  members prepared the hash this node computed itself, and reply with a COMMIT vote
  (its signature over the hash, the form the ledger's quorum certificate holds).

The relay can drop or delay these messages; it cannot forge a vote or make an honest
coordinator sign a hash it did not compute.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from ..committee.agreement import prepare_digest, quorum_size
from ..committee.chain import committee_for
from ..committee.coordinator import coordinate
from ..committee.filter import FilterConfig
from ..committee.rootset import RootSet
from ..federation.stake import StakePolicy
from ..committee.verify import PackageVerifier, verify_round
from ..crypto import SigningKey, verify_signature
from ..ledger import Ledger
from ..package import arrays_to_numpy, numpy_to_arrays

__all__ = [
    "CANDIDATE_KEY", "ROLE_KEY", "VOTE_KEY", "is_role_message", "pack_packages", "play_role", "unpack_packages",
]

ROLE_KEY = "bcsfl.role"
VOTE_KEY = "bcsfl.vote"
CANDIDATE_KEY = "bcsfl.candidate"
_STATE_KEY = "bcsfl.coordinator"
_PKG_PREFIX = "bcsfl.pkg-"


def pack_packages(contents: list[RecordDict], target: RecordDict) -> None:
    """Copy each reply's records into ``target`` under ``bcsfl.pkg-<i>/<name>``."""
    for i, content in enumerate(contents):
        for name, record in content.items():
            target[f"{_PKG_PREFIX}{i}/{name}"] = record


def unpack_packages(content: RecordDict) -> list[RecordDict]:
    """Inverse of :func:`pack_packages`."""
    groups: dict[int, RecordDict] = {}
    for key, record in content.items():
        if key.startswith(_PKG_PREFIX):
            index, name = key[len(_PKG_PREFIX) :].split("/", 1)
            groups.setdefault(int(index), RecordDict())[name] = record
    return [groups[i] for i in sorted(groups)]


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
    committee_size: int,
    root_set: Callable[[Context], RootSet | None] | None = None,
    filter_config: FilterConfig | None = None,
    policy: StakePolicy | None = None,
) -> Message:
    """Answer a ``coordinate`` or ``commit`` message (see the module docstring)."""
    config = msg.content["config"]
    role = str(config[ROLE_KEY])
    server_round = int(config["server-round"])
    policy = policy or StakePolicy()
    base = {"member": client_id, "public-key": key.public_hex, "server-round": server_round}
    if role == "coordinate":
        newcomers = [str(c) for c in config.get("bcsfl.newcomers", [])]
        registered = [cid for cid in newcomers if ledger.identity(cid) is not None]
        members = committee_for(ledger, ledger.latest(), server_round, registered, policy, committee_size)
        if client_id not in members:
            return _reply(msg, {**base, "error": f"{client_id} is not in round {server_round}'s committee"})
        global_tensors = arrays_to_numpy(msg.content["arrays"])
        verifier = PackageVerifier(registry=ledger.identity)
        updates, _ = verify_round(verifier, [("?", pkg) for pkg in unpack_packages(msg.content)],
                                  server_round=server_round, reference=global_tensors, now=time.time())
        output = coordinate(global_tensors, updates, server_round=server_round,
                            root=root_set(context) if root_set else None, config=filter_config or FilterConfig())
        value = output.candidate_hash
        context.state[_STATE_KEY] = ConfigRecord({"round": server_round, "value": value, "committee": members})
        vote = {**base, "value": value, "prepare-sign": key.sign(prepare_digest(server_round, value)),
                "decisions": json.dumps([d.to_json() for d in output.result.decisions])}
        extra = {CANDIDATE_KEY: numpy_to_arrays(output.result.candidate)} if config.get("bcsfl.return-candidate") else None
        return _reply(msg, vote, extra)
    if role == "commit":
        state = context.state.config_records.get(_STATE_KEY)
        value = str(config["bcsfl.value"])
        if state is None or int(state["round"]) != server_round:
            return _reply(msg, {**base, "error": "no candidate of my own for this round"})
        if state["value"] != value:
            return _reply(msg, {**base, "error": "asked to commit a hash I did not compute"})
        members = list(state["committee"])
        prepares = msg.content.config_records.get("bcsfl.prepares", ConfigRecord())
        good = {
            m for m, pub, sig in zip(prepares.get("members", []), prepares.get("publics", []), prepares.get("signs", []))
            if m in members and ledger.identity(m) == pub and verify_signature(pub, sig, prepare_digest(server_round, value))
        }
        if len(good) < quorum_size(len(members)):
            return _reply(msg, {**base, "error": f"only {len(good)} valid prepares"})
        return _reply(msg, {**base, "value": value, "commit-sign": key.sign(bytes.fromhex(value))})
    return _reply(msg, {**base, "error": f"unknown role {role!r}"})


def is_role_message(msg: Message) -> bool:
    """True for a TRAIN message that asks for the coordinator role, not for training."""
    config = msg.content.config_records.get("config")
    return config is not None and ROLE_KEY in config

