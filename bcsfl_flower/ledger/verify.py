"""Full re-verification of a ledger from its stored rows and model blobs.

``verify_chain`` replays every stored block from genesis through the same
:func:`~.replay.advance` that ``append`` runs (structure, then the federation's rules:
charter, enrolments signed by the authority, round certificates checked against the
committee recomputed from the chain, stakes recomputed from certified decisions), and
checks every referenced model against its key. A chain is only as trustworthy as its
charter, and whoever can write the file can also write a whole new, self-consistent
chain under an authority of their own, or drop its newest blocks; so the caller can
hold anchors outside the file: the expected enrolment key (``authority``), a head hash
or height accepted earlier (``head``, ``height``), or a running ledger node to compare
with (``against``). The OK summary names the head and the authority, to be recorded as
the next anchors.
"""

from __future__ import annotations

from dataclasses import dataclass

from bcsfl_flower.crypto import sha256_hex

from .base import Ledger
from .block import GENESIS, Block, LedgerError
from .replay import Replay, advance, genesis_replay
from .rules import is_digest, referenced_models

__all__ = ["VerifyReport", "verify_chain"]


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of ``verify_chain``.

    Attributes
    ----------
    ok : bool
        True when every check passed.
    blocks_checked : int
        Blocks found valid (all of them when ``ok``; those before the bad one if not).
    models_checked : int
        Distinct stored models whose bytes were found to hash to their key.
    first_bad_block : int | None
        ``sequenceNo`` of the first invalid block; ``None`` when ``ok`` or when the
        fault is not in one block (an unreferenced stored model, a missing anchor).
    reason : str
        Why verification failed (``""`` when ``ok``).
    head : str (default: "")
        Hash of the newest block checked.
    authority : str (default: "")
        The enrolment key the chain's charter names (``""``: no charter).
    """

    ok: bool
    blocks_checked: int
    models_checked: int
    first_bad_block: int | None
    reason: str
    head: str = ""
    authority: str = ""

    def summary(self) -> str:
        """The one-line summary the ``ledger verify`` command prints.

        When ``ok`` it names the head hash and the charter's enrolment key (first 16
        hex), the anchors to pass to a later ``verify`` (``--head``, ``--authority``).
        """
        if self.ok:
            return (f"OK: {self.blocks_checked} blocks, {self.models_checked} models verified; "
                    f"head {self.head}; enrolment authority {self.authority[:16]}")
        if self.first_bad_block is None:
            return f"FAILED: {self.reason}"
        return f"FAILED at block {self.first_bad_block}: {self.reason}"


class _Fail(Exception):
    def __init__(self, block: int | None, reason: str) -> None:
        super().__init__(reason)
        self.block = block
        self.reason = reason


def _check_model(ledger: Ledger, digest: str) -> None:
    try:
        data = ledger.read_model_raw(digest)
    except KeyError:
        raise LedgerError(f"model {digest} is missing from the store") from None
    if not isinstance(data, bytes) or sha256_hex(data) != digest:
        raise LedgerError(f"stored model {digest} does not hash to its key")


def _walk(ledger: Ledger, counts: dict[str, int], checked: set[str]) -> tuple[Replay, list[str]]:
    """Replay every stored row; the final replay and every block's hash (genesis first)."""
    rep = genesis_replay()
    hashes: list[str] = []
    for index, row in enumerate(ledger.block_rows()):
        seq = row.sequence_no
        if seq != index:
            if isinstance(seq, int) and seq > index:
                raise _Fail(index, f"block {index} is missing (next stored block is {seq})")
            raise _Fail(index, f"stored sequence number {seq!r} where {index} was expected")
        try:
            if index == 0:
                if tuple(row) != tuple(GENESIS.to_row()):
                    raise LedgerError("genesis block differs from the standard genesis block")
                hashes.append(GENESIS.hash)
                counts["blocks"] += 1
                continue
            block = Block.from_row(row)
            rep = advance(rep, block)  # structure, then the federation's rules
            for digest in referenced_models(block):
                if digest not in checked:
                    _check_model(ledger, digest)  # a round's model-params is what the certificate signs
                    checked.add(digest)
        except LedgerError as err:
            raise _Fail(index, str(err)) from None
        hashes.append(block.hash)
        counts["blocks"] += 1
    if not hashes:
        raise _Fail(0, "genesis block is missing")
    return rep, hashes


