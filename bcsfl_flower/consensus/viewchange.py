"""View change and new view (Castro & Liskov, OSDI'99, section 4.4).

Pure checks (:func:`valid_view_change`, :func:`plan_new_view`, :func:`valid_new_view`)
plus :class:`ViewChangeMixin`, the replica's view-change state machine.

Safety across views rests on three rules implemented here:

* a VIEW-CHANGE carries the sender's stable checkpoint (with 2f+1 signed checkpoint
  messages) and its P set: for every sequence number above the checkpoint that prepared
  at the sender, the pre-prepare and 2f matching prepares of the *highest* view in which
  it prepared;
* the new primary computes O from 2f+1 valid view-changes: min-s is the highest stable
  checkpoint among them, max-s the highest prepared sequence number; every number in
  (min-s, max-s] gets the digest of the highest-view certificate for it, or the null
  request when no certificate names it;
* every backup recomputes O from the same 2f+1 view-changes and refuses a NEW-VIEW whose
  pre-prepares differ.

Liveness: a replica that sent VIEW-CHANGE(v) starts its view-change timer only once
2f+1 replicas are known to be at view v or beyond; when the timer expires it moves to
v+1 with the timeout doubled (capped). f+1 replicas ahead pull a replica forward to the
smallest of their views. View-changes are retransmitted on the status heartbeat and a
replica that is already in the new view relays the NEW-VIEW to laggards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from .messages import (
    GENESIS_DIGEST,
    NULL_DIGEST,
    Checkpoint,
    NewView,
    PrePrepare,
    Request,
    ViewChange,
    ViewEntered,
    cache_enabled,
    signed_by,
)
from .quorum import max_faulty, quorum_size

if TYPE_CHECKING:  # pragma: no cover
    from .replica import Replica

__all__ = [
    "NORMAL", "VIEW_CHANGE", "NewViewPlan", "digest_ok", "plan_new_view",
    "valid_new_view", "valid_view_change", "ViewChangeMixin",
]

NORMAL = "normal"
VIEW_CHANGE = "view-change"
#: View-change messages further ahead than this many views are not stored.
MAX_VIEWS_AHEAD = 64


def digest_ok(pp: PrePrepare) -> bool:
    """The pre-prepare's digest is that of the request it carries (or the null one)."""
    if pp.request is None:
        return pp.digest == NULL_DIGEST
    return isinstance(pp.request, Request) and pp.digest == pp.request.digest


def valid_checkpoint_proof(
    seq: int, digest: str, proof: Sequence[Checkpoint], keys: Sequence[str]
) -> bool:
    """2f+1 distinct replicas signed Checkpoint(seq, digest); seq 0 is the genesis."""
    if seq == 0:
        return digest == GENESIS_DIGEST
    signers: set[int] = set()
    for c in proof:
        if not isinstance(c, Checkpoint) or c.seq != seq or c.state_digest != digest:
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
        if not 0 <= pp.view < vc.view or pp.sender != pp.view % n or not digest_ok(pp):
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
    entries: tuple[tuple[int, str, Optional[Request]], ...]  # (seq, digest, request)


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
    entries = tuple(
        (s, chosen[s].digest, chosen[s].request) if s in chosen else (s, NULL_DIGEST, None)
        for s in range(min_s + 1, max_s + 1)
    )
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
    for pp, (seq, digest, _req) in zip(nv.pre_prepares, plan.entries):
        if not isinstance(pp, PrePrepare):
            return None
        if (pp.view, pp.seq, pp.digest, pp.sender) != (nv.view, seq, digest, nv.sender):
            return None
        if not digest_ok(pp) or not signed_by(pp, keys):
            return None
    return plan


