"""BCS-FL for Flower: a committee-governed, ledger-backed federated strategy."""

__version__ = "0.1.0"
