"""Fixtures for the ledger cluster tests: real node processes on 127.0.0.1."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # the package may not be installed in the venv
    sys.path.insert(0, str(REPO_ROOT))

from bcsfl_flower.crypto import SigningKey  # noqa: E402


@pytest.fixture(scope="session")
def client_key() -> SigningKey:
    """A client key for signed transactions and blocks."""
    return SigningKey.from_seed(b"ledger-cluster-test-client")
