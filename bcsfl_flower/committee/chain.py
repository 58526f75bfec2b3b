"""What anyone holding the ledger can recompute about a round's committee.

The stake book lives on the chain: every round block records the stakes after that
round, and the identities registered since the block before. So the committee of
round r is a function of the chain alone, which lets a client check a quorum
certificate without trusting whoever relays it.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..ledger import Block, Ledger
from .stake import StakePolicy, draw_committee

__all__ = ["committee_seed", "stakes_before", "recompute_committee"]


def committee_seed(previous: Block, server_round: int) -> str:
    """The PoS seed of ``server_round``: the previous block's hash and the round."""
    return f"{previous.hash}|round-{server_round}"


def stakes_before(previous: Block, identities: Mapping[str, object], policy: StakePolicy) -> dict[str, float]:
    """Stakes a round starts from: the previous block's, plus newcomers at the initial stake.

    ``identities`` are the client ids registered when the round's committee is drawn.
    """
    stakes = dict(previous.data.get("stakes", {}))
    for cid in identities:
        stakes.setdefault(cid, policy.initial)
    return {m: round(float(stakes[m]), 6) for m in sorted(stakes)}


def recompute_committee(ledger: Ledger, block: Block, policy: StakePolicy, size: int) -> list[str]:
    """The committee that should have certified round block ``block``.

    Uses the block before it (stakes, hash) and the identities known by then: those on
    chain up to ``block`` (newcomers of a round are listed in its ``identities``).
    """
    previous = ledger.block(block.sequence_no - 1)
    known: dict[str, object] = {}
    for b in ledger.blocks(1, block.sequence_no + 1):
        known.update(b.data.get("identities", {}))
    return draw_committee(stakes_before(previous, known, policy), size, committee_seed(previous, block.data["round"]))
