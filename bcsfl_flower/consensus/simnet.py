"""A seeded, in-process network simulator for sans-IO replicas.

:class:`SimNetwork` drives any objects with the replica interface (``start``,
``submit``, ``receive``, ``on_timer``, each returning outputs) through a discrete-event
loop on a virtual clock. A :class:`FaultSchedule` says what goes wrong before the
global stabilisation time (GST): message loss, random delay (hence reordering),
duplication, partitions that heal, and replicas that crash for a while (a paused process:
deliveries to it are lost, its timers fire when it comes back) or for good. From GST on
every message between live replicas arrives within ``stable_delay``. This is the system
model of Castro & Liskov, OSDI 1999, section 2 (an asynchronous network that may fail to
deliver, delay, duplicate or reorder messages), with the eventual synchrony their
liveness argument (section 4.5.2) needs.

The simulated application state is the executed log: the network answers a replica's
``CheckpointDue`` with :func:`app_digest` of its log and a ``FetchState`` with the log
of a peer that leads to the checkpoint's digests (section 4.3's state transfer).

Everything random is drawn from one ``random.Random(schedule.seed)``, so a schedule
replays exactly; :attr:`SimNetwork.trace_digest` fingerprints the whole run.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from ..crypto import sha256_hex
from .messages import GENESIS_DIGEST, Broadcast, CancelTimer, Committed, Request, Send, SetTimer, ViewEntered
from .outputs import CheckpointDue, FetchState

__all__ = ["FaultSchedule", "Partition", "Crash", "SimNetwork", "CLIENT", "app_digest"]

#: Source id used for client-to-replica messages.
CLIENT = -1

_DELIVER, _TIMER, _SUBMIT, _CALL = 0, 1, 2, 3


@dataclass(frozen=True)
class Partition:
    """From ``start`` to ``end`` no message crosses between ``group`` and the rest."""

    start: float
    end: float
    group: frozenset[int]


@dataclass(frozen=True)
class Crash:
    """Replica ``node`` is down from ``start`` until ``end`` (None: for good)."""

    node: int
    start: float
    end: Optional[float] = None


@dataclass(frozen=True)
class FaultSchedule:
    """What the network does to messages; reliable from ``gst`` on."""

    seed: int = 0
    gst: float = 0.0
    loss: float = 0.0
    dup: float = 0.0
    delay: tuple[float, float] = (1.0, 5.0)
    stable_delay: tuple[float, float] = (1.0, 3.0)
    partitions: tuple[Partition, ...] = ()
    crashes: tuple[Crash, ...] = ()

    @classmethod
    def reliable(cls, seed: int = 0, delay: tuple[float, float] = (1.0, 3.0)) -> FaultSchedule:
        return cls(seed=seed, gst=0.0, stable_delay=delay)


@dataclass
class NetStats:
    sent: int = 0
    delivered: int = 0
    dropped: int = 0
    duplicated: int = 0
    events: int = 0


@dataclass
class _ClientJob:
    request: Request
    targets: tuple[int, ...]
    retry: float
    replies_needed: int
    submitted_at: float
    done: bool = False


class SimNetwork:
    """Discrete-event driver for ``nodes`` (index i is replica i)."""

    def __init__(self, nodes: Sequence[Any], schedule: Optional[FaultSchedule] = None) -> None:
        self.nodes = list(nodes)
        self.n = len(self.nodes)
        self.schedule = schedule or FaultSchedule.reliable()
        self.rng = random.Random(self.schedule.seed)
        self.now = 0.0
        self.stats = NetStats()
        self._heap: list[tuple] = []
        self._tick = 0
        self._cancelled: set[tuple[int, int]] = set()
        self._down: dict[int, list[tuple[float, Optional[float]]]] = {}
        for c in self.schedule.crashes:
            self._down.setdefault(c.node, []).append((c.start, c.end))
        self.committed: list[list[Committed]] = [[] for _ in self.nodes]
        self.executed_by: dict[tuple[str, int], dict[int, float]] = {}
        self.views: list[int] = [0] * self.n
        self.view_changes = 0
        self._jobs: list[_ClientJob] = []
        self._trace = hashlib.sha256()
        self.on_output: Optional[Callable[[int, Any, float], None]] = None
        self._started = False
        self._commits = 0
        self.state_transfers = 0
        #: Nodes the network adversary favours (a ``rushing`` attribute, set by
        #: :class:`~.byzantine.ByzantineReplica`): messages from and to them arrive at
        #: once (the network adversary colludes with them), so they race correct replicas.
        self.rushing = frozenset(i for i, nd in enumerate(self.nodes) if getattr(nd, "rushing", False))

    # ----------------------------------------------------------------- schedule

    def is_down(self, node: int, t: float) -> bool:
        for start, end in self._down.get(node, ()):
            if start <= t and (end is None or t < end):
                return True
        return False

    def _up_again(self, node: int, t: float) -> Optional[float]:
        for start, end in self._down.get(node, ()):
            if start <= t and (end is None or t < end):
                return end
        return t

    def _partitioned(self, a: int, b: int, t: float) -> bool:
        for p in self.schedule.partitions:
            if p.start <= t < p.end and ((a in p.group) != (b in p.group)):
                return True
        return False

    def _push(self, t: float, kind: int, a: Any, b: Any) -> None:
        self._tick += 1
        heapq.heappush(self._heap, (t, self._tick, kind, a, b))

    def _delay(self, rush: bool = False) -> float:
        lo, hi = self.schedule.delay if self.now < self.schedule.gst else self.schedule.stable_delay
        d = self.rng.uniform(lo, hi)
        return 0.0 if rush else d

    def _transmit(self, src: int, dst: int, msg: Any, kind: int = _DELIVER) -> None:
        self.stats.sent += 1
        rush = bool(self.rushing) and (src in self.rushing or dst in self.rushing)
        if self.now < self.schedule.gst:
            if self.rng.random() < self.schedule.loss:
                self.stats.dropped += 1
                return
            if src >= 0 and self._partitioned(src, dst, self.now):
                self.stats.dropped += 1
                return
            if self.schedule.dup and self.rng.random() < self.schedule.dup:
                self.stats.duplicated += 1
                self._push(self.now + self._delay(rush), kind, dst, msg)
        self._push(self.now + self._delay(rush), kind, dst, msg)

    # ----------------------------------------------------------------- outputs

    def _apply(self, node: int, outputs: Iterable[Any]) -> None:
        for out in outputs:
            if isinstance(out, Broadcast):
                for dst in range(self.n):
                    if dst != node:
                        self._transmit(node, dst, out.msg)
            elif isinstance(out, Send):
                if 0 <= out.to < self.n and out.to != node:
                    self._transmit(node, out.to, out.msg)
            elif isinstance(out, SetTimer):
                self._push(self.now + out.delay, _TIMER, node, out.timer_id)
            elif isinstance(out, CancelTimer):
                self._cancelled.add((node, out.timer_id))
            elif isinstance(out, Committed):
                self._commits += 1
                self.committed[node].append(out)
                if out.request is not None and not out.noop:
                    self.executed_by.setdefault(out.request.key, {})[node] = self.now
            elif isinstance(out, ViewEntered):
                self.views[node] = out.view
                self.view_changes += 1
            elif isinstance(out, CheckpointDue):
                self._push(self.now + self._delay(), _CALL, ("checkpoint", node), out.seq)
            elif isinstance(out, FetchState):
                self.state_transfers += 1
                self._push(self.now + self._delay(), _CALL, ("transfer", node), out.checkpoint)
            if self.on_output is not None:
                self.on_output(node, out, self.now)

    # ----------------------------------------------------------------- clients

    def submit_at(
        self,
        t: float,
        request: Request,
        *,
        targets: Optional[Sequence[int]] = None,
        retry: float = 40.0,
        replies_needed: Optional[int] = None,
    ) -> None:
        """A client sends ``request`` to ``targets`` (default: all) at time ``t`` and
        re-sends it every ``retry`` until ``replies_needed`` (default f+1) replicas
        executed it (standing in for their replies)."""
        f = (self.n - 1) // 3
        job = _ClientJob(
            request, tuple(range(self.n) if targets is None else targets), retry,
            f + 1 if replies_needed is None else replies_needed, t,
        )
        self._jobs.append(job)
        self._push(t, _CALL, job, None)

    def _client_send(self, job: _ClientJob) -> None:
        if len(self.executed_by.get(job.request.key, ())) >= job.replies_needed:
            job.done = True
            return
        for dst in job.targets:
            self._transmit(CLIENT, dst, job.request, _SUBMIT)
        self._push(self.now + job.retry, _CALL, job, None)

    # ----------------------------------------------------------------- run

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        for i, node in enumerate(self.nodes):
            if not self.is_down(i, 0.0):
                self._apply(i, node.start())
            else:
                up = self._up_again(i, 0.0)
                if up is not None:
                    self._push(up, _CALL, ("start", i), None)

    def run(self, until: float, stop: Optional[Callable[[], bool]] = None, check_every: int = 64) -> bool:
        """Process events up to virtual time ``until``; True once ``stop()`` holds.

        ``stop`` is evaluated after every event that committed something and every
        ``check_every`` events.
        """
        self.start()
        counter = 0
        heap = self._heap
        while heap and heap[0][0] <= until:
            t, _tick, kind, a, b = heapq.heappop(heap)
            self.now = t
            self.stats.events += 1
            commits = self._commits
            self._step(kind, a, b)
            counter += 1
            if stop is not None and (counter % check_every == 0 or commits != self._commits):
                if stop():
                    return True
        self.now = max(self.now, until)
        return bool(stop is not None and stop())

    def _step(self, kind: int, a: Any, b: Any) -> None:
        if kind == _CALL:
            if isinstance(a, _ClientJob):
                self._client_send(a)
            elif a[0] == "transfer":
                self._transfer(a[1], b)
            elif a[0] == "checkpoint":
                self._checkpoint(a[1], b)
            else:
                _, node = a
                self._apply(node, self.nodes[node].start())
            return
        node = a
        if kind == _TIMER:
            if (node, b) in self._cancelled:
                self._cancelled.discard((node, b))
                return
            if self.is_down(node, self.now):
                up = self._up_again(node, self.now)
                if up is not None:
                    self._push(up, _TIMER, node, b)
                return
            self._mark("T", node, b)
            self._apply(node, self.nodes[node].on_timer(b))
            return
        if self.is_down(node, self.now):
            self.stats.dropped += 1
            return
        self.stats.delivered += 1
        if kind == _SUBMIT:
            self._mark("S", node, b.digest)
            self._apply(node, self.nodes[node].submit(b))
        else:
            self._mark("D", node, getattr(b, "sig", b"").hex()[:16])
            self._apply(node, self.nodes[node].receive(b))

    def _checkpoint(self, node: int, seq: int) -> None:
        """The simulated application answers ``CheckpointDue(seq)`` (once its node is up)
        with a digest of its state there, :func:`app_digest` of the log."""
        up = self._up_again(node, self.now)
        if up is None:
            return
        if up > self.now:
            self._push(up, _CALL, ("checkpoint", node), seq)
            return
        self._apply(node, self.nodes[node].checkpoint_ready(seq, app_digest(self.committed[node][:seq])))

    def _transfer(self, node: int, cp: Any) -> None:
        """The simulated application state is the executed log: a node that must fetch the
        state at ``cp`` takes the missing entries from a peer whose log leads to
        ``cp.state_digest`` (the hash chain checks it), then resumes (section 4.3)."""
        if self.is_down(node, self.now):
            return  # the replica asks again on its heartbeat
        mine = self.committed[node]
        for donor in range(self.n):
            log = mine + self.committed[donor][len(mine):cp.seq]
            if len(log) != cp.seq or _chain(log) != cp.state_digest:
                continue
            if cp.app_digest and app_digest(log) != cp.app_digest:
                continue  # the state the checkpoint's application digest names, or none
            for entry in log[len(mine):]:
                self.committed[node].append(entry)
                if entry.request is not None and not entry.noop:
                    self.executed_by.setdefault(entry.request.key, {})[node] = self.now
            self._apply(node, self.nodes[node].state_transferred(cp))
            return

    def _mark(self, kind: str, node: int, what: Any) -> None:
        self._trace.update(f"{self.now:.9f}|{kind}|{node}|{what};".encode())

    @property
    def trace_digest(self) -> str:
        """SHA-256 over every event processed so far (same seed => same digest)."""
        return self._trace.hexdigest()

    def pending_jobs(self) -> list[Request]:
        return [j.request for j in self._jobs if not j.done]


def _chain(log: Sequence[Committed]) -> str:
    """The execution hash chain over ``log`` (as :class:`~.execution.ExecutionLog` computes it)."""
    digest = GENESIS_DIGEST
    for entry in log:
        digest = sha256_hex(f"{digest}|{entry.seq}|{entry.digest}".encode())
    return digest


def app_digest(log: Sequence[Committed]) -> str:
    """The simulated application's state digest after ``log``: the executed values."""
    return sha256_hex("|".join(str(c.value) for c in log).encode())
