"""What the ledger soak checks at the end, as pure functions (tested without a cluster).

The soak (:mod:`experiments.ledger_soak`) collects raw facts while it runs: the times at
which the cluster's height grew, node RSS samples, every answer that said a transaction
committed, every block each node serves. These functions turn them into verdicts:
stalls (:func:`stalls`), bounded memory (:func:`rss_growth`), exactly-once on every node
(:class:`ChainAudit`), and the abuse traffic's answers (:func:`abuse_verdict`).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ChainAudit", "Growth", "abuse_verdict", "fault_plan", "rss_growth", "rss_mib", "rss_reader", "stalls"]


def stalls(commits: Sequence[float], start: float, end: float) -> float:
    """Longest time without a commit inside ``[start, end]`` (seconds).

    Parameters
    ----------
    commits : Sequence[float]
        Sorted times (any monotonic clock) at which the chain grew.
    start, end : float
        The window. The gap from ``start`` to the first commit in it, and from the
        last one to ``end``, count too: a cluster stuck when the window opens stalls.

    Returns
    -------
    float
        The longest gap; ``end - start`` if nothing committed inside.
    """
    lo, hi = bisect.bisect_left(commits, start), bisect.bisect_right(commits, end)
    points = [start, *commits[lo:hi], end]
    return max((b - a for a, b in zip(points, points[1:])), default=0.0)


def rss_mib(pid: int) -> float | None:
    """Resident memory of process ``pid`` in MiB (psutil if installed, else /proc VmRSS); None if gone."""
    try:
        import psutil  # type: ignore[import-untyped]
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            return float(psutil.Process(pid).memory_info().rss) / 2**20
        except psutil.Error:
            return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_reader() -> str:
    """What :func:`rss_mib` reads with here: ``"psutil"`` or ``"/proc VmRSS"``."""
    import importlib.util

    return "psutil" if importlib.util.find_spec("psutil") is not None else "/proc VmRSS"


@dataclass(frozen=True)
class Growth:
    """Node memory over the run: the largest RSS of any node in the first and last thirds."""

    first_max: float
    last_max: float
    overall_max: float
    ratio: float
    slack_mib: float

    @property
    def unbounded(self) -> bool:
        """Whether the last third's peak exceeds the first third's by more than the slack."""
        return self.last_max > self.ratio * self.first_max + self.slack_mib


def rss_growth(samples: Sequence[tuple[float, float]], ratio: float = 1.5,
               slack_mib: float = 64.0) -> Growth:
    """Compare the peak node RSS of the run's last third with its first third's.

    Parameters
    ----------
    samples : Sequence[tuple[float, float]]
        ``(time, largest RSS of any node in MiB at that time)``, in time order.
    ratio : float (default: 1.5)
        Growth factor allowed between the two peaks (caches and buffers settle).
    slack_mib : float (default: 64.0)
        Absolute growth allowed on top of ``ratio``.

    Returns
    -------
    Growth
        Both peaks, the overall peak, and whether growth looks unbounded.
    """
    if not samples:
        return Growth(0.0, 0.0, 0.0, ratio, slack_mib)
    t0, t1 = samples[0][0], samples[-1][0]
    third = (t1 - t0) / 3
    first = [m for t, m in samples if t <= t0 + third] or [samples[0][1]]
    last = [m for t, m in samples if t >= t1 - third] or [samples[-1][1]]
    return Growth(max(first), max(last), max(m for _, m in samples), ratio, slack_mib)


@dataclass
class ChainAudit:
    """Exactly once on every node: acknowledged transactions against the chains the nodes serve.

    Parameters
    ----------
    acked : Mapping[str, Iterable[int]]
        Transaction id -> the blocks (``sequenceNo``) the commit answers named for it.

    Attributes
    ----------
    lost : set[str]
        Acknowledged ids missing from at least one node's chain.
    duplicated : set[str]
        Ids on some node's chain more than once (acknowledged or not).
    misplaced : set[str]
        Acknowledged ids whose block on a chain is none of the blocks their answer named.
    heads : dict[int, tuple[int, str]]
        Node -> (height, head hash) of the chain read.
    """

    acked: Mapping[str, Iterable[int]]
    lost: set[str] = field(default_factory=set)
    duplicated: set[str] = field(default_factory=set)
    misplaced: set[str] = field(default_factory=set)
    heads: dict[int, tuple[int, str]] = field(default_factory=dict)
    hashes: dict[int, list[str]] = field(default_factory=dict)
    on_chain: int = 0

    def add_node(self, node: int, blocks: Iterable[Mapping[str, Any]]) -> None:
        """Audit one node's chain, read in order (genesis first); ``blocks`` may be a generator."""
        where: dict[str, int] = {}
        hashes: list[str] = []
        for block in blocks:
            hashes.append(block["hash"])
            data = block.get("data")
            txs = data.get("transactions", []) if isinstance(data, dict) else []
            for tx in txs:
                tid = tx.get("id") if isinstance(tx, dict) else None
                if not isinstance(tid, str):
                    continue
                if tid in where:
                    self.duplicated.add(tid)
                else:
                    where[tid] = int(block["sequenceNo"])
        self.hashes[node] = hashes
        self.heads[node] = (len(hashes), hashes[-1] if hashes else "")
        self.on_chain = max(self.on_chain, len(where))
        for tid, answered in self.acked.items():
            seq = where.get(tid)
            if seq is None:
                self.lost.add(tid)
            elif seq not in set(answered):
                self.misplaced.add(tid)

    @property
    def chains_equal(self) -> bool:
        """Whether every node audited serves the same blocks (same hashes, same order)."""
        return len({tuple(h) for h in self.hashes.values()}) <= 1


