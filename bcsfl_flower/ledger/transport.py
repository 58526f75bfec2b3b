"""An asyncio TCP transport for frames between the ledger nodes of one cluster.

Each node listens on its own PBFT port and keeps one outgoing connection to every
peer, reconnecting with backoff. Sending never blocks the caller: frames queue per
peer (bounded in bytes; the oldest are dropped past the bound, as PBFT tolerates
loss and retransmits what matters through its status heartbeat). Frames that arrive
are handed to one callback on the event loop, in arrival order per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import Callable, Sequence

from .wire import MAX_FRAME, encode_frame

__all__ = ["PeerTransport"]

log = logging.getLogger(__name__)

FrameHandler = Callable[[int, bytes], None]
_BACKOFF = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class _Link:
    """The outgoing side towards one peer: a queue and the task that drains it."""

    def __init__(self, addr: tuple[str, int], max_bytes: int,
                 on_connect: Callable[[], None] | None = None) -> None:
        self.addr = addr
        self.on_connect = on_connect
        self.max_bytes = max_bytes
        self.queue: deque[bytes] = deque()
        self.queued = 0
        self.wake = asyncio.Event()
        self.connected = False
        self.dropped = 0
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
    """

    def __init__(
        self,
        index: int,
        addrs: Sequence[tuple[str, int]],
        on_frame: FrameHandler,
        max_queue_bytes: int = 256 * 1024 * 1024,
        on_connect: Callable[[int], None] | None = None,
    ) -> None:
        self.index = index
        self.addrs = list(addrs)
        self.on_frame = on_frame
        self._links = {
            j: _Link(addr, max_queue_bytes, functools.partial(on_connect, j) if on_connect else None)
            for j, addr in enumerate(self.addrs) if j != index
        }
        self._server: asyncio.AbstractServer | None = None
        self._readers: set[asyncio.Task[None]] = set()
        self.received = 0

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
        """Frames received, and per peer: connected, queued bytes, frames dropped."""
        return {"received": self.received,
                "links": {j: {"up": link.connected, "queued": link.queued,
                              "dropped": link.dropped} for j, link in self._links.items()}}

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._readers.add(task)
        try:
            while True:
                header = await reader.readexactly(5)
                size, kind = int.from_bytes(header[:4], "big"), header[4]
                if size < 1 or size > MAX_FRAME:
                    log.warning("dropping a connection that sent a %d-byte frame", size)
                    return
                payload = await reader.readexactly(size - 1)
                self.received += 1
                try:
                    self.on_frame(kind, payload)
                except Exception:  # noqa: BLE001 - one bad frame must not stop the node
                    log.exception("frame handler failed")
        except (asyncio.IncompleteReadError, ConnectionError, OSError, asyncio.CancelledError):
            pass  # a peer went away, or this node is closing
        finally:
            if task is not None:
                self._readers.discard(task)
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
