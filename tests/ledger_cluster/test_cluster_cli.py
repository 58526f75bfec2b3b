"""``bcsfl ledger up`` starts a serving cluster and stops it cleanly on SIGTERM."""

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

from bcsfl_flower.ledger import SqliteLedger, verify_chain

from .conftest import REPO_ROOT

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
    bad = httpx.post(f"{url}/postModelUpdate", content=b'{"nonsense": [', timeout=10,
                     headers={"content-type": "application/json"})
    assert 400 <= bad.status_code < 500
    assert httpx.get(f"{url}/getLatestModel", timeout=10).status_code in (200, 404)
    model = httpx.post(f"{url}/models", content=b"up test", timeout=60)
    assert model.status_code == 200, model.text
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, (folder / "up.log").read_text()
    assert _ports_closed(base)
    for j in range(NODES):
        with SqliteLedger(folder / "cluster" / f"node-{j}.db", create=False) as led:
            assert verify_chain(led).ok and led.has_model(model.json()["hash"])
