"""An asyncio TCP transport for frames between the ledger nodes of one cluster.

Each node listens on its own PBFT port and keeps one outgoing connection to every
peer, reconnecting with backoff. Sending never blocks the caller: frames queue per
peer (bounded in bytes; the oldest are dropped past the bound, as PBFT tolerates
loss and retransmits what matters through its status heartbeat). Frames that arrive
are handed to one callback on the event loop, in arrival order per connection.

Given the node's key and every node's public key, links are authenticated
(:mod:`~.peer_auth`): each new connection starts with a signed challenge-response in
both directions, and a listener hands on frames only from a connection that proved it
comes from another node of the cluster. A connection that does not (wrong bytes, a bad
or missing signature, no handshake within ``handshake_timeout``) is closed before any
of its frames is read, and counted in :meth:`PeerTransport.stats`. The handshake costs
two signatures and two verifications per connection, nothing per frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import Callable, Sequence

from bcsfl_flower.crypto import SigningKey

from .peer_auth import CHALLENGE_SIZE, HELLO_SIZE, PROOF_SIZE, AuthError, PeerAuth
from .wire import MAX_FRAME, encode_frame

__all__ = ["PeerTransport"]

log = logging.getLogger(__name__)

FrameHandler = Callable[[int, bytes], None]
_BACKOFF = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
_HANDSHAKE_ERRORS = (AuthError, asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError)


class _Link:
    """The outgoing side towards one peer: a queue and the task that drains it."""

    def __init__(self, peer: int, addr: tuple[str, int], max_bytes: int,
                 on_connect: Callable[[], None] | None = None) -> None:
        self.peer = peer
        self.addr = addr
        self.on_connect = on_connect
        self.max_bytes = max_bytes
        self.queue: deque[bytes] = deque()
        self.queued = 0
        self.wake = asyncio.Event()
        self.connected = False
        self.dropped = 0
        self.auth: PeerAuth | None = None
        self.handshake_timeout = 5.0
        self.auth_failed = 0  # connections on which the peer did not prove it is the peer
        self.task: asyncio.Task[None] | None = None

    def push(self, frame: bytes) -> None:
        self.queue.append(frame)
        self.queued += len(frame)
        while self.queued > self.max_bytes and len(self.queue) > 1:
            self.queued -= len(self.queue.popleft())
            self.dropped += 1
        self.wake.set()

    async def run(self) -> None:
        """Connect, drain the queue, and reconnect whenever the connection dies."""
        attempt = 0
        while True:
            try:
                reader, writer = await asyncio.open_connection(*self.addr)
            except OSError:
                await asyncio.sleep(_BACKOFF[min(attempt, len(_BACKOFF) - 1)])
                attempt += 1
                continue
            if self.auth is not None:
                try:
                    await asyncio.wait_for(self._handshake(reader, writer), self.handshake_timeout)
                except _HANDSHAKE_ERRORS as err:
                    self.auth_failed += 1
                    # a peer restarting resets the connection: only a wrong answer is news
                    log.log(logging.WARNING if isinstance(err, AuthError) else logging.DEBUG,
                            "link to node %d at %s not authenticated: %s", self.peer, self.addr,
                            err or type(err).__name__)
                    writer.transport.abort()
                    await asyncio.sleep(_BACKOFF[min(attempt, len(_BACKOFF) - 1)])
                    attempt += 1
                    continue
            attempt = 0
            self.connected = True
            if self.on_connect is not None:
                self.on_connect()
            drain = asyncio.ensure_future(self._drain(writer))
            watch = asyncio.ensure_future(reader.read(1))  # peers never answer: EOF = gone
            try:
                done, _ = await asyncio.wait({drain, watch}, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if not task.cancelled() and task.exception() is not None:
                        log.debug("link to %s: %s", self.addr, task.exception())
            finally:
                self.connected = False
                for task in (drain, watch):
                    task.cancel()
                writer.transport.abort()  # never wait to flush towards a dead peer
            await asyncio.sleep(_BACKOFF[0])

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """HELLO, check the peer's CHALLENGE, PROOF (see :mod:`~.peer_auth`)."""
        assert self.auth is not None
        hello, nonce = self.auth.hello(self.peer)
        writer.write(hello)
        await writer.drain()
        challenge = await reader.readexactly(CHALLENGE_SIZE)
        writer.write(self.auth.proof(self.peer, nonce, challenge))
        await writer.drain()

    async def _drain(self, writer: asyncio.StreamWriter) -> None:
        while True:
            if not self.queue:
                self.wake.clear()
                await self.wake.wait()
            while self.queue:
                frame = self.queue.popleft()
                self.queued -= len(frame)
                writer.write(frame)
            await writer.drain()


