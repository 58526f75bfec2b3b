"""Run settings shared by the ServerApp, the ClientApp and ``bcsfl simulate``.

They travel as Flower run-config (``[tool.flwr.app.config]`` in pyproject.toml, or
``flwr run --run-config``); ``bcsfl simulate`` passes the same keys as overrides.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from flwr.app import Context

__all__ = ["RunSettings", "STRATEGIES"]

STRATEGIES = ("bcsfl", "fedavg", "krum", "multikrum", "bulyan", "fedmedian", "fedtrimmedavg", "fltrust")


@dataclass(frozen=True)
class RunSettings:
    """Every knob of a run; field ``a_b`` is run-config key ``a-b``."""

    strategy: str = "bcsfl"
    dataset: str = "digits"
    data_dir: str = ""
    num_server_rounds: int = 5
    num_clients: int = 0  # 0: as many as the federation has nodes
    local_epochs: int = 1
    learning_rate: float = 0.05
    batch_size: int = 32
    dirichlet_alpha: float = 0.5
    seed: int = 7
    malicious_fraction: float = 0.0
    attack: str = "none"
    attack_scale: float = 4.0
    dp_noise: float = 0.0
    dp_max_grad_norm: float = 1.0
    prune: float = 0.0
    root_size: int = 100
    example_cap: float = 3.0  # a client's declared examples count at most this x the round's median (0: no cap)
    committee_size: int = 4
    byzantine_coordinators: int = 0  # experiment: the first N drawn coordinators propose poison
    committee: str = "server"  # "server": in-process committee; "nodes": coordinators on client nodes
    bcsfl_ledger: str = "sqlite:///bcsfl-ledger.db"
    bcsfl_key_dir: str = ".bcsfl/keys"
    # the enrolment authority's key file ("": <key dir>/enrolment.key, created for a fresh ledger)
    bcsfl_enrolment_key: str = ""
    # torch device of client training and the server's central evaluation: "cpu" (the
    # reference), "cuda", "cuda:N", or "auto" (cuda when torch sees a GPU, else cpu)
    device: str = "cpu"
    out: str = ""

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> RunSettings:
        """Build from run-config style keys (dashes), ignoring unknown keys."""
        values = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key in config:
                default = getattr(cls, f.name)
                values[f.name] = type(default)(config[key])
        return cls(**values)

    @classmethod
    def from_context(cls, context: Context, overrides: Mapping[str, Any] | None = None) -> RunSettings:
        """Run-config of ``context`` with ``overrides`` on top."""
        return cls.from_mapping({**dict(context.run_config), **dict(overrides or {})})

    def enrolment_key_path(self) -> str:
        """The enrolment authority's key file: ``bcsfl-enrolment-key``, else ``<key dir>/enrolment.key``."""
        return self.bcsfl_enrolment_key or str(Path(self.bcsfl_key_dir) / "enrolment.key")

    def to_mapping(self) -> dict[str, Any]:
        """Run-config style keys, the inverse of :meth:`from_mapping`."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}
