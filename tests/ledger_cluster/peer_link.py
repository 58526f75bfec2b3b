"""A test's own PBFT link into a running cluster, authenticated as one of its nodes.

Tests that play a faulty node (one that forwards what an honest node would not) use
the key that node holds in the cluster folder, as a real faulty node would: the
handshake of :mod:`bcsfl_flower.ledger.peer_auth` keeps everyone else out.
"""

from __future__ import annotations

import socket

from bcsfl_flower.crypto import SigningKey
from bcsfl_flower.ledger.cluster import LocalCluster, node_files
from bcsfl_flower.ledger.peer_auth import CHALLENGE_SIZE, PeerAuth


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed during the handshake")
        data += chunk
    return data


def node_link(cluster: LocalCluster, as_node: int, to_node: int, timeout: float = 10.0) -> socket.socket:
    """A socket to ``to_node``'s PBFT port that has passed the handshake as ``as_node``.

    Parameters
    ----------
    cluster : LocalCluster
        The running cluster (its folder holds every node's key).
    as_node : int
        The node whose key authenticates the link.
    to_node : int
        The node to connect to (another one).
    timeout : float (default: 10.0)
        Socket timeout in seconds.

    Returns
    -------
    socket.socket
        Connected and authenticated: frames written to it reach ``to_node``'s replica.
    """
    key = SigningKey.load_or_create(node_files(cluster.folder, as_node)[0])
    pubs = [node_files(cluster.folder, j)[1].read_text().strip() for j in range(cluster.n)]
    auth = PeerAuth(as_node, key, pubs)
    sock = socket.create_connection(("127.0.0.1", cluster.peers[to_node].pbft_port), timeout=timeout)
    try:
        hello, nonce = auth.hello(to_node)
        sock.sendall(hello)
        sock.sendall(auth.proof(to_node, nonce, _read_exactly(sock, CHALLENGE_SIZE)))
    except BaseException:
        sock.close()
        raise
    return sock
