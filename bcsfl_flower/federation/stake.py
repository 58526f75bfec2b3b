"""Stakes and the Proof-of-Stake committee draw (BCS-FL, Sec. IV-B: "direct weighted random sampling").

The draw is weighted random sampling without replacement (Efraimidis and Spirakis,
2006): every candidate ``i`` gets a uniform ``u_i`` derived from ``SHA-256(seed | id)``
and the key ``log(u_i) / S_i``; the ``k`` largest keys form the committee. The first
member is picked with probability ``S_i / sum_j S_j`` exactly, and no node appears
twice. Uniforms come from a hash rather than a PRNG library so that anyone holding the
chain recomputes the same committee, whatever their numpy version.

Stakes move only by :func:`next_stakes`, a pure function of the stake book and the
committee's certified decisions, so every ledger node and ``bcsfl ledger verify``
re-derive the same book from genesis.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["StakePolicy", "draw_committee", "next_stakes", "seed_uniform"]


def seed_uniform(seed: str, member: str) -> float:
    """A uniform in (0, 1) determined by ``seed`` and ``member``."""
    digest = hashlib.sha256(f"{seed}|{member}".encode()).digest()
    top53 = int.from_bytes(digest[:8], "big") >> 11
    return (top53 + 0.5) / float(1 << 53)


def draw_committee(stakes: Mapping[str, float], size: int, seed: str) -> list[str]:
    """Draw ``size`` distinct members with probability proportional to stake.

    Members with zero stake are never drawn. Returns the committee in draw order;
    the first member is the PBFT primary of view 0.
    """
    eligible = {m: s for m, s in stakes.items() if s > 0}
    keys = sorted(
        ((math.log(seed_uniform(seed, m)) / s, m) for m, s in eligible.items()),
        reverse=True,
    )
    return [m for _, m in keys[: max(0, size)]]


@dataclass(frozen=True)
class StakePolicy:
    """How stakes move after a round (part of the federation's charter).

    Parameters
    ----------
    initial : float (default: 10.0)
        Stake a newly enrolled client starts with.
    reward : float (default: 1.0)
        Added for each update the committee kept.
    penalty : float (default: 0.5)
        Fraction of stake removed for an update the committee rejected.
    floor : float (default: 0.1)
        Stakes never drop below this, so a client can rebuild its reputation.
    """

    initial: float = 10.0
    reward: float = 1.0
    penalty: float = 0.5
    floor: float = 0.1

    def to_json(self) -> dict[str, float]:
        """The policy as the charter records it."""
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, obj: Any) -> StakePolicy:
        """Parse :meth:`to_json`'s form; raises ``ValueError`` if malformed."""
        if not isinstance(obj, dict) or set(obj) != {"initial", "reward", "penalty", "floor"}:
            raise ValueError("stake policy must have exactly initial, reward, penalty and floor")
        values = {}
        for k, v in obj.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"stake policy {k} must be a finite non-negative number")
            values[k] = float(v)
        if values["penalty"] > 1:
            raise ValueError("stake policy penalty is a fraction (at most 1)")
        return cls(**values)


def next_stakes(stakes: Mapping[str, float], kept: Iterable[str], rejected: Iterable[str],
                policy: StakePolicy) -> dict[str, float]:
    """The stake book after a round: kept clients gain ``reward``, rejected ones lose ``penalty``.

    Only ids already in ``stakes`` move (the committee's decisions are about enrolled
    clients' own authenticated packages); the result is sorted and rounded to six
    decimals, the form the chain records and the certificate's digest covers.
    """
    book = {m: float(s) for m, s in stakes.items()}
    for m in kept:
        if m in book:
            book[m] += policy.reward
    for m in rejected:
        if m in book:
            book[m] = max(policy.floor, book[m] * (1 - policy.penalty))
    return {m: round(book[m], 6) for m in sorted(book)}
