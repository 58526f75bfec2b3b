"""Fixtures for the ledger cluster tests: real node processes on 127.0.0.1."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
for _path in (REPO_ROOT, REPO_ROOT / "tests" / "ledger"):  # the package may not be installed;
    if str(_path) not in sys.path:                         # ledger_kit is shared with tests/ledger
        sys.path.insert(0, str(_path))

from bcsfl_flower.crypto import SigningKey  # noqa: E402


@pytest.fixture(scope="session")
def client_key() -> SigningKey:
    """A key nobody enrolled."""
    return SigningKey.from_seed(b"ledger-cluster-test-client")
