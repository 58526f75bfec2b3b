"""Attacks against the trust model (``../shared/DESIGN.md``), through the real components."""

from __future__ import annotations

import pytest

from bcsfl_flower.ledger import SqliteLedger

from ledger_kit import Federation


@pytest.fixture
def federation(tmp_path) -> Federation:
    """Six enrolled clients on a real SQLite ledger, committee of four."""
    ledger = SqliteLedger(tmp_path / "ledger.db")
    yield Federation.start(ledger, clients=6)
    ledger.close()
