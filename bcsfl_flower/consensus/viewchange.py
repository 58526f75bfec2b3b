"""View change and new view (Castro & Liskov, "Practical Byzantine Fault Tolerance",
OSDI 1999, section 4.4; the liveness rules of section 4.5.2).

Pure checks (:func:`valid_view_change`, :func:`plan_new_view`, :func:`valid_new_view`)
plus :class:`ViewChangeState`, what a replica collects while changing views: the
VIEW-CHANGE messages by view and sender, the latest view each replica is known to want,
its own VIEW-CHANGE, the NEW-VIEW it installed, and the current timeout. The replica
(:mod:`~.replica`) routes messages and timers to it and acts on what it answers.

Safety across views rests on three rules implemented here:

* a VIEW-CHANGE carries the sender's stable checkpoint (with 2f+1 signed checkpoint
  messages) and its P set: for every sequence number above the checkpoint that prepared
  at the sender, the pre-prepare and 2f matching prepares of the *highest* view in which
  it prepared. Pre-prepares here and in a NEW-VIEW carry no request (the signature
  covers its digest): a replica fetches a body it lacks (:mod:`.bodies`);
* the new primary computes O from 2f+1 valid view-changes: min-s is the highest stable
  checkpoint among them, max-s the highest prepared sequence number; every number in
  (min-s, max-s] gets the digest of the highest-view certificate for it, or the null
  request when no certificate names it;
* every backup recomputes O from the same 2f+1 view-changes and refuses a NEW-VIEW whose
  pre-prepares differ.

Liveness (section 4.5.2): a replica that sent VIEW-CHANGE(v) starts its view-change timer
only once 2f+1 replicas are known to be at view v or beyond; when the timer expires it
moves to v+1 with the timeout doubled (capped). f+1 replicas ahead pull a replica
forward to the smallest of their views. View-changes are retransmitted on the status
heartbeat and a replica that is already in the new view relays the NEW-VIEW to laggards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

from .messages import (
    GENESIS_DIGEST,
    NULL_DIGEST,
    Checkpoint,
    NewView,
    PreparedCert,
    PrePrepare,
    Request,
    ViewChange,
    cache_enabled,
    signed_by,
)
from .outbox import Outbox
from .quorum import max_faulty, quorum_size
from .state import StableCheckpoint, TimerKind

__all__ = [
    "MAX_VIEWS_AHEAD", "NewViewPlan", "ViewChangeState", "digest_ok", "plan_new_view",
    "valid_checkpoint_proof", "valid_new_view", "valid_view_change",
]

#: View-change messages further ahead than this many views are not stored.
MAX_VIEWS_AHEAD = 64


def digest_ok(pp: PrePrepare) -> bool:
    """The pre-prepare's digest is that of the request it carries (or the null one).

    The request digest covers the client's signature, so a True answer means the carried
    request is, byte for byte, the one the pre-prepare's signer hashed."""
    req = pp.request
    if req is None:
        return pp.digest == NULL_DIGEST
    return isinstance(req, Request) and isinstance(req.sig, bytes) and pp.digest == req.digest


def valid_checkpoint_proof(
    seq: int, digest: str, proof: Sequence[Checkpoint], keys: Sequence[str],
    app_digest: Optional[str] = None, clients_digest: Optional[str] = None,
) -> bool:
    """2f+1 distinct replicas signed one Checkpoint(seq, digest, app, clients); seq 0 is the
    genesis. ``app_digest`` / ``clients_digest`` (default None: the proof's own) must match."""
    if seq == 0:
        return digest == GENESIS_DIGEST and app_digest in (None, "")
    if not proof or not isinstance(proof[0], Checkpoint):
        return False
    app = proof[0].app_digest if app_digest is None else app_digest
    clients = proof[0].clients_digest if clients_digest is None else clients_digest
    signers: set[int] = set()
    for c in proof:
        if not isinstance(c, Checkpoint) or (c.seq, c.state_digest, c.app_digest, c.clients_digest) != (
            seq, digest, app, clients
        ):
            return False
        if c.sender in signers:
            continue
        if not signed_by(c, keys):
            return False
        signers.add(c.sender)
    return len(signers) >= quorum_size(len(keys))


def valid_view_change(vc: ViewChange, keys: Sequence[str], log_window: int) -> bool:
    """Signature, checkpoint proof and every prepared certificate of ``vc`` check out.

    The verdict is a pure function of (message, keys, window) and is remembered on the
    immutable message object (a view-change is retransmitted and nested in new-views).
    """
    if not isinstance(vc, ViewChange):
        return False
    if not cache_enabled():
        return _valid_view_change(vc, keys, log_window)
    memo = vc.__dict__.setdefault("_vc_ok", {})
    k = (tuple(keys), log_window)
    ok = memo.get(k)
    if ok is None:
        ok = memo[k] = _valid_view_change(vc, keys, log_window)
    return ok


