"""Random fault scenarios and the safety / liveness oracle used by the fuzzer and tests.

The oracle checks the properties of Castro & Liskov, OSDI 1999, section 3 (safety:
linearizable execution, here as agreement of correct replicas' logs; liveness: clients
eventually get replies once the network is synchronous enough, section 4.5.2).

:func:`draw_scenario` turns a seed into a :class:`Scenario`: up to f Byzantine
replicas (behaviours from :mod:`.byzantine`), permanent crashes among the rest so that
Byzantine + crashed <= f, and before GST: loss, delay, duplication, partitions and
temporary crashes of any replica. Correct clients submit signed requests (some after
GST). :func:`run_scenario` runs it and checks

* SAFETY: no two correct replicas (crashed ones included) executed different digests
  at the same sequence number, every executed entry's quorum certificate verifies, and
  no request executed twice;
* LIVENESS: every correct client's request is executed by every correct replica that is
  up at the end, no later than ``GST + liveness_bound``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

from ..crypto import SigningKey
from .byzantine import BEHAVIOURS, ByzantineReplica
from .messages import Committed, Request
from .quorum import entry_matches, max_faulty, verify
from .replica import PBFTConfig, Replica
from .simnet import Crash, FaultSchedule, Partition, SimNetwork

__all__ = ["Scenario", "Outcome", "draw_scenario", "run_scenario", "valid_value", "keys_for"]

_KEY_CACHE: dict[str, SigningKey] = {}


def _key(name: str) -> SigningKey:
    key = _KEY_CACHE.get(name)
    if key is None:
        key = _KEY_CACHE[name] = SigningKey.from_seed(name.encode())
    return key


def keys_for(n: int, tag: str = "replica") -> list[SigningKey]:
    """Deterministic replica keys (fixtures only)."""
    return [_key(f"{tag}-{i}") for i in range(n)]


def valid_value(value: str) -> bool:
    """The fuzzer's application validation hook."""
    return not value.startswith("INVALID")


@dataclass(frozen=True)
class Scenario:
    seed: int
    n: int
    byzantine: dict[int, tuple[str, ...]]
    schedule: FaultSchedule
    requests: tuple[tuple[float, int, int, str], ...]  # (time, client, rid, value)
    config: PBFTConfig
    liveness_bound: float

    @property
    def f(self) -> int:
        return max_faulty(self.n)

    @property
    def crashed_for_good(self) -> tuple[int, ...]:
        return tuple(sorted({c.node for c in self.schedule.crashes if c.end is None}))

    def describe(self) -> str:
        s = self.schedule
        return (
            f"seed={self.seed} n={self.n} byzantine={self.byzantine} "
            f"down-for-good={list(self.crashed_for_good)} gst={s.gst:.0f} loss={s.loss} "
            f"dup={s.dup} delay={s.delay} partitions={len(s.partitions)} "
            f"crashes={len(s.crashes)} requests={len(self.requests)} "
            f"K={self.config.checkpoint_interval} app-checkpoints={self.config.app_checkpoints}"
        )


@dataclass
class Outcome:
    scenario: Scenario
    safety: list[str] = field(default_factory=list)
    liveness: list[str] = field(default_factory=list)
    end_time: float = 0.0
    view_changes: int = 0
    max_view: int = 0
    trace_digest: str = ""
    net: Optional[SimNetwork] = None


def draw_scenario(seed: int, n: int) -> Scenario:
    rng = random.Random(seed)
    f = max_faulty(n)
    b = rng.choice([0] + [f] * 2 + list(range(1, f + 1))) if f else 0
    byz_nodes = rng.sample(range(n), b)
    if b and rng.random() < 0.5 and 0 not in byz_nodes:
        byz_nodes[0] = 0  # often make the first primary Byzantine
    byzantine = {
        i: tuple(sorted(rng.sample(BEHAVIOURS, rng.choice([1, 1, 2, 3])))) for i in sorted(byz_nodes)
    }
    rest = [i for i in range(n) if i not in byzantine]
    gst = rng.uniform(40, 400)
    crashes: list[Crash] = []
    for node in rng.sample(rest, rng.randint(0, f - b)):
        crashes.append(Crash(node, rng.uniform(0, gst), None))
    for _ in range(rng.choice([0, 0, 1, 2])):
        start = rng.uniform(0, gst)
        crashes.append(Crash(rng.randrange(n), start, rng.uniform(start, gst)))
    partitions = []
    for _ in range(rng.choice([0, 0, 1, 2])):
        start = rng.uniform(0, gst)
        group = frozenset(rng.sample(range(n), rng.randint(1, n - 1)))
        partitions.append(Partition(start, rng.uniform(start, gst), group))
    schedule = FaultSchedule(
        seed=seed,
        gst=gst,
        loss=rng.choice([0.0, 0.0, 0.05, 0.15, 0.3]),
        dup=rng.choice([0.0, 0.05, 0.2]),
        delay=(1.0, rng.choice([3.0, 10.0, 30.0])),
        stable_delay=(1.0, 3.0),
        partitions=tuple(partitions),
        crashes=tuple(crashes),
    )
    k = rng.choice([2, 4, 16])
    config = PBFTConfig(
        checkpoint_interval=k, log_window=2 * k, request_timeout=40.0, max_timeout=640.0,
        status_interval=10.0, idle_status_every=4,
        app_checkpoints=seed % 2 == 1,  # odd seeds: the simulated application signs checkpoints too
    )
    requests = []
    for rid in range(rng.randint(1, 6)):
        client = rng.randrange(2)
        requests.append((rng.uniform(0, gst + 60), client, rid, f"c{client}-r{rid}-{rng.getrandbits(32):08x}"))
    requests.sort()
    return Scenario(seed, n, byzantine, schedule, tuple(requests), config, liveness_bound=6000.0)


