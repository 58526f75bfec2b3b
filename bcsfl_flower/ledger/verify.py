"""Full re-verification of a ledger from its stored rows and model blobs."""

from __future__ import annotations

from dataclasses import dataclass

from bcsfl_flower.crypto import sha256_hex

from .base import Ledger
from .block import GENESIS, Block, BlockRow, LedgerError
from .rules import check_block, check_link, is_digest, referenced_models

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
        only fault is in an unreferenced stored model.
    reason : str
        Why verification failed (``""`` when ``ok``).
    """

    ok: bool
    blocks_checked: int
    models_checked: int
    first_bad_block: int | None
    reason: str

    def summary(self) -> str:
        """The one-line summary the ``ledger verify`` command prints."""
        if self.ok:
            return f"OK: {self.blocks_checked} blocks, {self.models_checked} models verified"
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


def _check_genesis(row: BlockRow) -> None:
    if tuple(row) != tuple(GENESIS.to_row()):
        raise LedgerError("genesis block differs from the standard genesis block")


def _walk(ledger: Ledger, counts: dict[str, int], checked: set[str]) -> None:
    registered = {cid: rec.get("public_key") for cid, rec in ledger.identities().items()}
    prev: Block | None = None
    for index, row in enumerate(ledger.block_rows()):
        seq = row.sequence_no
        if seq != index:
            if isinstance(seq, int) and seq > index:
                raise _Fail(index, f"block {index} is missing (next stored block is {seq})")
            raise _Fail(index, f"stored sequence number {seq!r} where {index} was expected")
        try:
            if index == 0:
                _check_genesis(row)
                prev = GENESIS
                counts["blocks"] += 1
                continue
            block = Block.from_row(row)
            assert prev is not None
            check_link(prev, block)
            check_block(block)
            idents = block.data.get("identities")
            for cid, key in (idents if isinstance(idents, dict) else {}).items():
                if registered.get(cid) != key:
                    raise LedgerError(
                        f"identity {cid!r} in the block disagrees with the identities table"
                    )
            for digest in referenced_models(block):
                if digest not in checked:
                    _check_model(ledger, digest)
                    checked.add(digest)
        except LedgerError as err:
            raise _Fail(index, str(err)) from None
        prev = block
        counts["blocks"] += 1
    if prev is None:
        raise _Fail(0, "genesis block is missing")


def verify_chain(ledger: Ledger) -> VerifyReport:
    """Re-verify every block and every stored model of ``ledger``.

    Checks, from the stored rows: the exact genesis block; contiguous sequence
    numbers; each block's hash recomputed from its fields, its ``lastHash`` link,
    non-decreasing timestamps and the producer's signature; each transaction's hash
    and signature; quorum certificates; agreement of ``data["identities"]`` with the
    identities table; that every referenced model is stored and hashes to its key;
    and finally that every model blob in the store hashes to its key.

    Parameters
    ----------
    ledger : Ledger
        The ledger to verify (any backend).

    Returns
    -------
    VerifyReport
        ``ok`` and counts, or the first bad block and the reason.
    """
    counts = {"blocks": 0}
    checked: set[str] = set()
    try:
        _walk(ledger, counts, checked)
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
    except _Fail as fail:
        return VerifyReport(False, counts["blocks"], len(checked), fail.block, fail.reason)
    except Exception as err:  # unreadable storage counts as a failed verification
        return VerifyReport(
            False, counts["blocks"], len(checked), None, f"storage error: {err}"
        )
    return VerifyReport(True, counts["blocks"], len(checked), None, "")
