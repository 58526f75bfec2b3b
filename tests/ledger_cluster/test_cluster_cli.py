"""``bcsfl ledger up`` founds and starts a serving cluster and stops it cleanly on SIGTERM;
``ledger serve`` refuses a chain founded by another charter."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bcsfl_flower.crypto import SigningKey, sha256_hex
from bcsfl_flower.ledger import SqliteLedger, make_enrolment, verify_chain
from bcsfl_flower.ledger.charter_file import load_key, read_charter
from bcsfl_flower.ledger.cli import main as ledger_cli
from bcsfl_flower.ledger.cluster import node_command, node_env
from bcsfl_flower.ledger.upload import CLIENT_HEADER, SIGN_HEADER, upload_signature

from conftest import REPO_ROOT

NODES = 4


def _free_block(count: int) -> int:
    """A base port with ``count`` consecutive ports free on 127.0.0.1."""
    for _ in range(200):
        base = random.randint(20000, 40000)
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port block")


@pytest.fixture
def up_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """``python -m bcsfl_flower.cli ledger up`` in the background; always stopped."""
    base = _free_block(2 * NODES)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p))
    log = open(tmp_path / "up.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "bcsfl_flower.cli", "ledger", "up", "--nodes", str(NODES),
         "--base-port", str(base), "--dir", str(tmp_path / "cluster")],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        yield proc, base, tmp_path
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _ports_closed(base: int) -> bool:
    for port in range(base, base + 2 * NODES):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return False
    return True


def test_up_serves_and_stops_on_sigterm(
    up_process: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    proc, base, folder = up_process
    url = f"http://127.0.0.1:{base}"
    deadline = time.monotonic() + 90
    for j in range(NODES):  # every node serves its chain, on consecutive ports
        while True:
            try:
                chain = httpx.get(f"http://127.0.0.1:{base + j}/getBlockchain",
                                  timeout=5).json()["chain"]
                break
            except httpx.HTTPError:
                assert proc.poll() is None, (folder / "up.log").read_text()
                assert time.monotonic() < deadline, "cluster did not come up"
                time.sleep(0.2)
        assert chain[0]["hash"] == "genesis-hash"
    # The folder holds the enrolment key and the charter every node installed as block 1.
    authority = load_key(folder / "cluster" / "enrolment.key")
    charter = read_charter(folder / "cluster" / "charter.json")
    assert charter.data["charter"]["enrolment"] == authority.public_hex
    assert all(httpx.get(f"http://127.0.0.1:{base + j}/blocks/1", timeout=5).json() == charter.to_json()
               for j in range(NODES))
    bad = httpx.post(f"{url}/postModelUpdate", content=b'{"nonsense": [', timeout=10,
                     headers={"content-type": "application/json"})
    assert 400 <= bad.status_code < 500
    assert httpx.get(f"{url}/getLatestModel", timeout=10).status_code in (200, 404)
    assert httpx.post(f"{url}/models", content=b"up test", timeout=60).status_code == 401
    client = SigningKey.generate()
    enrolled = httpx.post(f"{url}/identities", json=make_enrolment(authority, "c1", client.public_hex).to_json(),
                          timeout=60)
    assert enrolled.status_code == 200, enrolled.text
    model = httpx.post(f"{url}/models", content=b"up test", timeout=60, headers={
        CLIENT_HEADER: "c1", SIGN_HEADER: upload_signature(client, sha256_hex(b"up test"))})
    assert model.status_code == 200, model.text
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, (folder / "up.log").read_text()
    assert _ports_closed(base)
    for j in range(NODES):
        db = folder / "cluster" / f"node-{j}.db"
        with SqliteLedger(db, read_only=True) as led:
            assert verify_chain(led, authority=authority.public_hex).ok and led.has_model(model.json()["hash"])
            assert led.identity("c1") == client.public_hex
        assert ledger_cli(["verify", str(db), "--authority-key", str(folder / "cluster" / "enrolment.key"),
                           "--height", "3"]) == 0


def test_serve_refuses_a_chain_with_another_charter(tmp_path: Path) -> None:
    """One node whose file was founded by another authority: it exits instead of serving."""
    from bcsfl_flower.ledger.charter_file import ensure_charter

    ensure_charter(tmp_path / "a")
    _, other = ensure_charter(tmp_path / "b")
    db = tmp_path / "a" / "node-0.db"
    with SqliteLedger(db) as led:
        led.install_charter(other)
    base = _free_block(2)
    res = subprocess.run(node_command(["--id", "0", "--peers", f"127.0.0.1:{base}:{base + 1}", "--dir",
                                       str(tmp_path / "a"), "--charter", str(tmp_path / "a" / "charter.json")]),
                         env=node_env(), capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "another charter" in res.stderr
    res = subprocess.run(node_command(["--id", "0", "--peers", f"127.0.0.1:{base}:{base + 1}", "--dir",
                                       str(tmp_path / "c")]), env=node_env(), capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2 and "no charter" in res.stderr