ReplicaFactory = Callable[..., Replica]


def run_scenario(sc: Scenario, replica_cls: ReplicaFactory = Replica, keep_net: bool = False) -> Outcome:
    """Run ``sc`` with honest replicas of class ``replica_cls`` and judge it."""
    n = sc.n
    keys = keys_for(n)
    pubs = [k.public_hex for k in keys]
    clients = [_key(f"client-{c}") for c in range(2)]
    byz_client = _key("client-byzantine")
    client_keys = {f"client-{c}": k.public_hex for c, k in enumerate(clients)}
    client_keys["client-byzantine"] = byz_client.public_hex
    rng = random.Random(sc.seed * 7919 + 1)
    nodes = []
    for i in range(n):
        rep = replica_cls(i, keys[i], pubs, validate=valid_value, client_keys=client_keys, config=sc.config)
        if i in sc.byzantine:
            rep = ByzantineReplica(rep, sc.byzantine[i], rng, byz_client, "client-byzantine")
        nodes.append(rep)
    net = SimNetwork(nodes, sc.schedule)
    for t, c, rid, value in sc.requests:
        net.submit_at(t, Request.make(f"client-{c}", rid, value, clients[c]), retry=40.0)

    correct = [i for i in range(n) if i not in sc.byzantine]
    live = [i for i in correct if i not in sc.crashed_for_good]
    needed = [(f"client-{c}", rid) for _t, c, rid, _v in sc.requests]
    last_request = max(t for t, *_ in sc.requests)
    start_checks = max(sc.schedule.gst, last_request)

    # A conflicting commit settles the run: stop there instead of waiting out the deadline
    # (diverged replicas never agree on a checkpoint again, so a planted bug would stall).
    first: dict[int, str] = {}
    conflict = [False]

    def watch(node: int, out: object, _now: float) -> None:
        if isinstance(out, Committed) and node in correct:
            conflict[0] |= first.setdefault(out.seq, out.digest) != out.digest

    net.on_output = watch

    def done() -> bool:
        if conflict[0]:
            return True
        if net.now < start_checks:
            return False
        for key in needed:
            by = net.executed_by.get(key)
            if by is None or any(i not in by for i in live):
                return False
        return True

    deadline = start_checks + sc.liveness_bound
    finished = net.run(deadline, stop=done)
    out = Outcome(sc, end_time=net.now, view_changes=net.view_changes, max_view=max(net.views))
    out.trace_digest = net.trace_digest
    if keep_net:
        out.net = net
    if not finished:
        for key in needed:
            missing = [i for i in live if i not in net.executed_by.get(key, {})]
            if missing:
                out.liveness.append(f"request {key} not executed by replicas {missing} by t={deadline:.0f}")
    out.safety = check_safety(net, correct, pubs)
    return out


def check_safety(net: SimNetwork, correct: list[int], pubs: list[str]) -> list[str]:
    problems: list[str] = []
    reference: dict[int, tuple[int, str]] = {}
    for i in correct:
        seen_keys: set = set()
        for pos, entry in enumerate(net.committed[i]):
            if entry.seq != pos + 1:
                problems.append(f"replica {i}: gap or reordering at position {pos + 1} (seq {entry.seq})")
                break
            ref = reference.setdefault(entry.seq, (i, entry.digest))
            if ref[1] != entry.digest:
                problems.append(
                    f"seq {entry.seq}: replica {ref[0]} executed {ref[1][:12]} but replica {i} executed {entry.digest[:12]}"
                )
            if not entry.noop:
                if entry.request.key in seen_keys:
                    problems.append(f"replica {i}: request {entry.request.key} executed twice")
                seen_keys.add(entry.request.key)
            cert = entry.certificate
            if not (entry_matches(cert, entry.seq, entry.request) and verify(cert, pubs)):
                problems.append(f"replica {i}: seq {entry.seq} has an invalid quorum certificate")
    # Conflicting commits first: they are the violations that matter most.
    return sorted(problems, key=lambda p: CONFLICT not in p)


#: Marker of a conflicting-commit problem in :func:`check_safety`'s output.
CONFLICT = "but replica"
