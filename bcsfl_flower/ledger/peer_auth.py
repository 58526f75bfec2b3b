"""Who is on the other end of a PBFT link: a signed challenge-response, once per connection.

Every node knows every node's Ed25519 public key (the cluster folder's ``.pub`` files).
When node ``i`` connects to node ``j``'s PBFT port:

1. ``i`` sends HELLO: ``MAGIC | i | j | nonce_i`` (indices 2 bytes big-endian, nonce 32
   random bytes);
2. ``j`` checks that the HELLO is for it and names another node, and answers CHALLENGE:
   ``nonce_j | sign_j("acceptor", nonce_j, nonce_i, j, i)``;
3. ``i`` checks that signature under ``j``'s key (it reached the node it meant to) and
   sends PROOF: ``sign_i("connector", nonce_i, nonce_j, i, j)``;
4. ``j`` checks the proof under ``i``'s key. Only then is the connection ``i``'s: every
   frame that follows is attributed to ``i``.

Each side signs its own fresh nonce together with the other's, so a recorded handshake
cannot be replayed, and the role and both indices, so a signature made for one link or
direction is no proof on another. Frames are not signed one by one (PBFT messages
carry their own signatures); this only keeps strangers off the channel, at two
signatures and two verifications per connection, none per frame.

The functions here are sans-IO (bytes in, bytes out); :mod:`~.transport` does the
reading and writing.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence

from bcsfl_flower.crypto import SigningKey, verify_signature

__all__ = ["CHALLENGE_SIZE", "HELLO_SIZE", "MAGIC", "PROOF_SIZE", "AuthError", "PeerAuth"]

MAGIC = b"BCSFL-PBFT-AUTH/1"
_HELLO = struct.Struct(f">{len(MAGIC)}sHH32s")
HELLO_SIZE = _HELLO.size
CHALLENGE_SIZE = 32 + 64
PROOF_SIZE = 64


class AuthError(ValueError):
    """A handshake that does not authenticate; ``str(err)`` says why."""


def _statement(role: bytes, own_nonce: bytes, peer_nonce: bytes, own: int, peer: int) -> bytes:
    return b"bcsfl-pbft-link|" + role + b"|" + own_nonce + peer_nonce + struct.pack(">HH", own, peer)


class PeerAuth:
    """One node's side of the handshake.

    Parameters
    ----------
    index : int
        This node's index.
    key : SigningKey
        This node's key (its public key is ``peer_keys[index]``).
    peer_keys : Sequence[str]
        Every node's public key (hex), in index order.
    """

    def __init__(self, index: int, key: SigningKey, peer_keys: Sequence[str]) -> None:
        if not 0 <= index < len(peer_keys) or peer_keys[index] != key.public_hex:
            raise ValueError(f"node {index}'s key is not peer_keys[{index}]")
        self.index, self.key, self.peer_keys = index, key, list(peer_keys)

    # -- the connecting side
    def hello(self, peer: int) -> tuple[bytes, bytes]:
        """``(HELLO to send to peer, this side's nonce)``."""
        nonce = os.urandom(32)
        return _HELLO.pack(MAGIC, self.index, peer, nonce), nonce

    def proof(self, peer: int, nonce: bytes, challenge: bytes) -> bytes:
        """Check ``peer``'s CHALLENGE to our HELLO (nonce ``nonce``); the PROOF to send back.

        Raises
        ------
        AuthError
            The answer is not ``peer``'s signature over this handshake.
        """
        if len(challenge) != CHALLENGE_SIZE:
            raise AuthError("short challenge")
        peer_nonce, sig = challenge[:32], challenge[32:]
        if not verify_signature(self.peer_keys[peer], sig, _statement(b"acceptor", peer_nonce, nonce, peer,
                                                                         self.index)):
            raise AuthError(f"node {peer}'s answer is not signed by its key")
        return self.key.sign(_statement(b"connector", nonce, peer_nonce, self.index, peer))

    # -- the accepting side
    def challenge(self, hello: bytes) -> tuple[int, bytes, bytes, bytes]:
        """Check a HELLO; ``(claimed peer, its nonce, our nonce, CHALLENGE to send)``.

        Raises
        ------
        AuthError
            Not a HELLO of this protocol, not for this node, or from no other node.
        """
        if len(hello) != HELLO_SIZE:
            raise AuthError("short hello")
        magic, peer, me, peer_nonce = _HELLO.unpack(hello)
        if magic != MAGIC:
            raise AuthError("not a PBFT link handshake")
        if me != self.index:
            raise AuthError(f"hello for node {me}, this is node {self.index}")
        if not 0 <= peer < len(self.peer_keys) or peer == self.index:
            raise AuthError(f"hello from unknown node {peer}")
        nonce = os.urandom(32)
        sig = self.key.sign(_statement(b"acceptor", nonce, peer_nonce, self.index, peer))
        return peer, peer_nonce, nonce, nonce + sig

    def check_proof(self, peer: int, peer_nonce: bytes, nonce: bytes, proof: bytes) -> None:
        """Check ``peer``'s PROOF for the handshake with nonces ``peer_nonce`` (its) and ``nonce`` (ours).

        Raises
        ------
        AuthError
            The proof is not ``peer``'s signature over this handshake.
        """
        if not verify_signature(self.peer_keys[peer], proof, _statement(b"connector", peer_nonce, nonce, peer,
                                                                          self.index)):
            raise AuthError(f"connection claiming to be node {peer} is not signed by its key")
