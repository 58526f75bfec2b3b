"""Fencing a PBFT replica that may have forgotten what it sent before a crash.

A ledger node keeps its chain and its last stable checkpoint in SQLite, but its
replica's log above that checkpoint lives in memory: after a SIGKILL the node restarts
with a replica that resumes from the checkpoint (:mod:`~.snapshot`) and remembers no
vote it cast since. PBFT assumes replicas never forget their own votes, so the driver
enforces what the replica can no longer know:

* it never proposes again in a view it may have proposed in before (the highest such
  view is written to ``node-I.pbft.json`` and fsynced *before* the first pre-prepare
  or new-view message of a view leaves the node): an amnesiac primary could otherwise
  assign a second value to a sequence number. The fence lifts once every peer is
  known to have restarted since (each node announces a fresh boot id when it connects,
  and the file records the boot ids seen): after a restart of the whole cluster no
  replica remembers the old votes, and fencing would only cost view changes;
* it sends no pre-prepare, prepare or commit for a sequence number it has already
  executed (it learnt those from certified catch-up entries, not by voting);
* until it has executed what 2f peers report (or heard nothing from them for a grace
  period, e.g. when the whole cluster restarts), it is *recovering*: it proposes
  nothing and holds back its own requests.

Both classes are cores without timers: :class:`RecoveryWatch` is told the time
(``now``, any monotonic clock in seconds) by the node that drives it, and only
:class:`Fence` touches a file (its one number must survive the crash).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from bcsfl_flower.consensus.messages import (
    Commit, NewView, PrePrepare, Prepare, Signed, Status, check_signature,
)

__all__ = ["Fence", "RecoveryWatch"]


class Fence:
    """Which of the replica's outgoing messages may leave the node.

    Parameters
    ----------
    path : str | os.PathLike[str]
        The file that remembers the highest view this node proposed in.
    """

    def __init__(self, path: str | os.PathLike[str], peers: int) -> None:
        self.path = Path(path)
        self.peers = peers
        view, boots = self._load()
        self.fenced_view = view  # proposed in these views before: never again
        self.proposed_view = view
        self.old_boots = boots  # the peers' boot ids as known before this start
        self.boots = dict(boots)
        self.heard: dict[str, str] = {}

    def _load(self) -> tuple[int, dict[str, str]]:
        try:
            state = json.loads(self.path.read_text())
            view, boots = state["proposed_view"], state.get("peer_boots", {})
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return -1, {}
        if type(view) is not int or not isinstance(boots, dict):
            return -1, {}
        return view, {str(k): str(v) for k, v in boots.items()}

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as handle:
            json.dump({"proposed_view": self.proposed_view, "peer_boots": self.boots}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self.path)

    def peer_booted(self, peer: int, boot: str) -> bool:
        """Record a peer's boot id; True when this lifts the fence."""
        key = str(peer)
        self.heard[key] = boot
        if self.boots.get(key) != boot:
            self.boots[key] = boot
            self._save()
        if self.fenced_view < 0 or len(self.heard) < self.peers:
            return False
        if any(self.old_boots.get(k) == b for k, b in self.heard.items()):
            return False  # that peer lived through our crash and may remember our votes
        self.fenced_view = -1
        return True

    def may_lead(self, view: int) -> bool:
        """Whether this node may propose in ``view`` at all."""
        return view > self.fenced_view

    def allowed(self, msg: Signed, executed: int, recovering: bool) -> bool:
        """Whether ``msg`` may be sent (persisting a new proposing view first).

        Parameters
        ----------
        msg : Signed
            An outgoing PBFT message.
        executed : int
            The replica's ``last_executed`` before the call that produced ``msg``.
        recovering : bool
            Whether the node is still catching up after a restart.
        """
        if isinstance(msg, (PrePrepare, NewView)):
            if recovering or not self.may_lead(msg.view):
                return False
            if msg.view > self.proposed_view:
                self.proposed_view = msg.view
                self._save()
        if isinstance(msg, (PrePrepare, Prepare, Commit)) and msg.seq <= executed:
            return False
        return True


class RecoveryWatch:
    """Decides when a (re)started node has caught up with its peers.

    Parameters
    ----------
    index : int
        This node's replica index.
    keys : tuple[str, ...]
        Every replica's public key (to check the peers' status messages).
    f : int
        Faults tolerated: the node waits for status from ``2f`` peers.
    grace : float
        Seconds after which a node that heard from fewer peers stops waiting.
    started : float (default: 0.0)
        When the node started, on the clock later given to :meth:`done` (the node sets
        :attr:`started` again when it starts listening).
    """

    def __init__(self, index: int, keys: tuple[str, ...], f: int, grace: float,
                 started: float = 0.0) -> None:
        self.index, self.keys, self.f, self.grace = index, keys, f, grace
        self.recovering = len(keys) > 1
        self.peer_exec: dict[int, int] = {}
        self.target: int | None = None
        self.started = started

    def observe(self, msg: object) -> None:
        """Note how far a peer has executed, from its signed status heartbeat."""
        if (isinstance(msg, Status) and type(msg.sender) is int
                and 0 <= msg.sender < len(self.keys) and msg.sender != self.index
                and check_signature(self.keys[msg.sender], msg.sig, msg.body())):
            self.peer_exec[msg.sender] = max(self.peer_exec.get(msg.sender, 0),
                                             msg.last_executed)

    def done(self, last_executed: int, now: float) -> str | None:
        """Why recovery is over (a log line), or ``None`` while it is not.

        ``last_executed`` is the replica's, ``now`` the time on :attr:`started`'s clock.
        """
        if not self.recovering:
            return None
        if self.target is None and len(self.peer_exec) >= 2 * self.f:
            self.target = max(self.peer_exec.values(), default=0)
        waited = now - self.started
        if self.target is not None and last_executed >= self.target:
            why = f"caught up to {self.target}"
        elif self.target is None and waited >= self.grace:
            why = f"no quorum of peers heard in {waited:.1f}s"
        else:
            return None
        self.recovering = False
        return why
