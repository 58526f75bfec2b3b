"""A sans-IO PBFT replica (Castro & Liskov, "Practical Byzantine Fault Tolerance", OSDI
1999; sections are that paper's), in the style of h11 / etcd raft: no socket, thread, clock
or random source. A driver calls :meth:`Replica.start` once, then feeds ``submit``,
``receive``, ``on_timer`` and the answers to its checkpoint outputs; each returns
:mod:`.outputs`. :class:`Replica` is one dispatcher over small state objects (see the
package docstring) that carries out what crosses them: the normal case of section 4.2,
a checkpoint becoming stable (4.3), entering a view (4.4).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import ClassVar, Optional

from ..crypto import SigningKey
from .bodies import RequestBodies
from .checkpoint import CheckpointLog, Heartbeat
from .execution import ExecutionLog
from .limits import message_bounds
from .messages import (
    CatchUp, Checkpoint, Commit, CommittedEntry, Forward, NewView, Prepare, PrePrepare,
    Request, RequestBody, RequestFetch, Signed, StateProof, Status, ViewChange, signed_by,
)
from .outbox import Outbox
from .outputs import Committed, Output, ViewEntered
from .quorum import max_faulty, quorum_size
from .requests import RequestQueue
from .slots import Slot, SlotLog
from .state import PBFTConfig, ReplicaStatus, StableCheckpoint, TimerKind
from .transfer import StateTransfer
from .viewchange import NewViewPlan, ViewChangeState, digest_ok, plan_new_view

__all__ = ["PBFTConfig", "Replica", "ReplicaStatus", "StableCheckpoint", "TimerKind", "NORMAL", "VIEW_CHANGE"]

NORMAL = ReplicaStatus.NORMAL
VIEW_CHANGE = ReplicaStatus.VIEW_CHANGE


class Replica:
    """One PBFT replica.

    ``replica_keys`` are the public keys (hex) of all n replicas in index order;
    ``signing_key`` must be the one at ``index``. ``validate(value)`` (pure; default None:
    every value is accepted) vets the value of every client request and of every
    pre-prepare in the normal case: a refusal means the request is dropped, or the
    primary is suspected and a view change starts. With ``client_keys`` (client id ->
    public hex; default None: not checked), requests must carry a valid client signature.
    ``config`` defaults to ``PBFTConfig()``. ``initial`` (default None: the genesis) is
    a persisted stable checkpoint (``Stabilised``) to start from, its state installed.
    """

    #: Computes O for a NEW-VIEW (sent or checked); :mod:`.bugs` plants a wrong one.
    planner: ClassVar[Callable[[Sequence[ViewChange]], NewViewPlan]] = staticmethod(plan_new_view)

    def __init__(
        self,
        index: int,
        signing_key: SigningKey,
        replica_keys: Sequence[str],
        *,
        validate: Optional[Callable[[str], bool]] = None,
        client_keys: Optional[Mapping[str, str]] = None,
        config: Optional[PBFTConfig] = None,
        initial: Optional[StableCheckpoint] = None,
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
        self.validate = validate
        self.client_keys = dict(client_keys) if client_keys is not None else None
        self.cfg = cfg = config or PBFTConfig()
        if cfg.log_window < cfg.checkpoint_interval:
            raise ValueError("log_window must be at least checkpoint_interval")
        self.view = 0
        self.status = ReplicaStatus.NORMAL
        self.outbox = Outbox(signing_key, index)
        self.outbox.bounds = message_bounds(cfg, self.n)
        self.requests = RequestQueue(
            self.outbox, index, cfg.forward_requests, self.client_keys, validate, cfg.max_request_bytes
        )
        self.slots = SlotLog(self.outbox, index)
        self.execution = ExecutionLog(cfg.dedup_window, cfg.dedup_clients)
        self.bodies = RequestBodies(self.outbox, index, self.n, self.f, self.slots, self.execution, self._execute_ready)
        self.checkpoints = CheckpointLog(self.outbox, index, cfg.checkpoint_interval, cfg.log_window, self.quorum)
        self.transfer = StateTransfer(
            self.outbox, self.keys, cfg.app_checkpoints, cfg.catchup_batch, self.checkpoints, self.execution,
            self.slots, self._stabilised, self._execute_ready,
        )
        self.heartbeat = Heartbeat(self.outbox, index, cfg)
        self.view_change = ViewChangeState(self.outbox, index, self.keys, cfg.log_window, cfg.request_timeout, self.planner)
        self._handlers: dict[type, Callable[..., None]] = {
            PrePrepare: self._on_pre_prepare, Prepare: self._on_prepare, Commit: self._on_commit,
            Checkpoint: self.transfer.on_checkpoint, ViewChange: self._on_view_change,
            NewView: self._on_new_view, Status: self._on_status,
            Forward: lambda m: self._on_request(m.request, from_client=False),  # a relayed request (4.1)
            CatchUp: self.transfer.on_catch_up, StateProof: self.transfer.on_state_proof,
            RequestFetch: self.bodies.on_fetch, RequestBody: self.bodies.on_body,
        }
        self._timer_handlers: dict[TimerKind, Callable[[], None]] = {
            TimerKind.STATUS: self._on_status_timer, TimerKind.REQUEST: self._on_request_timer,
            TimerKind.VIEW_CHANGE: self._on_view_change_timer,
        }
        if initial is not None:
            self.state_transferred(initial)

    # ============================================================ public API

    @property
    def primary(self) -> int:
        return self.view % self.n

    @property
    def is_primary(self) -> bool:
        return self.primary == self.index

    @property
    def h(self) -> int:
        """The low water mark: sequence number of the stable checkpoint."""
        return self.checkpoints.low

    @property
    def high_water_mark(self) -> int:
        return self.checkpoints.high

    @property
    def last_executed(self) -> int:
        return self.execution.last_executed

    @property
    def state_digest(self) -> str:
        """Hash chain over every executed (seq, digest)."""
        return self.execution.state_digest

    def start(self) -> list[Output]:
        """Arm the heartbeat; call once before anything else."""
        self.heartbeat.start()
        return self.outbox.flush()

    def submit(self, request: Request) -> list[Output]:
        """A client hands ``request`` to this replica."""
        if isinstance(request, Request):
            self._on_request(request, from_client=True)
        return self.outbox.flush()

    def receive(self, msg: Signed) -> list[Output]:
        """A protocol message arrived; unsigned, forged or outsider messages are dropped."""
        handler = self._handlers.get(type(msg))
        if handler is not None and signed_by(msg, self.keys):
            handler(msg)
        return self.outbox.flush()

    def on_timer(self, timer_id: int) -> list[Output]:
        """The timer ``timer_id`` (from a ``SetTimer``) fired; stale ids are ignored."""
        kind = self.outbox.fired(timer_id)
        if kind is not None:
            self._timer_handlers[kind]()
        return self.outbox.flush()

    def install(self, entries: Iterable[CommittedEntry]) -> list[Output]:
        """State transfer: execute certified committed entries this replica lacks."""
        self.transfer.take_entries(entries)
        return self.outbox.flush()

    def checkpoint_ready(self, seq: int, app_digest: str) -> list[Output]:
        """The driver's answer to ``CheckpointDue(seq)``: its state digest there."""
        self.transfer.ready(seq, app_digest)
        return self.outbox.flush()

    def state_transferred(self, checkpoint: StableCheckpoint) -> list[Output]:
        """The driver installed the state at ``checkpoint`` (from ``FetchState``): resume
        from there. ValueError when its 2f+1 signatures do not check out."""
        self.transfer.install(checkpoint)
        self.requests.drop(self.execution.executed)
        self.heartbeat.announce(self.view, self.status == NORMAL, self.last_executed, self.h)
        return self.outbox.flush()

    def committed_log(self) -> list[Committed]:
        """The executed entries still held (above the stable checkpoint), with certificates."""
        return self.execution.committed()

    def committed_entries(self, after: int = 0) -> tuple[CommittedEntry, ...]:
        """The log from ``after + 1`` in the self-certifying form :meth:`install` takes."""
        return self.execution.entries(after)

    def stable_checkpoint(self) -> StableCheckpoint:
        return self.checkpoints.stable

    # ============================================================ requests (4.1, 4.4)

    def _on_request(self, req: Request, from_client: bool) -> None:
        if self.execution.executed(req.key) or not self.requests.ok(req):
            return
        self.requests.add(req)
        if self.status == NORMAL:
            if self.is_primary:
                self._try_assign()
            elif from_client:
                self.requests.forward(req, self.primary)
        self._update_request_timer()

    def _update_request_timer(self, restart: bool = False) -> None:
        backup = self.status == NORMAL and not self.is_primary
        self.requests.update_timer(backup, self.view_change.timeout, restart)

    def _on_request_timer(self) -> None:
        if self.status == NORMAL:
            self.view_change.request_timed_out(self.cfg.max_timeout)
            self._start_view_change(self.view + 1)

    def _try_assign(self) -> None:
        """Primary: give the next sequence numbers to pending, unassigned requests."""
        if self.status != NORMAL or not self.is_primary:
            return
        for key, req in self.requests.pending():
            if self.requests.next_seq >= self.high_water_mark:
                break
            done = self.requests.assignment(key) is not None or self.execution.executed(key)
            if done or self.slots.ordered(req.digest, self.view):  # or by digest in a NEW-VIEW's O
                continue
            seq = self.requests.assign_next(key)
            self._check_slot(self.view, seq, self.slots.propose(self.view, seq, req))

    # ============================================================ normal case (4.2)

    def _on_pre_prepare(self, pp: PrePrepare) -> None:
        v, req = pp.view, pp.request
        if pp.sender != v % self.n or pp.sender == self.index or v < self.view:
            return
        if req is None or not digest_ok(pp):  # altered on the way (or a NEW-VIEW's null): drop
            return  # the copy, never suspect its signer (see PrePrepare's docstring)
        if v > self.view or self.status != NORMAL:
            if v <= self.view + self.n + 2 and self.checkpoints.in_window(pp.seq, 2):
                self.slots.buffer(pp)
            return
        if not self.checkpoints.in_window(pp.seq):
            return
        slot = self.slots.slot(v, pp.seq)
        if slot.pp is not None:
            if slot.pp.digest != pp.digest:  # two signed proposals for one slot
                self._start_view_change(self.view + 1)
            return
        assigned = self.requests.assignment(req.key)
        # The signed digest covers the request and its client signature: this is what the
        # primary proposed. Invalid, or one request ordered twice in a view: suspect it.
        if not self.requests.ok(req) or assigned not in (None, pp.seq):
            self._start_view_change(self.view + 1)
            return
        self.requests.assign(req.key, pp.seq)
        if not self.execution.executed(req.key):
            self.requests.add(req)
        self._check_slot(v, pp.seq, self.slots.accept(pp))
        self._update_request_timer()

    def _on_prepare(self, p: Prepare) -> None:
        slot = self.slots.add_prepare(p, self.view, self.n, self.checkpoints.in_window(p.seq))
        if slot is not None and p.view == self.view and self.status == NORMAL:
            self._check_slot(p.view, p.seq, slot)

    def _on_commit(self, c: Commit) -> None:
        slot = self.slots.add_commit(c, self.view, self.n, self.checkpoints.in_window(c.seq))
        if slot is not None:
            self._check_slot(c.view, c.seq, slot)

    def _check_slot(self, v: int, seq: int, slot: Slot) -> None:
        """Prepared -> send the commit; committed-local -> queue for execution."""
        pp = slot.pp
        if pp is None or not self.slots.prepared(v, seq, slot, self.prepare_threshold, keep=2 * self.f):
            return
        if v == self.view and self.status == NORMAL:
            self.slots.commit(v, seq, slot)
        cert = slot.certify(v, seq, self.commit_threshold, self.quorum)
        body = self.bodies.of(seq, pp)  # a NEW-VIEW's pre-prepare has none: fetched by digest
        if cert is not None and self.execution.ready(seq, v, pp.digest, body, cert):
            self._execute_ready()

    def _execute_ready(self) -> None:
        executed_pending = False
        while self.transfer.target is None and (entry := self.execution.execute_next()) is not None:
            s, req = entry.seq, entry.request
            self.heartbeat.executed()
            self.outbox.emit(entry)
            if req is not None and self.requests.done(req.key):
                executed_pending = True
                if self.status == NORMAL:
                    self.view_change.reset_timeout()
            if s % self.cfg.checkpoint_interval == 0:
                self.transfer.executed(s)
        if executed_pending:
            self._update_request_timer(restart=True)

    # ============================================================ checkpoints (4.3), heartbeat

    def _stabilised(self, s: int) -> None:
        """Checkpoint ``s`` became stable: truncate the log; the window slid."""
        self.transfer.stabilised(s)
        self.requests.stable(s, primary=self.status == NORMAL and self.is_primary)
        if self.status == NORMAL and self.is_primary:
            self._try_assign()

    def _on_status_timer(self) -> None:
        normal = self.status == NORMAL
        busy = bool(self.requests) or not normal or self.last_executed < self.h
        self.heartbeat.tick(self.view, normal, self.last_executed, self.h, busy)
        self.transfer.remind()
        self.bodies.retry()
        if not normal:
            self.view_change.retransmit()
        self.checkpoints.retransmit()

    def _on_status(self, st: Status) -> None:
        if st.sender == self.index:
            return
        self.heartbeat.observe(st, self.execution, self.checkpoints)
        if self.status == NORMAL and (st.view < self.view or (st.view == self.view and not st.normal)):
            self.view_change.relay_new_view(st.sender)

    # ============================================================ view change (4.4)

    def _start_view_change(self, new_view: int) -> None:
        if new_view <= self.view:
            return
        self.view = new_view
        self.status = VIEW_CHANGE
        self.requests.stop_timer()
        self.view_change.start(new_view, self.checkpoints.stable, self.slots.prepared_above(self.h))
        self._check_view_change_progress()

    def _on_view_change_timer(self) -> None:
        if self.status != VIEW_CHANGE:
            return
        self.view_change.back_off(self.cfg.max_timeout)
        self._start_view_change(self.view + 1)

    def _on_view_change(self, vc: ViewChange) -> None:
        if vc.sender == self.index:
            return
        if vc.view < self.view or (vc.view == self.view and self.status == NORMAL):
            if self.status == NORMAL:  # the sender is behind: hand it our NEW-VIEW
                self.view_change.relay_new_view(vc.sender)
            return
        if not self.view_change.record(vc, self.view):
            return
        ahead = self.view_change.views_ahead(self.view)
        if len(ahead) >= self.f + 1:
            self._start_view_change(min(ahead))
        self._check_view_change_progress()

    def _check_view_change_progress(self) -> None:
        if self.status == VIEW_CHANGE and self.view_change.progress(self.view):
            self._install_new_view(*self.view_change.send_new_view(self.view))

    def _on_new_view(self, nv: NewView) -> None:
        if nv.view < self.view or (nv.view == self.view and self.status == NORMAL):
            return
        plan = self.view_change.check(nv)
        if plan is not None:  # else the view-change timer moves us on
            self._install_new_view(nv, plan)

    def _install_new_view(self, nv: NewView, plan: NewViewPlan) -> None:
        w = nv.view
        self.view = w
        self.status = VIEW_CHANGE  # no ordering while the log is being rebuilt
        if plan.min_s > self.h and self.checkpoints.advance(plan.min_s, plan.stable_digest, plan.stable_proof):
            self._stabilised(plan.min_s)
        self.status = NORMAL
        self.view_change.installed(nv)
        primary = w % self.n
        self.requests.new_view(next_seq=max(plan.max_s, self.h) if primary == self.index else None)
        self.slots.drop_views_below(w)
        self.outbox.emit(ViewEntered(w, primary))
        for pp in (p for p in nv.pre_prepares if p.seq > self.h):
            body = self.slots.body(pp.digest) or self.requests.find(pp.digest)  # O is by digest
            if body is not None:
                self.requests.assign(body.key, pp.seq)
                self.slots.keep_body(pp.seq, body)
            self.slots.accept(pp)
        for key in self.slots.buffered_up_to(w):
            pp = self.slots.take_buffered(key)  # None: a checkpoint an earlier replay made stable truncated it
            if pp is not None and key[0] == w:
                self._on_pre_prepare(pp)
        for s, slot in self.slots.of_view(w):
            if self.status == NORMAL and self.view == w:
                self._check_slot(w, s, slot)
        if self.status != NORMAL or self.view != w:
            return  # a buffered pre-prepare exposed the new primary
        if primary == self.index:
            self._try_assign()
        else:
            for key, req in self.requests.pending():
                if self.requests.assignment(key) is None:
                    self.requests.forward(req, primary)
        self._update_request_timer(restart=True)
