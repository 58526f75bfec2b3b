"""Fixtures for the ledger tests: keys, both backends, and a block factory."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # the package may not be installed in the venv
    sys.path.insert(0, str(REPO_ROOT))

from bcsfl_flower.crypto import SigningKey  # noqa: E402
from bcsfl_flower.ledger import (  # noqa: E402
    Block,
    Ledger,
    MemoryLedger,
    SqliteLedger,
    build_block,
    make_transaction,
)


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
    """The block producer's key."""
    return SigningKey.from_seed(b"ledger-test-producer")


@pytest.fixture(scope="session")
def clients() -> list[SigningKey]:
    """Three client keys."""
    return [SigningKey.from_seed(f"ledger-test-client-{i}".encode()) for i in range(3)]


@pytest.fixture(params=["memory", "sqlite"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    """A fresh ledger of each backend."""
    if request.param == "memory":
        led: Ledger = MemoryLedger()
    else:
        led = SqliteLedger(tmp_path / "ledger.db")
    with led:
        yield led


RoundFactory = Callable[..., Block]


@pytest.fixture
def make_round(producer: SigningKey, clients: list[SigningKey]) -> RoundFactory:
    """Build (not append) a realistic round block on top of ``ledger.latest()``.

    Each client submits one model (stored in the ledger); the block records the
    transactions, accepted/rejected lists, the global model and the clients'
    identities.
    """

    def factory(led: Ledger, rnd: int = 1, **extra: Any) -> Block:
        txs = []
        for i, key in enumerate(clients):
            digest = led.put_model(f"round {rnd} model of client {i}".encode())
            txs.append(
                make_transaction(
                    key, {"model-params": digest, "model-acc": 0.5 + i / 10, "num": 10 + i}
                )
            )
        global_digest = led.put_model(f"global model after round {rnd}".encode())
        data: dict[str, Any] = {
            "round": rnd,
            "transactions": txs,
            "accepted": [t.id for t in txs[:2]],
            "rejected": [txs[2].id],
            "model-params": global_digest,
            "identities": {f"client-{i}": k.public_hex for i, k in enumerate(clients)},
        }
        data.update(extra)
        return build_block(led.latest(), data, producer)

    return factory
