"""Byzantine replicas for the simulator and the fuzzer (the fault model of Castro &
Liskov, OSDI 1999, section 2: up to f replicas behave arbitrarily, but cannot forge
other replicas' signatures).

:class:`ByzantineReplica` runs an honest :class:`~.replica.Replica` inside (so it knows
the protocol state and holds its own signing key) and rewrites what it emits according
to a set of behaviours:

``silent``        emits nothing at all;
``mute-primary``  drops its own pre-prepares and new-views (a silent primary);
``equivocate``    as primary, sends different pre-prepares for one slot to two groups
                  (the second request signed by a Byzantine client) and prepares and
                  commits both; as new primary, sends two groups new-views built from
                  different sets of 2f+1 view-changes;
``bad-proposal``  as primary, proposes a value the validate hook refuses, a digest that
                  does not match the request, or a request with a broken client
                  signature; tampers with the O set of its new-views;
``replay``        re-sends old messages (its own and others') to random replicas;
``forge``         sends copies of its messages claiming another sender, and copies with
                  garbage signatures;
``hide-prepared`` its view-changes claim that nothing prepared (empty P set);
``noise``         prepares/commits for random digests, wrong checkpoints, validly
                  signed view-changes for views nobody else wants, catch-up entries
                  with forged certificates, fetches of unknown request bodies and
                  bodies nobody asked for;
``omit``          drops each outgoing message with probability 1/2;
``tamper-relay``  relays every pre-prepare a correct primary sends it to the other
                  backups with the carried request (which the primary's signature does
                  not cover) altered: value changed, client signature garbled, request
                  stripped or swapped for another; it stays silent as primary (drops its
                  own pre-prepares and new-views) and withholds its prepares and commits,
                  so a single backup misled by a copy stalls the slot; a request-body
                  fetch it answers at once with another request. It is *rushing*:
                  :class:`~.simnet.SimNetwork` delivers what it sends and what is sent
                  to it at once (the network adversary colludes with it), so its copies
                  arrive before the primary's own.

The randomness comes from the ``rng`` handed in (the fault schedule's), never from
inside the honest replica.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import Any

from ..crypto import SigningKey
from .messages import (
    GENESIS_DIGEST, NULL_DIGEST, Broadcast, CatchUp, Checkpoint, Commit, CommittedEntry, NewView, Prepare,
    PrePrepare, Request, RequestBody, RequestFetch, Send, Signed, ViewChange,
)
from .quorum import QuorumCertificate
from .replica import Replica
from .viewchange import valid_view_change

__all__ = ["BEHAVIOURS", "ByzantineReplica"]

BEHAVIOURS = (
    "silent", "mute-primary", "equivocate", "bad-proposal", "replay", "forge", "noise", "omit",
    "hide-prepared", "tamper-relay",
)


class ByzantineReplica:
    """Same interface as :class:`Replica` (``start/submit/receive/on_timer``)."""

    def __init__(
        self,
        inner: Replica,
        behaviours: Sequence[str],
        rng: random.Random,
        client_key: SigningKey,
        client_id: str,
    ) -> None:
        unknown = set(behaviours) - set(BEHAVIOURS)
        if unknown:
            raise ValueError(f"unknown behaviours {sorted(unknown)}")
        self.inner = inner
        self.index = inner.index
        self.n = inner.n
        self.behaviours = frozenset(behaviours)
        self.rng = rng
        self._client_key = client_key
        self._client_id = client_id
        self._rid = 0
        self._seen: list[Signed] = []
        self._vcs_seen: dict[int, dict[int, ViewChange]] = {}
        #: Read by :class:`~.simnet.SimNetwork`: the network adversary favours this node.
        self.rushing = "tamper-relay" in self.behaviours

    # ------------------------------------------------------------ interface

    def start(self) -> list:
        return self._mangle(self.inner.start())

    def submit(self, request: Request) -> list:
        return self._mangle(self.inner.submit(request))

    def receive(self, msg: Signed) -> list:
        if "replay" in self.behaviours and len(self._seen) < 400:
            self._seen.append(msg)
        if "equivocate" in self.behaviours and isinstance(msg, ViewChange):
            self._vcs_seen.setdefault(msg.view, {}).setdefault(msg.sender, msg)
        out = self._mangle(self.inner.receive(msg))
        if "tamper-relay" in self.behaviours and "silent" not in self.behaviours:
            out.extend(self._tampered_relay(msg))
        return out

    def on_timer(self, timer_id: int) -> list:
        # Unsolicited traffic is paced by the replica's own timers (heartbeat): sent in
        # reaction to received messages, two noisy replicas would feed each other.
        return self._mangle(self.inner.on_timer(timer_id)) + self._unsolicited()

    def checkpoint_ready(self, seq: int, app_digest: str) -> list:
        return self._mangle(self.inner.checkpoint_ready(seq, app_digest))

    def state_transferred(self, checkpoint) -> list:
        return self._mangle(self.inner.state_transferred(checkpoint))

    def committed_log(self) -> list:
        return self.inner.committed_log()

    # ------------------------------------------------------------ helpers

    def _others(self) -> list[int]:
        return [i for i in range(self.n) if i != self.index]

    def _sign(self, msg: Signed) -> Signed:
        return self.inner.outbox.sign(msg)  # a Byzantine node holds its own key

    def _byz_request(self, value: str | None = None) -> Request:
        self._rid += 1
        v = value if value is not None else f"byz-{self.index}-{self._rid}"
        return Request.make(self._client_id, self._rid, v, self._client_key)

    def _to_each(self, msg: Signed) -> list:
        return [Send(i, msg) for i in self._others()]

    # ------------------------------------------------------------ rewriting

    def _mangle(self, outputs: list) -> list:
        b = self.behaviours
        if "silent" in b:
            return [o for o in outputs if not isinstance(o, (Send, Broadcast))]
        result: list = []
        for out in outputs:
            msg = out.msg if isinstance(out, (Send, Broadcast)) else None
            if msg is None:
                result.append(out)
                continue
            if "omit" in b and self.rng.random() < 0.5:
                continue
            if "mute-primary" in b and isinstance(msg, (PrePrepare, NewView)):
                continue
            if "tamper-relay" in b and isinstance(msg, (PrePrepare, NewView, Prepare, Commit)):
                if msg.sender == self.index:
                    continue
            if isinstance(msg, PrePrepare) and msg.sender == self.index:
                if "equivocate" in b and msg.request is not None:
                    result.extend(self._equivocate(msg))
                    continue
                if "bad-proposal" in b and msg.request is not None:
                    result.extend(self._to_each(self._bad_proposal(msg)))
                    continue
            if isinstance(msg, NewView) and "bad-proposal" in b and msg.pre_prepares:
                result.append(Broadcast(self._bad_new_view(msg)))
                continue
            if isinstance(msg, NewView) and "equivocate" in b and msg.sender == self.index:
                result.extend(self._equivocate_new_view(msg))
                continue
            if isinstance(msg, ViewChange) and "hide-prepared" in b and msg.sender == self.index:
                msg = self._sign(dataclasses.replace(msg, prepared=(), sig=b""))
                out = Broadcast(msg) if isinstance(out, Broadcast) else Send(out.to, msg)
            result.append(out)
            if "forge" in b and self.rng.random() < 0.3:
                result.extend(self._forgeries(msg))
        return result

    def _unsolicited(self) -> list:
        b = self.behaviours
        result: list = []
        if "silent" in b:
            return result
        if "replay" in b and self._seen:
            for _ in range(self.rng.randint(1, 6)):
                result.append(Send(self.rng.choice(self._others()), self.rng.choice(self._seen)))
        if "noise" in b and self.rng.random() < 0.7:
            result.extend(self._noise())
        return result

    def _equivocate(self, pp: PrePrepare) -> list:
        others = self._others()
        self.rng.shuffle(others)
        cut = self.rng.randint(1, len(others) - 1) if len(others) > 1 else 1
        group_a, group_b = others[:cut], others[cut:]
        alt_req = self._byz_request()
        alt = self._sign(PrePrepare(pp.view, pp.seq, alt_req.digest, alt_req, self.index))
        out: list = []
        for group, p in ((group_a, pp), (group_b, alt)):
            votes = [
                p,
                self._sign(Prepare(p.view, p.seq, p.digest, self.index)),
                self._sign(Commit(p.view, p.seq, p.digest, self.index)),
            ]
            out.extend(Send(i, m) for i in group for m in votes)
        return out

    def _equivocate_new_view(self, nv: NewView) -> list:
        inner = self.inner
        seen = dict(self._vcs_seen.get(nv.view, {}))
        for vc in nv.view_changes:
            seen.setdefault(vc.sender, vc)
        pool = [vc for _s, vc in sorted(seen.items()) if valid_view_change(vc, inner.keys, inner.cfg.log_window)]
        self.rng.shuffle(pool)
        alt_vcs = tuple(pool[: inner.quorum])
        plan = inner.planner(alt_vcs)
        pps = tuple(self._sign(PrePrepare(nv.view, s, d, None, self.index)) for s, d in plan.entries)
        alt = self._sign(NewView(nv.view, alt_vcs, pps, self.index))
        others = self._others()
        self.rng.shuffle(others)
        cut = self.rng.randint(0, len(others))
        return [Send(i, nv) for i in others[:cut]] + [Send(i, alt) for i in others[cut:]]

    def _bad_proposal(self, pp: PrePrepare) -> PrePrepare:
        kind = self.rng.randrange(3)
        if kind == 0:  # a value the application refuses
            req = self._byz_request(f"INVALID-{self.index}-{self._rid}")
            return self._sign(PrePrepare(pp.view, pp.seq, req.digest, req, self.index))
        if kind == 1:  # digest does not match the request
            return self._sign(PrePrepare(pp.view, pp.seq, "0" * 64, pp.request, self.index))
        # the client's request with its value changed (client signature now wrong)
        req = pp.request
        bad = Request(req.client, req.rid, req.value + "-tampered", req.sig)
        return self._sign(PrePrepare(pp.view, pp.seq, bad.digest, bad, self.index))

    def _tampered_relay(self, msg: Signed) -> list:
        """Copies of a correct primary's pre-prepare, request altered, to the other backups;
        a wrong body for a body fetch."""
        if isinstance(msg, RequestFetch) and msg.sender != self.index:
            return [Send(msg.sender, self._sign(RequestBody(self._byz_request(), self.index)))]
        if not isinstance(msg, PrePrepare) or msg.sender == self.index or msg.request is None:
            return []
        req = msg.request
        kind = self.rng.randrange(4)
        if kind == 0:  # value changed, client signature kept
            alt: Request | None = Request(req.client, req.rid, req.value + "-tampered", req.sig)
        elif kind == 1:  # client signature garbled (the digest of old left it out)
            alt = Request(req.client, req.rid, req.value, bytes(self.rng.getrandbits(8) for _ in range(64)))
        elif kind == 2:  # request stripped
            alt = None
        else:  # another validly signed request
            alt = self._byz_request()
        copy = dataclasses.replace(msg, request=alt)  # the primary's signature, unchanged
        object.__setattr__(copy, "sig", msg.sig)
        return [Send(i, copy) for i in self._others() if i != msg.sender]

    def _bad_new_view(self, nv: NewView) -> NewView:
        pps = tuple(
            self._sign(PrePrepare(p.view, p.seq, "0" * 64 if p.digest != NULL_DIGEST else p.digest, None, self.index))
            if self.rng.random() < 0.5 else p
            for p in nv.pre_prepares[:-1]
        )
        return self._sign(NewView(nv.view, nv.view_changes, pps, self.index))

    def _forgeries(self, msg: Signed) -> list:
        victim = self.rng.choice(self._others())
        out: list = []
        if hasattr(msg, "sender"):
            claims = dataclasses.replace(msg, sender=victim)  # keeps our signature: invalid
            object.__setattr__(claims, "sig", msg.sig)
            out.extend(self._to_each(claims))
        garbage = dataclasses.replace(msg)
        object.__setattr__(garbage, "sig", bytes(self.rng.getrandbits(8) for _ in range(64)))
        out.extend(self._to_each(garbage))
        return out

    def _noise(self) -> list:
        inner = self.inner
        v, seq = inner.view, inner.last_executed + 1
        digest = f"{self.rng.getrandbits(64):016x}" * 4
        msgs: list[Any] = [
            self._sign(Prepare(v, seq, digest, self.index)),
            self._sign(Commit(v, seq, digest, self.index)),
            self._sign(Checkpoint(inner.cfg.checkpoint_interval, digest, "", digest, self.index)),
            self._sign(ViewChange(v + self.rng.randint(1, 3), 0, GENESIS_DIGEST, (), (), self.index)),
        ]
        req = self._byz_request()
        own = self._sign(Commit(v, seq, req.digest, self.index))
        fake_cert = QuorumCertificate(v, seq, req.digest, (own,) * inner.quorum)
        msgs.append(self._sign(CatchUp((CommittedEntry(seq, req, fake_cert),), self.index)))
        msgs.append(self._sign(RequestFetch(digest, seq, self.index)))
        msgs.append(self._sign(RequestBody(req, self.index)))
        return [Broadcast(m) for m in msgs]
