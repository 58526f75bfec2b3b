"""What anyone holding the ledger can recompute about a round's committee.

The stake book lives on the chain: every round block records the stakes after that
round, and the identities registered since the block before. So the committee of
round r is a function of the chain alone, which lets a client check a quorum
certificate without trusting whoever relays it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..ledger import Block, Ledger
from ..federation.stake import StakePolicy, draw_committee

__all__ = ["committee_for", "committee_seed", "recompute_committee", "stakes_before"]


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


def committee_for(
    ledger: Ledger, previous: Block, server_round: int, newcomers: Iterable[str], policy: StakePolicy, size: int
) -> list[str]:
    """The committee of ``server_round``, drawn right after block ``previous``.

    Eligible: the identities on chain up to ``previous`` plus ``newcomers`` (those
    registered since, which the round's block lists under ``identities``).
    """
    known = dict.fromkeys(cid for b in ledger.blocks(1, previous.sequence_no + 1) for cid in b.data.get("identities", {}))
    known.update(dict.fromkeys(newcomers))
    return draw_committee(stakes_before(previous, known, policy), size, committee_seed(previous, server_round))


def recompute_committee(ledger: Ledger, block: Block, policy: StakePolicy, size: int) -> list[str]:
    """The committee that should have certified round block ``block``."""
    previous = ledger.block(block.sequence_no - 1)
    return committee_for(ledger, previous, block.data["round"], block.data.get("identities", {}), policy, size)