def _check_store(ledger: Ledger, checked: set[str]) -> None:
    for digest in ledger.model_digests():
        if digest in checked:
            continue
        if not is_digest(digest):
            raise _Fail(None, f"model store key {digest!r} is not a sha256 hex digest")
        try:
            _check_model(ledger, digest)
        except LedgerError as err:
            raise _Fail(None, f"unreferenced {err}") from None
        checked.add(digest)


def _check_anchors(rep: Replay, hashes: list[str], authority: str | None, head: str | None,
                   height: int | None) -> None:
    charter = rep.state.charter
    if charter is None:
        raise _Fail(None, "no charter: the chain has no authority")
    if authority is not None and charter.enrolment_key != authority.strip().lower():
        raise _Fail(1, f"the charter's enrolment key {charter.enrolment_key[:16]}... is not the expected "
                       f"enrolment authority {authority.strip()[:16]}... (history rewritten under another "
                       "authority)")
    if height is not None and len(hashes) < height:
        raise _Fail(None, f"truncated: height {len(hashes)} < {height}")
    if head is not None and head.strip().lower() not in hashes:
        raise _Fail(None, f"truncated or rewritten: head {head.strip()} not found")


def _check_against(hashes: list[str], url: str, page: int = 200) -> None:
    """Every block the node at ``url`` and this copy both hold is the same; the node is not ahead.

    Blocks are compared by hash: this copy's hashes were just recomputed from their
    contents, so an equal hash is an equal block.
    """
    from .remote import RemoteLedger  # httpx only when a node is asked

    try:
        with RemoteLedger(url) as node:
            theirs = node.height()
            for start in range(0, min(theirs, len(hashes)), page):
                for blk in node.blocks(start, min(start + page, len(hashes))):
                    if blk.sequence_no >= len(hashes) or hashes[blk.sequence_no] != blk.hash:
                        raise _Fail(blk.sequence_no, f"differs from block {blk.sequence_no} of the node at "
                                                     f"{url} (rewritten history or a fork)")
    except (LedgerError, ValueError, OSError) as err:
        raise _Fail(None, f"cannot read the chain of the node at {url}: {err}") from None
    if theirs > len(hashes):
        raise _Fail(None, f"truncated or behind: height {len(hashes)} < {theirs} at the node at {url}")


def verify_chain(ledger: Ledger, *, authority: str | None = None, head: str | None = None,
                 height: int | None = None, against: str | None = None) -> VerifyReport:
    """Re-verify every block and every stored model of ``ledger``, and the anchors given.

    Checks, from the stored rows: the exact genesis block; contiguous sequence numbers;
    each block's hash, link, timestamp order and producer signature; each transaction's
    hash and signature; the federation's rules replayed from genesis (a charter signed by
    the key it names, enrolments signed by that key, transactions from enrolled keys,
    every round certified by 2f+1 of the committee the chain draws, stakes that follow
    from the certified decisions); that every referenced model is stored and hashes to
    its key (so a round's stored model is the one its certificate signs); that every
    model in the store hashes to its key; and that the chain has a charter.

    Parameters
    ----------
    ledger : Ledger
        The ledger to verify (any backend); only read.
    authority : str | None (default: None)
        The expected enrolment authority's public key (hex): the charter must name it.
    head : str | None (default: None)
        A block hash accepted earlier: the chain must contain it.
    height : int | None (default: None)
        The chain must have at least this many blocks (genesis included).
    against : str | None (default: None)
        URL of a running ledger node: every block both hold must be equal, and the
        node's chain must not be longer (else this copy is truncated or behind).

    Returns
    -------
    VerifyReport
        ``ok``, counts, head and authority, or the first bad block and the reason.
    """
    counts = {"blocks": 0}
    checked: set[str] = set()
    rep: Replay | None = None
    try:
        rep, hashes = _walk(ledger, counts, checked)
        _check_store(ledger, checked)
        _check_anchors(rep, hashes, authority, head, height)
        if against:
            _check_against(hashes, against)
    except _Fail as fail:
        return VerifyReport(False, counts["blocks"], len(checked), fail.block, fail.reason,
                            *_names(rep))
    except Exception as err:  # unreadable storage counts as a failed verification
        return VerifyReport(False, counts["blocks"], len(checked), None, f"storage error: {err}", *_names(rep))
    return VerifyReport(True, counts["blocks"], len(checked), None, "", *_names(rep))


def _names(rep: Replay | None) -> tuple[str, str]:
    if rep is None:
        return "", ""
    charter = rep.state.charter
    return rep.head.hash, charter.enrolment_key if charter is not None else ""