class PeerTransport:
    """Length-prefixed frames to and from the other nodes.

    Parameters
    ----------
    index : int
        This node's position in ``addrs``.
    addrs : Sequence[tuple[str, int]]
        ``(host, port)`` of every node's PBFT listener, in replica-index order.
    on_frame : Callable[[int, bytes], None]
        Called on the event loop with ``(kind, payload)`` for every frame received.
    max_queue_bytes : int (default: 256 MiB)
        Bound on the bytes queued for one peer that is slow or down.
    on_connect : Callable[[int], None] | None (default: None)
        Called with the peer's index each time the connection to it (re)opens.
    key : SigningKey | None (default: None)
        This node's key; with ``peer_keys``, links are authenticated (see
        :meth:`authenticate`). None: no handshake (every node of a cluster must agree).
    peer_keys : Sequence[str] | None (default: None)
        Every node's public key (hex) in index order.
    handshake_timeout : float (default: 5.0)
        Seconds a new connection has to complete the handshake.
    """

    def __init__(
        self,
        index: int,
        addrs: Sequence[tuple[str, int]],
        on_frame: FrameHandler,
        max_queue_bytes: int = 256 * 1024 * 1024,
        on_connect: Callable[[int], None] | None = None,
        key: SigningKey | None = None,
        peer_keys: Sequence[str] | None = None,
        handshake_timeout: float = 5.0,
    ) -> None:
        self.index = index
        self.addrs = list(addrs)
        self.on_frame = on_frame
        self._links = {
            j: _Link(j, addr, max_queue_bytes, functools.partial(on_connect, j) if on_connect else None)
            for j, addr in enumerate(self.addrs) if j != index
        }
        self._server: asyncio.AbstractServer | None = None
        self._readers: set[asyncio.Task[None]] = set()
        self._by_peer: dict[int, asyncio.Task[None]] = {}  # the authenticated connection of each peer
        self.received = 0
        self.received_from: dict[int, int] = {}  # frames per authenticated peer
        self.auth: PeerAuth | None = None
        self.handshake_timeout = handshake_timeout
        self.auth_accepted = 0
        self.auth_refused = 0
        self.refused_why: dict[str, int] = {}
        if key is not None and peer_keys is not None:
            self.authenticate(key, peer_keys)

    def authenticate(self, key: SigningKey, peer_keys: Sequence[str]) -> None:
        """Authenticate every link from now on with this node's ``key`` and the nodes' ``peer_keys``.

        Call before :meth:`start`. Incoming connections must prove they come from
        another node; outgoing ones that the peer is who it should be.

        Parameters
        ----------
        key : SigningKey
            This node's key; its public key must be ``peer_keys[index]``.
        peer_keys : Sequence[str]
            Every node's public key (hex), in index order, one per address.
        """
        if len(peer_keys) != len(self.addrs):
            raise ValueError(f"{len(peer_keys)} keys for {len(self.addrs)} nodes")
        self.auth = PeerAuth(self.index, key, peer_keys)
        for link in self._links.values():
            link.auth, link.handshake_timeout = self.auth, self.handshake_timeout

    async def start(self) -> None:
        """Listen on this node's address and start connecting to the peers."""
        host, port = self.addrs[self.index]
        self._server = await asyncio.start_server(self._accept, host, port, reuse_address=True)
        for link in self._links.values():
            link.task = asyncio.get_running_loop().create_task(link.run())

    def send(self, to: int, kind: int, payload: bytes) -> None:
        """Queue one frame for peer ``to`` (silently ignored for this node itself)."""
        link = self._links.get(to)
        if link is not None:
            link.push(encode_frame(kind, payload))

    def broadcast(self, kind: int, payload: bytes) -> None:
        """Queue one frame for every peer (encoded once)."""
        frame = encode_frame(kind, payload)
        for link in self._links.values():
            link.push(frame)

    def connected_peers(self) -> list[int]:
        """Peers whose outgoing connection is up."""
        return sorted(j for j, link in self._links.items() if link.connected)

    def stats(self) -> dict[str, object]:
        """Frames received (and from which authenticated peer); incoming connections authenticated
        and refused (with why); and per peer: connected, queued bytes, frames dropped, connections
        whose peer failed to authenticate."""
        return {"received": self.received,
                "auth": {"enabled": self.auth is not None, "accepted": self.auth_accepted,
                         "received_from": dict(self.received_from),
                         "refused": self.auth_refused, "refused_why": dict(self.refused_why)},
                "links": {j: {"up": link.connected, "queued": link.queued, "dropped": link.dropped,
                              "auth_failed": link.auth_failed} for j, link in self._links.items()}}

    def _refuse(self, why: str) -> None:
        self.auth_refused += 1
        self.refused_why[why] = self.refused_why.get(why, 0) + 1

    async def _authenticate_incoming(self, reader: asyncio.StreamReader,
                                     writer: asyncio.StreamWriter) -> int | None:
        """The authenticated peer of a new connection, or None (refused and counted)."""
        assert self.auth is not None
        try:
            async with asyncio.timeout(self.handshake_timeout):
                hello = await reader.readexactly(HELLO_SIZE)
                peer, peer_nonce, nonce, challenge = self.auth.challenge(hello)
                writer.write(challenge)
                await writer.drain()
                self.auth.check_proof(peer, peer_nonce, nonce, await reader.readexactly(PROOF_SIZE))
        except AuthError as err:
            self._refuse("bad handshake")
            log.warning("refused a PBFT connection: %s", err)
            return None
        except (asyncio.TimeoutError, TimeoutError):
            self._refuse("no handshake in time")
            return None
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            self._refuse("closed during handshake")
            return None
        self.auth_accepted += 1
        return peer

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._readers.add(task)
        peer: int | None = None
        try:
            if self.auth is not None:
                peer = await self._authenticate_incoming(reader, writer)
                if peer is None:
                    return  # not one of the nodes: closed before any frame is read
                old = self._by_peer.get(peer)
                if old is not None and old is not task:
                    old.cancel()  # the peer reconnected: its earlier connection is dead or stale
                if task is not None:
                    self._by_peer[peer] = task
            while True:
                header = await reader.readexactly(5)
                size, kind = int.from_bytes(header[:4], "big"), header[4]
                if size < 1 or size > MAX_FRAME:
                    log.warning("dropping a connection that sent a %d-byte frame", size)
                    return
                payload = await reader.readexactly(size - 1)
                self.received += 1
                if peer is not None:
                    self.received_from[peer] = self.received_from.get(peer, 0) + 1
                try:
                    self.on_frame(kind, payload)
                except Exception:  # noqa: BLE001 - one bad frame must not stop the node
                    log.exception("frame handler failed")
        except (asyncio.IncompleteReadError, ConnectionError, OSError, asyncio.CancelledError):
            pass  # a peer went away, or this node is closing
        finally:
            if task is not None:
                self._readers.discard(task)
                if peer is not None and self._by_peer.get(peer) is task:
                    del self._by_peer[peer]
            writer.close()

    async def close(self) -> None:
        """Stop listening, drop every connection and cancel the link tasks."""
        if self._server is not None:
            self._server.close()
        tasks = [link.task for link in self._links.values() if link.task is not None]
        tasks += list(self._readers)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
