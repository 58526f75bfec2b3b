"""Fixtures for the ledger tests: keys, both backends, and a chartered federation on each."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bcsfl_flower.crypto import SigningKey
from bcsfl_flower.ledger import Ledger, MemoryLedger, SqliteLedger
from ledger_kit import Federation

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def child_env() -> dict[str, str]:
    """Environment for ``python`` subprocesses that must import ``bcsfl_flower``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
    )
    return env


@pytest.fixture(scope="session")
def producer() -> SigningKey:
    """A block producer's key."""
    return SigningKey.from_seed(b"ledger-test-producer")


@pytest.fixture(scope="session")
def clients() -> list[SigningKey]:
    """Three keys nobody enrolled."""
    return [SigningKey.from_seed(f"ledger-test-client-{i}".encode()) for i in range(3)]


@pytest.fixture(params=["memory", "sqlite"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    """A fresh ledger of each backend (genesis only, no charter)."""
    if request.param == "memory":
        led: Ledger = MemoryLedger()
    else:
        led = SqliteLedger(tmp_path / "ledger.db")
    with led:
        yield led


@pytest.fixture
def fed(ledger: Ledger) -> Federation:
    """A federation on each backend: charter (committee of 4) and five enrolled clients."""
    return Federation.start(ledger)


@pytest.fixture
def chain_file(tmp_path: Path) -> Path:
    """A closed SQLite ledger: charter (1), five enrolments (2-6), rounds 1 and 2 each on
    the pool block of the five clients' packages (pool 7, round 8; pool 9, round 10), a
    transaction block (11) and round 3 on its pool (pool 12, round 13): blocks 0..13.
    The store holds 20 models: three global models, the 15 pooled client updates, the
    transaction's update and one model no block names."""
    path = tmp_path / "chain.db"
    with SqliteLedger(path) as led:
        f = Federation.start(led)
        f.commit_round(1)
        f.commit_round(2, rejected=["client-3"])
        led.append(f.tx_block([f.tx("client-0", model=b"an update", num=3)]))
        f.commit_round(3)
        led.put_model(b"an unreferenced model")
    return path
