"""A client's check before it trains on a global model: certified, and on the ledger.

With the committee on client nodes, the ServerApp only relays. It can still send a
client anything, so the client accepts a global model only when

* the model's hash is the ``model-params`` of the ledger's latest block (the one the
  train message names), and
* that block carries at least 2f+1 valid signatures over the hash from the members of
  the round's committee, which the client recomputes from the chain (stakes and hash
  of the block before) rather than taking from the relay.

Before the first round block exists (round 1), the initial model is accepted as the
ledger's genesis is: on first use.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..committee.agreement import quorum_size
from ..committee.chain import recompute_committee
from ..federation.stake import StakePolicy
from ..crypto import verify_signature
from ..ledger import Ledger
from ..package import model_hash

__all__ = ["CERT_KEY", "certificate_problem"]

#: ConfigRecord (in the train message) naming the block that certifies the global model.
CERT_KEY = "bcsfl.certificate"


def _signed(vote: Mapping[str, str], digest: str) -> bool:
    try:
        return verify_signature(vote["public"], bytes.fromhex(vote["sign"]), bytes.fromhex(digest))
    except (KeyError, TypeError, ValueError):
        return False


def certificate_problem(
    tensors: Mapping[str, np.ndarray],
    certificate: Mapping[str, object] | None,
    ledger: Ledger,
    *,
    committee_size: int,
    policy: StakePolicy = StakePolicy(),
) -> str | None:
    """Why the client must refuse ``tensors``, or None when the model is certified."""
    latest = ledger.latest()
    digest = model_hash(tensors)
    if latest.sequence_no == 0:
        return None  # bootstrap: no round has been certified yet
    if not certificate:
        return "no certificate with the global model"
    if certificate.get("block-hash") != latest.hash:
        return f"certificate names block {str(certificate.get('block-hash'))[:12]}, not the ledger's latest {latest.hash[:12]}"
    if latest.data.get("model-params") != digest:
        return "global model differs from the one committed in the ledger's latest block"
    quorum = latest.data.get("quorum") or {}
    if quorum.get("value") != digest:
        return "the block's quorum certifies another model"
    members = recompute_committee(ledger, latest, policy, committee_size)
    keys = {ledger.identity(m) for m in members} - {None}
    voters = {v["public"] for v in quorum.get("votes", []) if v.get("public") in keys and _signed(v, digest)}
    needed = quorum_size(len(members))
    if len(voters) < needed:
        return f"only {len(voters)} valid committee signatures, {needed} needed"
    return None
