"""A sans-IO PBFT replica (Castro & Liskov, OSDI'99), in the style of h11 / etcd raft.

The replica owns no socket, thread, clock or random source. A driver feeds it
:meth:`Replica.submit` (client requests), :meth:`Replica.receive` (protocol messages)
and :meth:`Replica.on_timer` (a timer it asked for fired), after calling
:meth:`Replica.start` once. Each call returns a list of outputs
(:mod:`~bcsfl_flower.consensus.messages`): ``Send``/``Broadcast`` messages,
``Committed`` entries in sequence order without gaps, ``SetTimer``/``CancelTimer``
requests and ``ViewEntered`` notices.

Normal case: pre-prepare / prepare / commit with 2f+1 quorums, in-order execution,
request de-duplication by (client, rid), checkpoints every K sequence numbers with
low/high water marks and log truncation. The view change lives in
:mod:`~bcsfl_flower.consensus.viewchange`. Catch-up: a replica broadcasts a signed
``Status`` heartbeat; peers answer with the committed entries it lacks (each with its
commit quorum certificate, so it needs no trust in the peer), their stable checkpoint
proof, and the NEW-VIEW of the current view.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Optional

from ..crypto import SigningKey, sha256_hex
from .messages import (
    GENESIS_DIGEST, Broadcast, CatchUp, Checkpoint, Commit, Committed, CommittedEntry, Forward,
    NewView, Output, PreparedCert, Prepare, PrePrepare, Request, Send, SetTimer, CancelTimer,
    Signed, Status, ViewChange, check_signature, sign, signed_by,
)
from .quorum import QuorumCertificate, max_faulty, quorum_size
from .state import PBFTConfig, StableCheckpoint, Slot
from .checkpoint import CheckpointMixin
from .viewchange import NORMAL, VIEW_CHANGE, ViewChangeMixin

__all__ = ["PBFTConfig", "Replica", "StableCheckpoint", "NORMAL", "VIEW_CHANGE"]


class Replica(CheckpointMixin, ViewChangeMixin):
    """One PBFT replica.

    ``replica_keys`` are the public keys (hex) of all n replicas in index order;
    ``signing_key`` must be the one at ``index``. ``validate(value)`` (pure) vets the
    value of every client request and of every pre-prepare in the normal case: a
    refusal means the request is dropped, or the primary is suspected and a view change
    starts. With ``client_keys`` (client id -> public hex), requests must carry a valid
    client signature.
    """

    def __init__(
        self,
        index: int,
        signing_key: SigningKey,
        replica_keys: Sequence[str],
        *,
        validate: Optional[Callable[[str], bool]] = None,
        client_keys: Optional[Mapping[str, str]] = None,
        config: Optional[PBFTConfig] = None,
    ) -> None:
        self.keys = tuple(replica_keys)
        self.n = len(self.keys)
        if not 0 <= index < self.n or self.keys[index] != signing_key.public_hex:
            raise ValueError("signing_key is not the key of replica `index`")
        self.index = index
        self.f = max_faulty(self.n)
        self.quorum = quorum_size(self.n)
        self.prepare_threshold = 2 * self.f  # matching prepares from distinct backups
        self.commit_threshold = self.quorum
        self._key = signing_key
        self.validate = validate
        self.client_keys = dict(client_keys) if client_keys is not None else None
        self.cfg = config or PBFTConfig()
        if self.cfg.log_window < self.cfg.checkpoint_interval:
            raise ValueError("log_window must be at least checkpoint_interval")
        self.view = 0
        self.status = NORMAL
        self.h = 0  # low water mark = sequence number of the stable checkpoint
        self._stable_digest = GENESIS_DIGEST
        self._stable_proof: tuple[Checkpoint, ...] = ()
        self.last_executed = 0
        self._state_digest = GENESIS_DIGEST
        self._log: list[Committed] = []
        self._executed_keys: dict[tuple[str, int], int] = {}
        self._ready: dict[int, tuple] = {}
        self._slots: dict[tuple[int, int], Slot] = {}
        self._prepared_certs: dict[int, PreparedCert] = {}
        self._future_pps: dict[tuple[int, int], PrePrepare] = {}
        self._checkpoints: dict[int, dict[str, dict[int, Checkpoint]]] = {}
        self._own_checkpoint: Optional[Checkpoint] = None
        self._pending: dict[tuple[str, int], Request] = {}
        self._assigned: dict[tuple[str, int], int] = {}
        self._next_seq = 0
        self._vcs: dict[int, dict[int, ViewChange]] = {}
        self._latest_vc: dict[int, int] = {}
        self._my_vc: Optional[ViewChange] = None
        self._new_view_msg: Optional[NewView] = None
        self._nv_sent = -1
        self._timeout = self.cfg.request_timeout
        self._timers: dict[str, int] = {}
        self._timer_seq = 0
        self._peer_exec: dict[int, int] = {}
        self._peer_stalls: dict[int, int] = {}  # statuses in a row without progress
        self._activity = False
        self._idle_ticks = 0
        self._out: list[Output] = []
        self._sig_memo: dict[bytes, bytes] = {}
        self._handlers = {
            PrePrepare: self._on_pre_prepare, Prepare: self._on_prepare, Commit: self._on_commit,
            Checkpoint: self._on_checkpoint, ViewChange: self._on_view_change,
            NewView: self._on_new_view, Forward: self._on_forward, Status: self._on_status,
            CatchUp: self._on_catch_up,
        }

    # ============================================================ public API

    @property
    def primary(self) -> int:
        return self.view % self.n

    @property
    def is_primary(self) -> bool:
        return self.primary == self.index

    @property
    def high_water_mark(self) -> int:
        return self.h + self.cfg.log_window

    def start(self) -> list[Output]:
        """Arm the heartbeat; call once before anything else."""
        self._set_timer("status", self.cfg.status_interval)
        return self._flush()

    def submit(self, request: Request) -> list[Output]:
        """A client hands ``request`` to this replica."""
        if isinstance(request, Request):
            self._on_request(request, from_client=True)
        return self._flush()

    def receive(self, msg: Signed) -> list[Output]:
        """A protocol message arrived; unsigned, forged or outsider messages are dropped."""
        handler = self._handlers.get(type(msg))
        if handler is not None and self._authentic(msg):
            handler(msg)
        return self._flush()

    def on_timer(self, timer_id: int) -> list[Output]:
        """The timer ``timer_id`` (from a ``SetTimer``) fired; stale ids are ignored."""
        kind = next((k for k, t in self._timers.items() if t == timer_id), None)
        if kind is not None:
            del self._timers[kind]
            if kind == "status":
                self._on_status_timer()
            elif kind == "request":
                if self.status == NORMAL:
                    self._start_view_change(self.view + 1)
            elif kind == "view-change":
                self._on_vc_timer()
        return self._flush()

    def install(self, entries: Iterable[CommittedEntry]) -> list[Output]:
        """State transfer: execute certified committed entries this replica lacks."""
        self._take_entries(entries)
        return self._flush()

    def committed_log(self) -> list[Committed]:
        """Every executed sequence number so far, from 1, with its certificate."""
        return list(self._log)

    def committed_entries(self, after: int = 0) -> tuple[CommittedEntry, ...]:
        """The log from ``after + 1`` in the self-certifying form :meth:`install` takes."""
        return tuple(CommittedEntry(c.seq, c.request, c.certificate) for c in self._log[after:])

    def stable_checkpoint(self) -> StableCheckpoint:
        return StableCheckpoint(self.h, self._stable_digest, self._stable_proof)

    @property
    def state_digest(self) -> str:
        """Hash chain over every executed (seq, digest)."""
        return self._state_digest

    # ============================================================ plumbing

    def _flush(self) -> list[Output]:
        out, self._out = self._out, []
        return out

    def _emit(self, output: Output) -> None:
        self._out.append(output)

    def _signed(self, msg: Signed) -> Signed:
        return sign(msg, self._key, self._sig_memo)

    def _broadcast(self, msg: Signed) -> None:
        self._out.append(Broadcast(msg))

    def _send(self, to: int, msg: Signed) -> None:
        if to != self.index:
            self._out.append(Send(to, msg))

    def _authentic(self, msg: Signed) -> bool:
        return signed_by(msg, self.keys)

    def _set_timer(self, kind: str, delay: float) -> None:
        self._timer_seq += 1
        self._timers[kind] = self._timer_seq
        self._out.append(SetTimer(self._timer_seq, kind, delay))

    def _cancel_timer(self, kind: str) -> None:
        tid = self._timers.pop(kind, None)
        if tid is not None:
            self._out.append(CancelTimer(tid, kind))

    def _slot(self, view: int, seq: int) -> Slot:
        slot = self._slots.get((view, seq))
        if slot is None:
            slot = self._slots[(view, seq)] = Slot()
        return slot

    def _in_window(self, seq: int) -> bool:
        return self.h < seq <= self.h + self.cfg.log_window

    # ============================================================ requests

    def _request_ok(self, req: Request) -> bool:
        if not isinstance(req, Request) or not isinstance(req.value, str):
            return False
        if self.client_keys is not None:
            pub = self.client_keys.get(req.client)
            if pub is None or not check_signature(pub, req.sig, req.body()):
                return False
        if self.validate is not None:
            try:
                return bool(self.validate(req.value))
            except Exception:  # noqa: BLE001 - a crashing hook counts as a refusal
                return False
        return True

    def _on_request(self, req: Request, from_client: bool) -> None:
        if req.key in self._executed_keys or not self._request_ok(req):
            return
        self._pending.setdefault(req.key, req)
        if self.status == NORMAL:
            if self.is_primary:
                self._try_assign()
            elif from_client:
                self._forward(req)
        self._update_request_timer()

    def _forward(self, req: Request) -> None:
        if self.cfg.forward_requests and not self.is_primary:
            self._send(self.primary, self._signed(Forward(req, self.index)))

    def _on_forward(self, msg: Forward) -> None:
        self._on_request(msg.request, from_client=False)

    def _update_request_timer(self, restart: bool = False) -> None:
        if self.status != NORMAL or self.is_primary or not self._pending:
            self._cancel_timer("request")
        elif restart or "request" not in self._timers:
            self._set_timer("request", self._timeout)

    def _try_assign(self) -> None:
        """Primary: give the next sequence numbers to pending, unassigned requests."""
        if self.status != NORMAL or not self.is_primary:
            return
        for key, req in list(self._pending.items()):
            if self._next_seq >= self.high_water_mark:
                break
            if key in self._assigned or key in self._executed_keys:
                continue
            self._next_seq += 1
            pp = self._signed(PrePrepare(self.view, self._next_seq, req.digest, req, self.index))
            self._assigned[key] = self._next_seq
            slot = self._slot(self.view, self._next_seq)
            slot.pp = pp
            self._broadcast(pp)
            self._check_slot(self.view, self._next_seq, slot)

    # ============================================================ normal case

    def _on_pre_prepare(self, pp: PrePrepare) -> None:
        v = pp.view
        if pp.sender != v % self.n or pp.sender == self.index or v < self.view:
            return
        if v > self.view or self.status != NORMAL:
            if v <= self.view + self.n + 2 and self.h < pp.seq <= self.h + 2 * self.cfg.log_window:
                self._future_pps.setdefault((v, pp.seq), pp)
            return
        if not self._in_window(pp.seq):
            return
        slot = self._slot(v, pp.seq)
        if slot.pp is not None:
            if slot.pp.digest != pp.digest:  # two signed proposals for one slot
                self._start_view_change(self.view + 1)
            return
        req = pp.request
        if req is None or pp.digest != req.digest or not self._request_ok(req):
            self._start_view_change(self.view + 1)  # invalid proposal: suspect the primary
            return
        if self._assigned.get(req.key, pp.seq) != pp.seq:
            self._start_view_change(self.view + 1)  # one request ordered twice in a view
            return
        self._assigned[req.key] = pp.seq
        slot.pp = pp
        if req.key not in self._executed_keys:
            self._pending.setdefault(req.key, req)
        self._send_prepare(slot, pp)
        self._check_slot(v, pp.seq, slot)
        self._update_request_timer()

    def _send_prepare(self, slot: Slot, pp: PrePrepare) -> None:
        if pp.sender == self.index or self.index in slot.prepares:
            return
        p = self._signed(Prepare(pp.view, pp.seq, pp.digest, self.index))
        slot.prepares[self.index] = p
        self._broadcast(p)

    def _on_prepare(self, p: Prepare) -> None:
        v = p.view
        if p.sender == self.index or p.sender == v % self.n:
            return
        if v < self.view or v > self.view + self.n + 2 or not self._in_window(p.seq):
            return
        slot = self._slot(v, p.seq)
        slot.prepares.setdefault(p.sender, p)
        if v == self.view and self.status == NORMAL:
            self._check_slot(v, p.seq, slot)

    def _on_commit(self, c: Commit) -> None:
        v = c.view
        if c.sender == self.index or v > self.view + self.n + 2 or not self._in_window(c.seq):
            return
        slot = self._slots.get((v, c.seq)) if v < self.view else self._slot(v, c.seq)
        if slot is None:
            return
        slot.commits.setdefault(c.sender, c)
        self._check_slot(v, c.seq, slot)

    def _is_prepared(self, slot: Slot, pp: PrePrepare) -> list[Prepare]:
        """Matching prepares from distinct backups (enough of them = prepared)."""
        return [p for s, p in slot.prepares.items() if p.digest == pp.digest and s != pp.sender]

    def _check_slot(self, v: int, seq: int, slot: Slot) -> None:
        pp = slot.pp
        if pp is None:
            return
        d = pp.digest
        if not slot.prepared:
            backups = self._is_prepared(slot, pp)
            if len(backups) < self.prepare_threshold:
                return
            slot.prepared = True
            cur = self._prepared_certs.get(seq)
            if cur is None or cur.pre_prepare.view < v:
                backups.sort(key=lambda p: p.sender)
                self._prepared_certs[seq] = PreparedCert(pp, tuple(backups[: 2 * self.f]))
        if not slot.sent_commit and v == self.view and self.status == NORMAL:
            slot.sent_commit = True
            c = self._signed(Commit(v, seq, d, self.index))
            slot.commits[self.index] = c
            self._broadcast(c)
        if slot.committed:
            return
        matching = [c for c in slot.commits.values() if c.digest == d]
        if len(matching) < self.commit_threshold:
            return
        slot.committed = True
        matching.sort(key=lambda c: c.sender)
        cert = QuorumCertificate(v, seq, d, tuple(matching[: self.quorum]))
        if seq > self.last_executed and seq not in self._ready:
            self._ready[seq] = (v, d, pp.request, cert)
            self._execute_ready()

    def _execute_ready(self) -> None:
        executed_pending = False
        while self.last_executed + 1 in self._ready:
            s = self.last_executed + 1
            v, d, req, cert = self._ready.pop(s)
            noop = req is None or req.key in self._executed_keys
            if not noop:
                self._executed_keys[req.key] = s
            self._state_digest = sha256_hex(f"{self._state_digest}|{s}|{d}".encode())
            entry = Committed(s, v, d, req, noop, cert)
            self._log.append(entry)
            self.last_executed = s
            self._activity = True
            self._emit(entry)
            if req is not None and self._pending.pop(req.key, None) is not None:
                executed_pending = True
                if self.status == NORMAL:
                    self._timeout = self.cfg.request_timeout
            if s % self.cfg.checkpoint_interval == 0:
                self._take_checkpoint(s)
        if executed_pending:
            self._update_request_timer(restart=True)