class ViewChangeMixin:
    """View-change half of :class:`~bcsfl_flower.consensus.replica.Replica`."""

    # ------------------------------------------------------------------ hooks

    def _plan(self: Replica, vcs: Sequence[ViewChange]) -> NewViewPlan:
        return plan_new_view(vcs)

    def _check_new_view(self: Replica, nv: NewView) -> Optional[NewViewPlan]:
        return valid_new_view(nv, self.keys, self.cfg.log_window, planner=self._plan)

    # ------------------------------------------------------------------ start

    def _start_view_change(self: Replica, new_view: int) -> None:
        if new_view <= self.view:
            return
        self.view = new_view
        self.status = VIEW_CHANGE
        self._cancel_timer("request")
        self._cancel_timer("view-change")
        proofs = tuple(self._prepared_certs[s] for s in sorted(self._prepared_certs) if s > self.h)
        vc = self._signed(
            ViewChange(new_view, self.h, self._stable_digest, self._stable_proof, proofs, self.index)
        )
        self._my_vc = vc
        self._vcs.setdefault(new_view, {})[self.index] = vc
        self._latest_vc[self.index] = new_view
        self._vcs = {v: m for v, m in self._vcs.items() if v >= new_view}
        self._broadcast(vc)
        self._check_vc_progress()

    def _on_vc_timer(self: Replica) -> None:
        if self.status != VIEW_CHANGE:
            return
        self._timeout = min(self._timeout * 2, self.cfg.max_timeout)
        self._start_view_change(self.view + 1)

    # ---------------------------------------------------------------- receive

    def _on_view_change(self: Replica, vc: ViewChange) -> None:
        w = vc.view
        if vc.sender == self.index:
            return
        if w < self.view or (w == self.view and self.status == NORMAL):
            # The sender is behind: hand it the NEW-VIEW we installed.
            if self.status == NORMAL and self._new_view_msg is not None:
                self._send(vc.sender, self._new_view_msg)
            return
        if w > self.view + MAX_VIEWS_AHEAD:
            return
        if not valid_view_change(vc, self.keys, self.cfg.log_window):
            return
        self._vcs.setdefault(w, {}).setdefault(vc.sender, vc)
        if w > self._latest_vc.get(vc.sender, -1):
            self._latest_vc[vc.sender] = w
        ahead = [v for s, v in self._latest_vc.items() if v > self.view and s != self.index]
        if len(ahead) >= self.f + 1:
            self._start_view_change(min(ahead))
        self._check_vc_progress()

    def _check_vc_progress(self: Replica) -> None:
        if self.status != VIEW_CHANGE:
            return
        w = self.view
        vcs = self._vcs.get(w, {})
        if w % self.n == self.index and self._nv_sent != w and len(vcs) >= self.quorum:
            self._send_new_view(w)
            return
        if "view-change" not in self._timers:
            support = sum(1 for v in self._latest_vc.values() if v >= w)
            if support >= self.quorum:
                self._set_timer("view-change", self._timeout)

    def _send_new_view(self: Replica, w: int) -> None:
        vcs = self._vcs[w]
        others = [vcs[s] for s in sorted(vcs) if s != self.index]
        chosen = tuple([vcs[self.index]] + others[: self.quorum - 1])
        plan = self._plan(chosen)
        pps = tuple(
            self._signed(PrePrepare(w, seq, digest, req, self.index))
            for seq, digest, req in plan.entries
        )
        nv = self._signed(NewView(w, chosen, pps, self.index))
        self._nv_sent = w
        self._broadcast(nv)
        self._install_new_view(nv, plan)

    def _on_new_view(self: Replica, nv: NewView) -> None:
        w = nv.view
        if w < self.view or (w == self.view and self.status == NORMAL):
            return
        plan = self._check_new_view(nv)
        if plan is None:
            return  # the view-change timer moves us on if the primary never sends a good one
        self._install_new_view(nv, plan)

    # ---------------------------------------------------------------- install

    def _install_new_view(self: Replica, nv: NewView, plan: NewViewPlan) -> None:
        w = nv.view
        self.view = w
        self.status = VIEW_CHANGE  # no ordering while the log is being rebuilt
        if plan.min_s > self.h:
            self._make_stable(plan.min_s, plan.stable_digest, plan.stable_proof)
        self.status = NORMAL
        self._new_view_msg = nv
        self._my_vc = None
        self._cancel_timer("view-change")
        self._assigned = {}
        self._slots = {k: s for k, s in self._slots.items() if k[0] >= w}
        self._vcs = {v: m for v, m in self._vcs.items() if v > w}
        primary = w % self.n
        self._emit(ViewEntered(w, primary))
        for pp in nv.pre_prepares:
            if pp.seq <= self.h:
                continue
            if pp.request is not None:
                self._assigned[pp.request.key] = pp.seq
            slot = self._slot(w, pp.seq)
            slot.pp = pp
            self._send_prepare(slot, pp)
        if primary == self.index:
            self._next_seq = max(plan.max_s, self.h)
        for key in sorted(k for k in self._future_pps if k[0] <= w):
            pp = self._future_pps.pop(key)
            if key[0] == w:
                self._on_pre_prepare(pp)
        for (v, s), slot in sorted(self._slots.items()):
            if v == w and self.status == NORMAL and self.view == w:
                self._check_slot(v, s, slot)
        if self.status != NORMAL or self.view != w:
            return  # a buffered pre-prepare exposed the new primary
        if primary == self.index:
            self._try_assign()
        else:
            for key, req in self._pending.items():
                if key not in self._assigned:
                    self._forward(req)
        self._update_request_timer(restart=True)
