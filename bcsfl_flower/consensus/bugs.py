"""Deliberately broken replicas: the fuzzer must find these (so it cannot pass vacuously).

Each breaks one rule of Castro & Liskov, OSDI 1999: the 2f+1 quorums of the normal case
(section 4.2), or the O set of a NEW-VIEW (section 4.4). They override only the
replica's declared hooks: the ``prepare_threshold`` / ``commit_threshold`` attributes
and the ``planner`` class attribute.

``commit-on-f+1-prepares``  a slot counts as prepared with the pre-prepare and f
                            matching prepares (f+1 votes) and as committed on f+1
                            commits, instead of 2f+1 each;
``new-view-drops-prepared`` the new primary (and every backup checking it) computes O
                            without the prepared certificates: every number in
                            (min-s, max-s] becomes the null request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .messages import NULL_DIGEST, ViewChange
from .replica import Replica
from .viewchange import NewViewPlan, plan_new_view

__all__ = ["PLANTED_BUGS", "CommitOnFPlus1Prepares", "NewViewDropsPrepared", "plan_dropping_prepared"]


class CommitOnFPlus1Prepares(Replica):
    """Weak quorums: f+1 instead of 2f+1 in both phases."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prepare_threshold = self.f
        self.commit_threshold = self.f + 1


def plan_dropping_prepared(vcs: Sequence[ViewChange]) -> NewViewPlan:
    """:func:`~.viewchange.plan_new_view` with every entry of O made the null request."""
    good = plan_new_view(vcs)
    entries = tuple((seq, NULL_DIGEST) for seq, _d in good.entries)
    return NewViewPlan(good.min_s, good.stable_digest, good.stable_proof, good.max_s, entries)


class NewViewDropsPrepared(Replica):
    """O ignores the P sets: prepared requests are replaced by null requests."""

    planner = staticmethod(plan_dropping_prepared)


PLANTED_BUGS: dict[str, type[Replica]] = {
    "commit-on-f+1-prepares": CommitOnFPlus1Prepares,
    "new-view-drops-prepared": NewViewDropsPrepared,
}
