"""The sans-IO core of a state transfer: which chain pages to ask a peer for, and their check.

A node behind a stable checkpoint fetches the blocks it lacks from its peers
(:mod:`~.statefetch` does the HTTP, :mod:`~.snapshot` drives it). The trust anchor is
the checkpoint's certified head (:class:`~.snapshot.AppDigest`, signed by 2f+1
replicas). :class:`BlockFetch` says which page of ``GET /getBlockchain`` to ask for
next and checks what came back: each block must link to the one before (``lastHash``,
sequence number, time) and hash to its own ``hash``, and the last must be the
certified head. The hash chain then authenticates every block in between, so a peer
serving a wrong block is caught before anything is written. No socket, thread or
clock here: answers come in as parsed JSON, verdicts go out as values or
:class:`TransferError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .block import Block, LedgerError
from .rules import check_link, referenced_models

__all__ = ["BlockFetch", "FetchLimits", "TransferError", "peer_order"]


class TransferError(Exception):
    """A peer's answer cannot be used (unreachable, malformed, too large or not the certified chain).

    ``status`` is the HTTP status of a refused request (None for anything else).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class FetchLimits:
    """Bounds on one state transfer.

    Parameters
    ----------
    page : int (default: 50)
        Blocks asked for per ``GET /getBlockchain`` (a node serves at most its ``max_page``).
    max_response_bytes : int (default: 256 MiB)
        Largest body read from one response; a larger one fails that peer.
    max_total_bytes : int (default: 4 GiB)
        Largest total read from peers in one transfer.
    timeout : float (default: 30.0)
        Seconds per HTTP request.
    """

    page: int = 50
    max_response_bytes: int = 256 * 1024 * 1024
    max_total_bytes: int = 4 * 1024 * 1024 * 1024
    timeout: float = 30.0


@dataclass
class BlockFetch:
    """Sans-IO: the pages to ask for and the check of what came back.

    Parameters
    ----------
    head : Block
        This node's chain head (the fetched blocks must follow it).
    height : int
        The certified chain height (the certified head is block ``height - 1``).
    target : str
        The certified head's hash.
    page : int (default: 50)
        Blocks per page asked for.
    """

    head: Block
    height: int
    target: str
    page: int = 50
    blocks: list[Block] = field(default_factory=list)

    @property
    def last(self) -> Block:
        """The newest block held so far (this node's head before any page)."""
        return self.blocks[-1] if self.blocks else self.head

    @property
    def done(self) -> bool:
        """Whether every block up to the certified head was received and checked."""
        return self.last.sequence_no >= self.height - 1

    def next_page(self) -> tuple[int, int] | None:
        """``(from, limit)`` of the next ``GET /getBlockchain``, or None when done."""
        if self.done:
            return None
        first = self.last.sequence_no + 1
        return first, min(self.page, self.height - first)

    def take(self, answer: Any) -> int:
        """Check one ``/getBlockchain`` answer (parsed JSON) and keep its blocks; how many.

        Raises
        ------
        TransferError
            If the page is malformed, holds no block it should, or a block does not
            follow, does not hash to its ``hash``, or the last is not the certified head.
        """
        chain = answer.get("chain") if isinstance(answer, dict) else None
        if not isinstance(chain, list):
            raise TransferError("not a /getBlockchain answer")
        taken = 0
        for obj in chain:
            if self.done:
                break  # the peer is ahead: its later blocks are not ours to take here
            try:
                block = Block.from_json(obj, copy=False)
                check_link(self.last, block)
            except LedgerError as err:
                raise TransferError(f"block after {self.last.sequence_no}: {err}") from None
            if block.hash != block.expected_hash():
                raise TransferError(f"block {block.sequence_no} does not hash to its hash")
            if block.sequence_no == self.height - 1 and block.hash != self.target:
                raise TransferError(f"block {block.sequence_no} is not the certified head")
            self.blocks.append(block)
            taken += 1
        if not taken and not self.done:
            raise TransferError(f"peer has no block {self.last.sequence_no + 1}")
        return taken

    def models(self) -> list[str]:
        """Model digests the fetched blocks reference, in order, without duplicates."""
        return list(dict.fromkeys(d for b in self.blocks for d in referenced_models(b)))


def peer_order(urls: Sequence[str], me: int, start: int, busy: Sequence[int] = ()) -> list[str]:
    """The peers' URLs (all but index ``me``), beginning at the ``start``-th in turn.

    ``busy`` (default none) are peers to ask last, the last one last: the primaries of the
    next view and of the current one. A transfer reads tens of megabytes of chain pages
    from the peer it asks, and a primary serving them orders little meanwhile (in the
    soak, views whose primary was serving a transfer were voted out, twice the primary
    of the view entered just after the transfer began). They stay in the list.
    """
    last = list(dict.fromkeys(j for j in busy if j != me and 0 <= j < len(urls)))
    others = [u for j, u in enumerate(urls) if j != me and j not in last]
    tail = [urls[j] for j in reversed(last)]
    if not others:
        return tail
    k = start % len(others)
    return others[k:] + others[:k] + tail
