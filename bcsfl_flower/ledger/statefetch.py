"""Fetching the blocks and models a lagging ledger node lacks, from its peers, over HTTP.

The thin IO around :class:`~.transfer_plan.BlockFetch` (which pages to ask for, and
whether they are the certified chain): :func:`transfer` tries the peers in turn, reads
each answer with a byte bound (:func:`read_bounded`), checks model bytes against their
digests, and writes only once a peer's blocks reached the certified head, each through
``Ledger.append`` (every rule again: producer and transaction signatures, certificates,
referenced models) and models through ``put_model``. It blocks: a node runs it in a
worker thread (:mod:`~.snapshot`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from bcsfl_flower.crypto import sha256_hex

from .block import Block, LedgerError, parse_json
from .transfer_plan import BlockFetch, FetchLimits, TransferError, peer_order

__all__ = ["BlockFetch", "Diverged", "FetchLimits", "Transfer", "TransferError", "fetch_blocks", "fetch_models",
           "peer_models", "peer_order", "read_bounded", "transfer"]


class _Budget:
    """Bytes read so far in one transfer, against ``FetchLimits.max_total_bytes``."""

    def __init__(self, limits: FetchLimits) -> None:
        self.limits = limits
        self.read = 0


def read_bounded(client: httpx.Client, url: str, limit: int, budget: _Budget | None = None,
                 params: dict[str, Any] | None = None) -> bytes:
    """GET ``url`` and return the body of a 200 answer, read at most ``limit`` bytes far.

    Parameters
    ----------
    client : httpx.Client
        The HTTP client.
    url : str
        The full URL.
    limit : int
        Largest body accepted.
    budget : _Budget | None (default: None)
        The transfer's running total, charged and checked as the body is read.
    params : dict[str, Any] | None (default: None)
        Query parameters.

    Raises
    ------
    TransferError
        On a transport error, a status other than 200 or a body over a bound.
    """
    try:
        with client.stream("GET", url, params=params) as resp:
            if resp.status_code != 200:
                raise TransferError(f"GET {url}: HTTP {resp.status_code}", resp.status_code)
            parts, size = [], 0
            for chunk in resp.iter_bytes():
                size += len(chunk)
                if budget is not None:
                    budget.read += len(chunk)
                    if budget.read > budget.limits.max_total_bytes:
                        raise TransferError("state transfer exceeds max_total_bytes")
                if size > limit:
                    raise TransferError(f"GET {url}: body over {limit} bytes")
                parts.append(chunk)
            return b"".join(parts)
    except httpx.HTTPError as err:
        raise TransferError(f"GET {url}: {type(err).__name__}: {err}") from None


def fetch_blocks(client: httpx.Client, url: str, plan: BlockFetch, budget: _Budget) -> BlockFetch:
    """Run ``plan`` against the peer at ``url`` (its HTTP base URL) until done.

    Raises
    ------
    TransferError
        If the peer cannot be read or serves anything but the certified chain.
    """
    while (ask := plan.next_page()) is not None:
        try:
            body = read_bounded(client, f"{url}/getBlockchain", budget.limits.max_response_bytes, budget,
                                params={"from": ask[0], "limit": ask[1]})
        except TransferError as err:
            if err.status != 422 or plan.page == 1:
                raise
            plan.page //= 2  # a page over the peer's max_page: ask for less
            continue
        try:
            plan.take(parse_json(body))
        except LedgerError as err:
            raise TransferError(f"{url}: malformed chain page: {err}") from None
    return plan


def fetch_models(client: httpx.Client, url: str, digests: Iterable[str], store: Callable[[bytes], str],
                 max_bytes: int, budget: _Budget) -> int:
    """Fetch each model of ``digests`` from the peer at ``url``, check and store it; how many.

    Parameters
    ----------
    client : httpx.Client
        The HTTP client.
    url : str
        The peer's HTTP base URL.
    digests : Iterable[str]
        SHA-256 hex digests of the models wanted.
    store : Callable[[bytes], str]
        Stores model bytes and returns their digest (``Ledger.put_model``).
    max_bytes : int
        Largest model accepted (the charter's ``max_model_bytes``).
    budget : _Budget
        The transfer's byte budget.

    Raises
    ------
    TransferError
        If a model cannot be read, or its bytes do not hash to its digest.
    """
    count = 0
    for digest in digests:
        data = read_bounded(client, f"{url}/models/{digest}", max_bytes, budget)
        if sha256_hex(data) != digest:
            raise TransferError(f"{url}: model {digest[:16]} does not hash to its digest")
        try:
            store(data)
        except LedgerError as err:
            raise TransferError(f"model {digest[:16]}: {err}") from None
        count += 1
    return count


def peer_models(client: httpx.Client, url: str, budget: _Budget) -> list[str]:
    """The model digests the peer at ``url`` lists (``GET /models``), well-formed ones only."""
    body = read_bounded(client, f"{url}/models", budget.limits.max_response_bytes, budget)
    try:
        listed = parse_json(body).get("models")
    except (LedgerError, AttributeError):
        raise TransferError(f"{url}: malformed /models answer") from None
    if not isinstance(listed, list):
        raise TransferError(f"{url}: malformed /models answer")
    return [d for d in listed if isinstance(d, str) and len(d) == 64
            and all(c in "0123456789abcdef" for c in d)]


def new_budget(limits: FetchLimits) -> _Budget:
    """A fresh byte budget for one transfer."""
    return _Budget(limits)


@dataclass
class Transfer:
    """What one state transfer wrote: the blocks appended (in order), models stored, from where."""

    blocks: list[Block] = field(default_factory=list)
    models: int = 0
    bytes: int = 0
    peer: str | None = None
    errors: list[str] = field(default_factory=list)
    start: int = 0  # this node's chain height when the transfer began


class Diverged(Exception):
    """This node's own file contradicts the certified checkpoint (it must stop, not diverge)."""


def transfer(ledger: Any, height: int, head: str, models: int, urls: Sequence[str],
             limits: FetchLimits, stop: Callable[[], bool] = lambda: False) -> Transfer:
    """Bring ``ledger`` up to the certified chain ``height``/``head`` from the peers ``urls``.

    Blocking (a node calls it in a worker thread). Peers are tried in turn: one whose
    answer fails :class:`BlockFetch`'s checks or cannot be read is skipped. The blocks
    and the models they reference are fetched and checked before anything is written;
    then each block goes through ``ledger.append`` (every rule) and, while the store
    holds fewer than ``models`` models, the peers' other models are fetched too.

    Parameters
    ----------
    ledger : SqliteLedger
        This node's ledger.
    height : int
        The certified chain height.
    head : str
        The certified head's hash.
    models : int
        How many models the certified state stores.
    urls : Sequence[str]
        Peers' HTTP base URLs, in the order to try them.
    limits : FetchLimits
        Page size and byte bounds.
    stop : Callable[[], bool] (default: never)
        Polled between blocks: True abandons the transfer (the node is closing).

    Raises
    ------
    TransferError
        If no peer served the certified chain (the reasons, one per peer).
    Diverged
        If this node's file holds another block where the certified head is, or the
        ledger's rules refuse a block of the certified chain.
    """
    mine = ledger.latest()
    out = Transfer(start=mine.sequence_no + 1)
    if mine.sequence_no >= height - 1:  # the file is already there (or beyond): check, fetch nothing
        if ledger.block(height - 1).hash != head:
            raise Diverged(f"block {height - 1} of this node's file is not the certified head")
        return out
    budget = new_budget(limits)
    max_model = ledger.state().charter.max_model_bytes if ledger.state().charter else 16 * 1024 * 1024
    with httpx.Client(timeout=limits.timeout) as client:
        for url in urls:
            plan = BlockFetch(mine, height, head, limits.page)
            try:
                fetch_blocks(client, url, plan, budget)
                wanted = [d for d in plan.models() if not ledger.has_model(d)]
                out.models += fetch_models(client, url, wanted, ledger.put_model, max_model, budget)
            except TransferError as err:
                out.errors.append(str(err))
                continue
            for block in plan.blocks:
                if stop():
                    raise TransferError("node closing")
                if _append(ledger, block):
                    out.blocks.append(block)
            out.peer = url
            break
        else:
            raise TransferError("; ".join(out.errors) or "no peer to fetch from")
        for url in [out.peer, *(u for u in urls if u != out.peer)]:
            if len(ledger.model_digests()) >= models or stop():
                break
            try:  # models uploaded but not (yet) referenced by a block: later blocks may need them
                have = set(ledger.model_digests())
                wanted = [d for d in peer_models(client, url, budget) if d not in have]
                out.models += fetch_models(client, url, wanted, ledger.put_model, max_model, budget)
            except TransferError as err:
                out.errors.append(str(err))
    out.bytes = budget.read
    return out


def _append(ledger: Any, block: Block) -> bool:
    """Append a block of the certified chain; False if the file holds it already.

    Raises
    ------
    Diverged
        If the file holds another block at its height, or the rules refuse it.
    """
    try:
        ledger.append(block)
        return True
    except LedgerError as err:
        if ledger.latest().sequence_no >= block.sequence_no and ledger.block(block.sequence_no).hash == block.hash:
            return False  # executed here meanwhile (the same block): nothing to do
        raise Diverged(f"block {block.sequence_no} of the certified chain refused: {err}") from None
