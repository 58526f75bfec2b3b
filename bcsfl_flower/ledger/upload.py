"""Who may put a model into a ledger cluster's store: an enrolled identity, by signature.

Model bytes travel to ``POST /models`` outside any block, so the upload itself carries
the authority: the header ``X-Bcsfl-Client`` names an enrolled identity and
``X-Bcsfl-Sign`` is that identity's Ed25519 signature over
``sha256(b"bcsfl-model|" + digest_hex)``. The node checks it on arrival and every node
checks it again when it executes the ordered ``model`` operation, against the chain
state at that point, so an outsider cannot fill the nodes' disks and a faulty node
cannot order an upload nobody signed. The same two functions serve the uploader
(:class:`~.remote.RemoteLedger`) and the checkers.
"""

from __future__ import annotations

import hashlib
import re

from bcsfl_flower.crypto import SigningKey, check_signature
from bcsfl_flower.federation import FederationState

from .block import LedgerError

__all__ = [
    "CLIENT_HEADER", "SIGN_HEADER", "UploadRefused", "check_model_size", "check_upload", "upload_message",
    "upload_signature",
]

CLIENT_HEADER = "X-Bcsfl-Client"
SIGN_HEADER = "X-Bcsfl-Sign"
_HEX128 = re.compile(r"[0-9a-f]{128}")


class UploadRefused(LedgerError):
    """An upload without authority; ``status`` is the HTTP status that says why (401/403/413)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def upload_message(digest: str) -> bytes:
    """What an uploader signs for the model whose SHA-256 hex digest is ``digest``."""
    return hashlib.sha256(b"bcsfl-model|" + digest.encode("ascii")).digest()


def upload_signature(key: SigningKey, digest: str) -> str:
    """``key``'s upload signature (hex) for the model ``digest``."""
    return key.sign(upload_message(digest)).hex()


def check_model_size(state: FederationState, size: int) -> None:
    """Refuse a model larger than the charter allows (:class:`UploadRefused`, 413)."""
    if state.charter is not None and size > state.charter.max_model_bytes:
        raise UploadRefused(413, f"model of {size} bytes exceeds the charter's max_model_bytes "
                                 f"({state.charter.max_model_bytes})")


def check_upload(state: FederationState, client_id: str | None, sign: str | None, digest: str) -> None:
    """Check that ``client_id`` is enrolled in ``state`` and signed the upload of ``digest``.

    Parameters
    ----------
    state : FederationState
        The chain state the upload is judged against.
    client_id : str | None
        The ``X-Bcsfl-Client`` header (None: absent).
    sign : str | None
        The ``X-Bcsfl-Sign`` header, hex (None: absent).
    digest : str
        SHA-256 hex digest of the uploaded bytes.

    Raises
    ------
    UploadRefused
        401 when either header is missing, 403 for an unknown identity or a signature
        that does not verify under its enrolled key.
    """
    if not client_id or not sign:
        raise UploadRefused(401, f"model upload needs the {CLIENT_HEADER} and {SIGN_HEADER} headers "
                                 "(an enrolled identity's signature)")
    key = state.key(client_id)
    if key is None:
        raise UploadRefused(403, f"model upload by {client_id[:64]!r}, which is not enrolled")
    if not isinstance(sign, str) or _HEX128.fullmatch(sign) is None \
            or not check_signature(key, bytes.fromhex(sign), upload_message(digest)):
        raise UploadRefused(403, f"model upload: {SIGN_HEADER} is not {client_id[:64]!r}'s signature "
                                 f"over model {digest}")