def _valid_view_change(vc: ViewChange, keys: Sequence[str], log_window: int) -> bool:
    n = len(keys)
    f = max_faulty(n)
    if vc.view <= 0 or vc.stable_seq < 0:
        return False
    if not signed_by(vc, keys):
        return False
    if not valid_checkpoint_proof(vc.stable_seq, vc.stable_digest, vc.checkpoint_proof, keys):
        return False
    seen: set[int] = set()
    for cert in vc.prepared:
        pp = cert.pre_prepare
        if not isinstance(pp, PrePrepare) or pp.seq in seen:
            return False
        if not vc.stable_seq < pp.seq <= vc.stable_seq + log_window:
            return False
        if not 0 <= pp.view < vc.view or pp.sender != pp.view % n or pp.request is not None:
            return False
        if not signed_by(pp, keys):
            return False
        backups: set[int] = set()
        for p in cert.prepares:
            if (p.view, p.seq, p.digest) != (pp.view, pp.seq, pp.digest) or p.sender == pp.sender:
                return False
            if p.sender in backups:
                continue
            if not signed_by(p, keys):
                return False
            backups.add(p.sender)
        if len(backups) < 2 * f:
            return False
        seen.add(pp.seq)
    return True


@dataclass(frozen=True)
class NewViewPlan:
    """What a NEW-VIEW must contain, computed from its view-changes."""

    min_s: int
    stable_digest: str
    stable_proof: tuple[Checkpoint, ...]
    max_s: int
    entries: tuple[tuple[int, str], ...]  # (seq, digest) of O


def plan_new_view(vcs: Sequence[ViewChange]) -> NewViewPlan:
    """Deterministic O computation from (already validated) view-changes."""
    best = max(vcs, key=lambda vc: (vc.stable_seq, -vc.sender))
    min_s = best.stable_seq
    chosen: dict[int, PrePrepare] = {}
    for vc in vcs:
        for cert in vc.prepared:
            pp = cert.pre_prepare
            if pp.seq <= min_s:
                continue
            cur = chosen.get(pp.seq)
            # Highest view wins; two certificates of one view cannot disagree unless more
            # than f replicas are faulty, but break the tie deterministically anyway.
            if cur is None or pp.view > cur.view or (pp.view == cur.view and pp.digest < cur.digest):
                chosen[pp.seq] = pp
    max_s = max(chosen, default=min_s)
    entries = tuple((s, chosen[s].digest if s in chosen else NULL_DIGEST) for s in range(min_s + 1, max_s + 1))
    return NewViewPlan(min_s, best.stable_digest, best.checkpoint_proof, max_s, entries)


def valid_new_view(
    nv: NewView,
    keys: Sequence[str],
    log_window: int,
    planner: Callable[[Sequence[ViewChange]], NewViewPlan] = plan_new_view,
) -> Optional[NewViewPlan]:
    """The plan when ``nv`` is a correct NEW-VIEW from the view's primary, else None.

    ``planner`` recomputes O from the view-changes (a hook for planted-bug replicas).
    """
    n = len(keys)
    if not isinstance(nv, NewView) or nv.view <= 0 or nv.sender != nv.view % n:
        return None
    if not signed_by(nv, keys):
        return None
    senders: set[int] = set()
    for vc in nv.view_changes:
        if not isinstance(vc, ViewChange) or vc.view != nv.view or vc.sender in senders:
            return None
        if not valid_view_change(vc, keys, log_window):
            return None
        senders.add(vc.sender)
    if len(senders) < quorum_size(n):
        return None
    plan = planner(nv.view_changes)
    if len(plan.entries) != len(nv.pre_prepares):
        return None
    for pp, (seq, digest) in zip(nv.pre_prepares, plan.entries):
        if not isinstance(pp, PrePrepare) or pp.request is not None:
            return None
        if (pp.view, pp.seq, pp.digest, pp.sender) != (nv.view, seq, digest, nv.sender):
            return None
        if not signed_by(pp, keys):
            return None
    return plan



