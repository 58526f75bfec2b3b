"""PBFT links are authenticated: a connection that does not prove it is a node is closed unread.

In-process transports on real sockets check the handshake itself (mutual, fresh, bound
to both indices); a real 4-node cluster checks that a TCP client without a node's key is
dropped, its frames never reach the replica, the refusal is counted in ``/health``, and
the cluster still commits.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from bcsfl_flower.crypto import SigningKey
from bcsfl_flower.ledger import make_enrolment
from bcsfl_flower.ledger.cluster import free_ports
from bcsfl_flower.ledger.peer_auth import HELLO_SIZE, MAGIC, AuthError, PeerAuth
from bcsfl_flower.ledger.transport import PeerTransport
from bcsfl_flower.ledger.wire import APP, PBFT, encode_frame

from .cluster_helpers import converge, federation, health, start_cluster

KEYS = [SigningKey.from_seed(f"peer-auth-node-{j}".encode()) for j in range(3)]
PUBS = [k.public_hex for k in KEYS]


def test_handshake_is_mutual_fresh_and_bound_to_both_indices() -> None:
    a, b = PeerAuth(0, KEYS[0], PUBS), PeerAuth(1, KEYS[1], PUBS)
    hello, nonce = a.hello(1)
    peer, peer_nonce, b_nonce, challenge = b.challenge(hello)
    assert peer == 0 and peer_nonce == nonce
    proof = a.proof(1, nonce, challenge)
    b.check_proof(0, peer_nonce, b_nonce, proof)  # accepted
    with pytest.raises(AuthError):  # replayed into another handshake (fresh acceptor nonce)
        _, n2, nonce2, _ = b.challenge(a.hello(1)[0])
        b.check_proof(0, n2, nonce2, proof)
    with pytest.raises(AuthError):  # node 2 cannot pass for node 0: the proof is checked under 0's key
        impostor = PeerAuth(2, KEYS[2], PUBS)
        hello2, n2 = impostor.hello(1)
        forged = hello2[:len(MAGIC)] + (0).to_bytes(2, "big") + hello2[len(MAGIC) + 2:]
        claimed, cn, bn, ch = b.challenge(forged)
        b.check_proof(claimed, cn, bn, impostor.key.sign(b"anything"))
    with pytest.raises(AuthError):  # the acceptor must be the node dialled
        hello3, n3 = a.hello(2)
        c = PeerAuth(2, KEYS[2], PUBS)
        _, _, _, ch3 = c.challenge(hello3)
        a.proof(1, n3, ch3)  # an answer by node 2 does not prove node 1
    for bad in (b"x" * HELLO_SIZE, hello[:-1], a.hello(2)[0], PeerAuth(1, KEYS[1], PUBS).hello(0)[0][:len(MAGIC)]
                + (1).to_bytes(2, "big") + (1).to_bytes(2, "big") + b"\0" * 32):
        with pytest.raises(AuthError):
            b.challenge(bad)
    with pytest.raises(ValueError):
        PeerAuth(0, KEYS[1], PUBS)


async def _pair(got: list[tuple[int, bytes]], timeout: float = 0.5) -> list[PeerTransport]:
    ports = free_ports(3)
    addrs = [("127.0.0.1", p) for p in ports]
    nodes = [PeerTransport(j, addrs, (lambda kind, payload: got.append((kind, payload))) if j == 0
                           else (lambda kind, payload: None), key=KEYS[j], peer_keys=PUBS,
                           handshake_timeout=timeout) for j in range(3)]
    for t in nodes:
        await t.start()
    return nodes


async def _until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_transport_accepts_nodes_and_drops_strangers_unread() -> None:
    async def scenario() -> None:
        got: list[tuple[int, bytes]] = []
        nodes = await _pair(got)
        try:
            await _until(lambda: all(len(t.connected_peers()) == 2 for t in nodes))
            nodes[1].send(0, APP, b'{"from": 1}')
            await _until(lambda: got == [(APP, b'{"from": 1}')])
            # A stranger: a well-formed frame where the handshake should be.
            _, port = nodes[0].addrs[0]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(encode_frame(PBFT, b"\x00" * 64) + encode_frame(APP, json.dumps({"type": "txs"}).encode()))
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the node, nothing answered
            # One that says nothing at all is closed after the handshake timeout.
            r2, w2 = await asyncio.open_connection("127.0.0.1", port)
            assert await asyncio.wait_for(r2.read(), 5) == b""
            # A node with the wrong key (node 2's key claiming index 1).
            impostor = PeerAuth(2, KEYS[2], PUBS)
            hello, nonce = impostor.hello(0)
            r3, w3 = await asyncio.open_connection("127.0.0.1", port)
            w3.write(hello[:len(MAGIC)] + (1).to_bytes(2, "big") + hello[len(MAGIC) + 2:])
            await r3.readexactly(96)
            w3.write(KEYS[2].sign(b"not the statement") + encode_frame(APP, b'{"forged": 1}'))
            await w3.drain()
            assert await asyncio.wait_for(r3.read(), 5) == b""
            for w in (writer, w2, w3):
                w.close()
            stats = nodes[0].stats()["auth"]
            assert stats["refused"] == 3 and stats["accepted"] >= 2, stats
            assert stats["refused_why"] == {"bad handshake": 2, "no handshake in time": 1}
            assert got == [(APP, b'{"from": 1}')]  # no stranger's frame reached the handler
            assert stats["received_from"] == {1: 1}  # attributed to the node that proved who it is
            nodes[2].send(0, APP, b"still up")
            await _until(lambda: got[-1] == (APP, b"still up"))
        finally:
            for t in nodes:
                await t.close()

    asyncio.run(scenario())


def test_a_node_without_the_clusters_keys_gets_no_link() -> None:
    async def scenario() -> None:
        ports = free_ports(2)
        addrs = [("127.0.0.1", p) for p in ports]
        got: list[tuple[int, bytes]] = []
        honest = PeerTransport(0, addrs, lambda k, p: got.append((k, p)), key=KEYS[0], peer_keys=PUBS[:2])
        rogue_key = SigningKey.from_seed(b"rogue")
        rogue = PeerTransport(1, addrs, lambda k, p: None, key=rogue_key, peer_keys=[PUBS[0], rogue_key.public_hex])
        await honest.start()
        await rogue.start()
        try:
            rogue.send(0, APP, b"from the rogue")
            await _until(lambda: honest.stats()["auth"]["refused"] >= 1 and honest.stats()["links"][1]["auth_failed"] >= 1)
            assert rogue.connected_peers() == [] and honest.connected_peers() == []
            assert got == []
        finally:
            await honest.close()
            await rogue.close()

    asyncio.run(scenario())


def test_a_cluster_drops_a_stranger_on_its_pbft_port_and_still_commits(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path / "c", 4)
    try:
        # What a stranger sends where a node's handshake belongs: a garbage PBFT frame, then an
        # enrolment the authority really signed, as a forwarded-transactions frame. Had the
        # node read it, the enrolment would be batched and committed.
        ticket = make_enrolment(cluster.authority, "smuggled", SigningKey.from_seed(b"smuggled").public_hex)
        frames = encode_frame(PBFT, b"\xff" * 200) + encode_frame(
            APP, json.dumps({"type": "txs", "txs": [ticket.to_json()], "hops": 1}).encode())
        for target in range(4):
            with socket.create_connection(("127.0.0.1", cluster.peers[target].pbft_port), timeout=10) as sock:
                sock.sendall(frames)
                sock.settimeout(10)
                assert sock.recv(1024) == b""  # closed by the node, nothing answered
        fed = federation(cluster, cluster.urls[1], clients=1)  # the cluster still commits
        fed.ledger.close()
        found = converge(cluster.urls)
        for h in found:
            auth = h["transport"]["auth"]
            assert auth["enabled"] and auth["refused"] >= 1 and auth["refused_why"].get("bad handshake", 0) >= 1, auth
            assert sorted(h["peers_connected"]) == sorted(set(range(4)) - {h["node"]})
        assert httpx.get(f"{cluster.urls[0]}/identities/smuggled", timeout=10).status_code == 404
        assert httpx.get(f"{cluster.urls[0]}/identities/client-0", timeout=10).status_code == 200
        assert health(cluster.urls[2])["height"] == found[0]["height"]
    finally:
        cluster.stop()
