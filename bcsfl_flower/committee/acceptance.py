"""A client's check before it trains on a global model: the one the chain certifies (BCS-FL, Sec. IV-A).

"Clients download the newest model and check it against the chain." With the committee
on client nodes the ServerApp only relays and can send a client anything, so the client
reads the certified state off its own ledger (a replay from genesis in which the rules
verify every round certificate against the committee the chain itself draws) and
accepts a global model only when

* its hash is the model of the last certified round (``state.model``); before the first
  round block there is none, and the initial model is accepted on first use, as the
  ledger's genesis is; and
* the head it accepted last is still in the chain at the same height: a ledger that was
  truncated or rewritten under it is refused. The head is kept in the node's
  ``context.state`` under :data:`~bcsfl_flower.protocol.ACCEPTED_KEY`.

It is the committee's check on the node side, beside :mod:`.coordinator_role`: the
client layer imports nothing of the ledger, and ``bcsfl_mod`` (:mod:`bcsfl_flower.mod`)
runs this check before the user's train function when ``bcsfl-require-certificate`` is
set.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from ..ledger import Ledger, LedgerError
from ..package import model_hash
from ..protocol import ACCEPTED_KEY

__all__ = ["acceptance_problem"]


def acceptance_problem(tensors: Mapping[str, np.ndarray], ledger: Ledger, node_state: RecordDict) -> str | None:
    """Why the client must refuse ``tensors``, or None (then the head is remembered as accepted)."""
    try:
        state = ledger.state()
    except LedgerError as err:
        return f"the ledger does not verify: {err}"
    last = node_state.config_records.get(ACCEPTED_KEY)
    if last is not None:
        seq, accepted = int(last["seq"]), str(last["hash"])
        if state.height <= seq:
            return f"the ledger ends at block {state.height - 1}, below block {seq} accepted before (truncated)"
        if ledger.block(seq).hash != accepted:
            return f"block {seq} is not the one accepted before (history rewritten)"
    if state.model is not None and model_hash(tensors) != state.model:
        return f"global model differs from the one certified in round {state.round} (ledger head {state.head[:12]})"
    node_state[ACCEPTED_KEY] = ConfigRecord({"seq": state.height - 1, "hash": state.head})
    return None
