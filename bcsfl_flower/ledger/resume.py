"""A replay point: the head and the federation state after it, saved in the node's own file.

:class:`~.sqlite.SqliteLedger` derives its federation state by replaying its blocks
(:mod:`~.replay`), which checks every signature again. To keep a restart's work bounded,
it saves a point every so often (:func:`due`) and, on opening the file, replays only
the blocks above the point when the point still names the stored block at its height.

Trust. The point lies in the node's own file, written by the node in the same SQLite
transaction as a block it had just checked with every rule; whoever can rewrite the
point can rewrite the blocks under it as well, so it adds no power over the file. The
independent audit (``bcsfl ledger verify``) and a file opened read-only never use it:
they replay every block from genesis.

The form is JSON with the state's fields in a fixed order, mappings as lists in their
insertion order, so that :func:`decode_point` gives back an equal state (the same
:func:`~.snapshot.federation_digest`, the same iteration order); anything else (another
version, a malformed field) decodes to ``ValueError`` and the ledger replays from genesis.
"""

from __future__ import annotations

import json
import math
from typing import Any

from bcsfl_flower.federation import Charter, FederationState, Identity, PooledPackage

from .replay import Replay

__all__ = ["META_KEY", "POINT_BLOCKS", "POINT_TXS", "decode_point", "due", "encode_point"]

META_KEY = "replay_point"
_FORMAT = "bcsfl-replay2"  # a new one whenever the state's fields or the rules that derive it change
#: A point is saved once this many transactions, or blocks, were appended since the last
#: one: a restart re-checks at most about that many signatures (~1 s at 10,000), and
#: saving costs one JSON encoding of the state (small next to checking 10,000 signatures).
POINT_TXS = 10_000
POINT_BLOCKS = 1_000


def due(blocks: int, txs: int) -> bool:
    """Whether a point is due after ``blocks`` blocks holding ``txs`` transactions since the last."""
    return txs >= POINT_TXS or blocks >= POINT_BLOCKS


def encode_point(rep: Replay) -> str:
    """``rep`` (its head's number and hash, the state after it) as the text of a point."""
    s = rep.state
    state = {
        "height": s.height, "head": s.head, "charter": None if s.charter is None else s.charter.to_json(),
        "charter_hash": s.charter_hash, "round": s.round, "seed": s.seed, "model": s.model,
        "previous_model": s.previous_model,
        "identities": [[c, i.public_key, i.role, i.stake, i.taken_part, i.enrolled_at]
                       for c, i in s.identities.items()],
        "pool": [[c, p.to_json()] for c, p in s.pool.items()],
    }
    point = {"format": _FORMAT, "seq": rep.head.sequence_no, "hash": rep.head.hash, "state": state}
    return json.dumps(point, separators=(",", ":"), allow_nan=False)


def decode_point(text: str) -> tuple[int, str, FederationState]:
    """The head's number and hash and the state of a point :func:`encode_point` wrote.

    Raises
    ------
    ValueError
        If ``text`` is not such a point (another format, a field of the wrong type).
    """
    try:
        point = json.loads(text)
        if not isinstance(point, dict) or point.get("format") != _FORMAT:
            raise ValueError(f"not a {_FORMAT} point")
        seq, head, s = point["seq"], point["hash"], point["state"]
        state = FederationState(
            height=_typed(s["height"], int), head=_typed(s["head"], str),
            charter=None if s["charter"] is None else Charter.from_json(s["charter"]),
            charter_hash=_typed(s["charter_hash"], str), round=_typed(s["round"], int),
            seed=_typed(s["seed"], str), model=_optional(s["model"], str),
            previous_model=_optional(s["previous_model"], str),
            identities={_typed(c, str): Identity(_typed(k, str), _typed(r, str), _stake(st), _typed(tp, bool),
                                                 _typed(at, int))
                        for c, k, r, st, tp, at in s["identities"]},
            pool={_typed(c, str): PooledPackage.from_json(p) for c, p in s["pool"]},
        )
    except (KeyError, TypeError, AttributeError) as err:  # ValueError (RuleViolation too) passes as is
        raise ValueError(f"malformed replay point ({type(err).__name__}: {err})") from None
    if _typed(seq, int) + 1 != state.height or _typed(head, str) != state.head:
        raise ValueError("the point's head is not its state's head")
    return seq, head, state


def _typed(value: Any, kind: type) -> Any:
    if type(value) is not kind:  # exact: a bool is no int here
        raise ValueError(f"replay point field {value!r} is not a {kind.__name__}")
    return value


def _optional(value: Any, kind: type) -> Any:
    return None if value is None else _typed(value, kind)


def _stake(value: Any) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ValueError(f"replay point stake {value!r} is not a finite number")
    return value