class ViewChangeState:
    """What replica ``index`` collects across view changes (section 4.4), and the
    VIEW-CHANGE and NEW-VIEW messages it sends through ``outbox``.

    ``timeout`` is the current request / view-change timeout: ``base_timeout``, doubled
    per view change that did not complete (:meth:`back_off`), reset once a request
    executes in a normal view. A view change also failed when the view it led to
    executed no request before the request timer expired again (section 4.5.2:
    "before it executes a request in the new view"): :meth:`request_timed_out`.
    ``planner`` computes O (a hook for planted bugs).
    """

    def __init__(
        self,
        outbox: Outbox,
        index: int,
        keys: Sequence[str],
        log_window: int,
        base_timeout: float,
        planner: Callable[[Sequence[ViewChange]], NewViewPlan] = plan_new_view,
    ) -> None:
        self._outbox = outbox
        self._index = index
        self._keys = tuple(keys)
        self._quorum = quorum_size(len(self._keys))
        self._log_window = log_window
        self._planner = planner
        self._base_timeout = base_timeout
        self.timeout = base_timeout
        #: A request executed in the current view since it was installed (view 0: True).
        self.view_progressed = True
        #: The NEW-VIEW this replica installed last (relayed to replicas behind it).
        self.new_view_msg: Optional[NewView] = None
        #: This replica's VIEW-CHANGE while it changes views (retransmitted), else None.
        self.mine: Optional[ViewChange] = None
        self._vcs: dict[int, dict[int, ViewChange]] = {}
        self._latest: dict[int, int] = {}  # sender -> highest view it asked for
        self._nv_sent = -1

    # ------------------------------------------------------------------ this replica

    def start(self, view: int, stable: StableCheckpoint, prepared: tuple[PreparedCert, ...]) -> None:
        """Ask for ``view`` with the stable checkpoint and P set; older view-changes go."""
        self._outbox.cancel_timer(TimerKind.VIEW_CHANGE)
        vc = self._outbox.sign(ViewChange(
            view, stable.seq, stable.state_digest, stable.proof, prepared, self._index
        ))
        self.mine = vc
        self._vcs.setdefault(view, {})[self._index] = vc
        self._latest[self._index] = view
        self._vcs = {v: m for v, m in self._vcs.items() if v >= view}
        self._outbox.broadcast(vc)

    def back_off(self, max_timeout: float) -> None:
        """The view change timed out: double the timeout (up to ``max_timeout``)."""
        self.timeout = min(self.timeout * 2, max_timeout)

    def reset_timeout(self) -> None:
        """A request executed in a normal view: back to the base timeout."""
        self.timeout = self._base_timeout
        self.view_progressed = True

    def request_timed_out(self, max_timeout: float) -> None:
        """The request timer expired: when the current view was installed by a view
        change and executed nothing since, that view change failed too (back off)."""
        if not self.view_progressed:
            self.back_off(max_timeout)

    def retransmit(self) -> None:
        if self.mine is not None:
            self._outbox.broadcast(self.mine)

    def relay_new_view(self, to: int) -> None:
        """Hand replica ``to``, which is behind, the NEW-VIEW installed here."""
        if self.new_view_msg is not None:
            self._outbox.send(to, self.new_view_msg)

    # ------------------------------------------------------------------ peers

    def record(self, vc: ViewChange, view: int) -> bool:
        """Keep a peer's view-change for a view from ``view`` on, if valid and not too far
        ahead (the first per view and sender counts); False when it was refused."""
        w = vc.view
        if w > view + MAX_VIEWS_AHEAD or not valid_view_change(vc, self._keys, self._log_window):
            return False
        self._vcs.setdefault(w, {}).setdefault(vc.sender, vc)
        if w > self._latest.get(vc.sender, -1):
            self._latest[vc.sender] = w
        return True

    def views_ahead(self, view: int) -> list[int]:
        """The latest views other replicas asked for beyond ``view`` (f+1 pull forward)."""
        return [v for s, v in self._latest.items() if v > view and s != self._index]

    def progress(self, view: int) -> bool:
        """Changing to ``view``: True when, as its primary, this replica holds 2f+1
        view-changes and sent no NEW-VIEW yet; else arm the view-change timer once 2f+1
        replicas are known to be at ``view`` or beyond (section 4.5.2)."""
        vcs = self._vcs.get(view, {})
        if view % len(self._keys) == self._index and self._nv_sent != view and len(vcs) >= self._quorum:
            return True
        if not self._outbox.armed(TimerKind.VIEW_CHANGE):
            support = sum(1 for v in self._latest.values() if v >= view)
            if support >= self._quorum:
                self._outbox.set_timer(TimerKind.VIEW_CHANGE, self.timeout)
        return False

    # ------------------------------------------------------------------ new view

    def send_new_view(self, view: int) -> tuple[NewView, NewViewPlan]:
        """As the new primary: O from its own and 2f others' view-changes, broadcast."""
        vcs = self._vcs[view]
        others = [vcs[s] for s in sorted(vcs) if s != self._index]
        chosen = tuple([vcs[self._index]] + others[: self._quorum - 1])
        plan = self._planner(chosen)
        sign = self._outbox.sign
        pps = tuple(sign(PrePrepare(view, seq, digest, None, self._index)) for seq, digest in plan.entries)
        nv = sign(NewView(view, chosen, pps, self._index))
        self._nv_sent = view
        self._outbox.broadcast(nv)
        return nv, plan

    def check(self, nv: NewView) -> Optional[NewViewPlan]:
        """The plan of a correct NEW-VIEW (:func:`valid_new_view`), else None."""
        return valid_new_view(nv, self._keys, self._log_window, planner=self._planner)

    def installed(self, nv: NewView) -> None:
        """``nv`` installed: the view change is over."""
        self.new_view_msg = nv
        self.mine = None
        self.view_progressed = False
        self._outbox.cancel_timer(TimerKind.VIEW_CHANGE)
        self._vcs = {v: m for v, m in self._vcs.items() if v > nv.view}
