"""Fixtures for the ledger cluster tests: real node processes on 127.0.0.1."""

from __future__ import annotations

import pytest

from bcsfl_flower.crypto import SigningKey


@pytest.fixture(scope="session")
def client_key() -> SigningKey:
    """A key nobody enrolled."""
    return SigningKey.from_seed(b"ledger-cluster-test-client")
