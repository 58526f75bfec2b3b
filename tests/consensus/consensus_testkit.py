"""Shared helpers for the consensus tests: keys, replicas, and a FIFO message pump."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

from bcsfl_flower.consensus.messages import (
    Broadcast, CancelTimer, Committed, Request, Send, SetTimer, ViewEntered,
)
from bcsfl_flower.consensus.outputs import CheckpointDue, FetchState, Stabilised
from bcsfl_flower.consensus.replica import PBFTConfig, Replica
from bcsfl_flower.consensus.scenario import keys_for
from bcsfl_flower.consensus.state import TimerKind

CLIENT_KEYS = keys_for(2, "test-client")


def make_replicas(n: int, cls=Replica, **kw) -> list[Replica]:
    keys = keys_for(n)
    pubs = [k.public_hex for k in keys]
    kw.setdefault("config", PBFTConfig(checkpoint_interval=4, log_window=8))
    return [cls(i, keys[i], pubs, **kw) for i in range(n)]


def request(rid: int, value: str | None = None, client: int = 0) -> Request:
    return Request.make(f"client-{client}", rid, value or f"value-{rid}", CLIENT_KEYS[client])


class Pump:
    """Synchronous driver: FIFO delivery, timers fired only on demand, optional drops."""

    def __init__(self, nodes: Sequence) -> None:
        self.nodes = list(nodes)
        self.queue: deque = deque()
        self.timers: dict[tuple[int, TimerKind], SetTimer] = {}
        self.committed: list[list[Committed]] = [[] for _ in self.nodes]
        self.views: list[int] = [0] * len(self.nodes)
        self.sent: list = []
        self.drop: Callable[[int, int, object], bool] = lambda src, dst, msg: False
        self.down: set[int] = set()
        self.due: list[list[int]] = [[] for _ in self.nodes]
        self.stabilised: list[list] = [[] for _ in self.nodes]
        self.fetch: list[list] = [[] for _ in self.nodes]
        for i, node in enumerate(self.nodes):
            self.feed(i, node.start())

    def feed(self, node: int, outputs) -> None:
        for o in outputs:
            if isinstance(o, Broadcast):
                for dst in range(len(self.nodes)):
                    if dst != node:
                        self.queue.append((node, dst, o.msg))
                self.sent.append((node, o.msg))
            elif isinstance(o, Send):
                self.queue.append((node, o.to, o.msg))
                self.sent.append((node, o.msg))
            elif isinstance(o, SetTimer):
                self.timers[(node, o.kind)] = o
            elif isinstance(o, CancelTimer):
                cur = self.timers.get((node, o.kind))
                if cur is not None and cur.timer_id == o.timer_id:
                    del self.timers[(node, o.kind)]
            elif isinstance(o, Committed):
                self.committed[node].append(o)
            elif isinstance(o, ViewEntered):
                self.views[node] = o.view
            elif isinstance(o, CheckpointDue):
                self.due[node].append(o.seq)
            elif isinstance(o, Stabilised):
                self.stabilised[node].append(o.checkpoint)
            elif isinstance(o, FetchState):
                self.fetch[node].append(o.checkpoint)
            else:
                raise AssertionError(f"unexpected output {o!r}")

    def submit(self, node: int, req: Request) -> None:
        self.feed(node, self.nodes[node].submit(req))

    def run(self, limit: int = 200_000) -> None:
        steps = 0
        while self.queue:
            src, dst, msg = self.queue.popleft()
            steps += 1
            assert steps < limit, "message storm"
            if dst in self.down or self.drop(src, dst, msg):
                continue
            self.feed(dst, self.nodes[dst].receive(msg))

    def fire(self, node: int, kind: TimerKind) -> bool:
        t = self.timers.pop((node, kind), None)
        if t is None:
            return False
        self.feed(node, self.nodes[node].on_timer(t.timer_id))
        return True

    def digests(self, node: int) -> list[str]:
        return [c.digest for c in self.committed[node]]