def abuse_verdict(answers: Mapping[str, Counter[str]]) -> tuple[int, str]:
    """Count abuse requests answered with anything but a 4xx, and one line per kind.

    Parameters
    ----------
    answers : Mapping[str, Counter[str]]
        Abuse kind -> answer -> count, where an answer is the HTTP status as text or
        ``"unreachable"`` (the node was down or frozen: no answer at all).

    Returns
    -------
    tuple[int, str]
        (requests that got a 2xx, 3xx or 5xx, the summary text).
    """
    bad = 0
    parts = []
    for kind in sorted(answers):
        counts = answers[kind]
        bad += sum(n for status, n in counts.items() if status.isdigit() and not status.startswith("4"))
        parts.append(f"{kind}=" + ",".join(f"{s}x{n}" for s, n in sorted(counts.items())))
    return bad, " ".join(parts)


def fault_plan(duration: float, every: float, partition_every: int, first: float = 12.0,
               partition_s: float = 30.0) -> list[tuple[float, str]]:
    """When to hit which node: ``(seconds after the faults start, action)``.

    One fault at a time (4 nodes tolerate one): kills alternate between the primary
    and a backup, except that every ``partition_every``-th slot (counting
    from slot 2), which freezes a backup for ``partition_s`` seconds; the next slot then
    waits until the frozen node has had ``every / 2`` seconds to catch up.

    Parameters
    ----------
    duration : float
        No fault starts after this many seconds.
    every : float
        Seconds between kills.
    partition_every : int
        A partition every this many slots (the first at slot 2).
    first : float (default: 12.0)
        Seconds before the first fault.
    partition_s : float (default: 30.0)
        How long a partition lasts.

    Returns
    -------
    list[tuple[float, str]]
        Actions ``kill-primary``, ``kill-backup`` and ``partition-backup`` in time order.
    """
    plan: list[tuple[float, str]] = []
    t, k, kills = first, 0, 0
    while t <= duration:
        if k >= 2 and (k - 2) % partition_every == 0:
            plan.append((t, "partition-backup"))
            t += partition_s + every / 2
        else:
            plan.append((t, "kill-primary" if kills % 2 == 0 else "kill-backup"))
            kills += 1
            t += every
        k += 1
    return plan
