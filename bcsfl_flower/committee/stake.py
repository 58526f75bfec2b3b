"""Stake book and the Proof-of-Stake committee draw.

The draw is direct weighted random sampling without replacement (Efraimidis and
Spirakis, 2006): every candidate ``i`` gets a uniform ``u_i`` derived from
``SHA-256(seed | id)`` and the key ``log(u_i) / S_i``; the ``k`` largest keys form the
committee. The first member is picked with probability ``S_i / sum_j S_j`` exactly, and
no node appears twice. Uniforms come from a hash rather than a PRNG library so that
anyone holding the stake book and the previous block's hash recomputes the same
committee, whatever their numpy version.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["StakeBook", "StakePolicy", "draw_committee", "seed_uniform"]


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
    """How stakes move after a round.

    Parameters
    ----------
    initial : float
        Stake a newly registered participant starts with.
    reward : float
        Added for each accepted update and for each honest coordinator vote.
    penalty : float
        Fraction of stake removed for a rejected update or a refused proposal.
    floor : float
        Stakes never drop below this, so a node can rebuild its reputation.
    """

    initial: float = 10.0
    reward: float = 1.0
    penalty: float = 0.5
    floor: float = 0.1


@dataclass
class StakeBook:
    """Stake per participant id, updated deterministically each round."""

    policy: StakePolicy = field(default_factory=StakePolicy)
    stakes: dict[str, float] = field(default_factory=dict)

    def register(self, member: str) -> None:
        """Give ``member`` the initial stake if it has none yet."""
        self.stakes.setdefault(member, self.policy.initial)

    def reward(self, members: Iterable[str]) -> None:
        """Raise the stake of each member by the policy's reward."""
        for m in members:
            self.register(m)
            self.stakes[m] += self.policy.reward

    def punish(self, members: Iterable[str]) -> None:
        """Cut the stake of each member by the policy's penalty fraction."""
        for m in members:
            self.register(m)
            self.stakes[m] = max(self.policy.floor, self.stakes[m] * (1 - self.policy.penalty))

    def snapshot(self) -> dict[str, float]:
        """A sorted copy, for the ledger and for reproducible draws."""
        return {m: round(self.stakes[m], 6) for m in sorted(self.stakes)}
