"""Run settings shared by the ServerApp, the ClientApp and ``bcsfl simulate``.

They travel as Flower run-config (``[tool.flwr.app.config]`` in pyproject.toml, or
``flwr run --run-config``); ``bcsfl simulate`` passes the same keys as overrides.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .data import DATASETS

if TYPE_CHECKING:  # Flower is imported by whoever builds a Context, not to check settings
    from flwr.app import Context

    from .committee.filter import FilterConfig

__all__ = ["ATTACKS", "COMMITTEES", "RunSettings", "STRATEGIES", "ledger_url_problem", "option_names"]

STRATEGIES = ("bcsfl", "fedavg", "krum", "multikrum", "bulyan", "fedmedian", "fedtrimmedavg", "fltrust",
              "bulyan-paper", "fedavg-honest")
#: ``bcsfl_flower.client.attacks.ATTACKS``, named here so that checking settings (and
#: ``bcsfl simulate --help``) needs no torch; a test keeps the two equal.
ATTACKS = ("none", "label-flip", "sign-flip", "gaussian", "scaling", "alie", "ipm", "min-max",
           "alie-full", "ipm-full", "ipm100-full", "minmax-full", "scaling-max")
COMMITTEES = ("server", "nodes")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


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
    # "constant", or "cosine": round r of R trains at lr x (1 + cos(pi (r - 1) / R)) / 2
    lr_schedule: str = "constant"
    batch_size: int = 32
    momentum: float = 0.0  # clients' SGD momentum (DP-SGD recipes use 0.9 with a smaller lr)
    dirichlet_alpha: float = 0.5
    seed: int = 7
    malicious_fraction: float = 0.0
    attack: str = "none"
    attack_scale: float = 4.0
    dp_noise: float = 0.0
    dp_max_grad_norm: float = 1.0
    # DP-SGD by budget: each client picks the noise that spends this epsilon (delta 1e-5)
    # on its own data over all rounds (0 or inf: off; dp-noise, when > 0, wins)
    target_epsilon: float = 0.0
    # how epsilon is accounted: "rdp" (Renyi DP) or "prv" (privacy random variables, Gopi et al.
    # 2021: a tighter upper bound, so less noise for the same target)
    dp_accountant: str = "rdp"
    # "auto": with DP on, "scatter" (ScatterNet + linear) for 28x28 images and "dp" (tanh) for
    # the others (bcsfl_flower.models); without DP, "default"
    model: str = "auto"
    prune: float = 0.0
    # upload compression (bcsfl_flower.compression): "none" sends the dense model; "topk"
    # sends the topk-fraction largest entries of update + residual (error feedback), values
    # as float32 (quantize-bits 0), int8 with a scale (8) or ternary sign x mean magnitude (2)
    compression: str = "none"
    topk_fraction: float = 0.05
    quantize_bits: int = 0
    root_size: int = 100
    example_cap: float = 3.0  # a client's declared examples count at most this x the round's median (0: no cap)
    # beta of the committee's server momentum over the chain's last two models (0: off)
    server_momentum: float = 0.0
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
    # continue the chain the ledger already holds from its head (else a ledger holding
    # more than the genesis block is refused, so that a rerun never mixes two runs)
    resume: bool = False

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> RunSettings:
        """Build from run-config style keys (dashes), ignoring unknown keys."""
        values = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key in config:
                default, value = getattr(cls, f.name), config[key]
                if isinstance(default, bool) and isinstance(value, str):  # bool("false") is True
                    text = value.strip().lower()
                    if text not in _TRUE + _FALSE:
                        raise ValueError(f"{key} must be true or false (got {value!r})")
                    values[f.name] = text in _TRUE
                else:
                    values[f.name] = type(default)(value)
        return cls(**values)

    @classmethod
    def from_context(cls, context: Context, overrides: Mapping[str, Any] | None = None) -> RunSettings:
        """Run-config of ``context`` with ``overrides`` on top."""
        return cls.from_mapping({**dict(context.run_config), **dict(overrides or {})})

    def round_lr(self, server_round: int) -> float:
        """The clients' learning rate in ``server_round`` (1-based) under ``lr_schedule``."""
        if self.lr_schedule == "cosine" and self.num_server_rounds > 1:
            progress = min(max(server_round - 1, 0), self.num_server_rounds) / self.num_server_rounds
            return self.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))
        return self.learning_rate

    def filter_config(self) -> FilterConfig:
        """The committee's :class:`~bcsfl_flower.committee.filter.FilterConfig` for these settings."""
        from .committee.filter import FilterConfig

        return FilterConfig(example_cap=self.example_cap, dp=self.dp_enabled, server_momentum=self.server_momentum)

    def enrolment_key_path(self) -> str:
        """The enrolment authority's key file: ``bcsfl-enrolment-key``, else ``<key dir>/enrolment.key``."""
        return self.bcsfl_enrolment_key or str(Path(self.bcsfl_key_dir) / "enrolment.key")

    def problems(self, names: Mapping[str, str] | None = None) -> list[str]:
        """What is wrong with these values, one line each, in the order of the options (empty: none).

        Only the values are checked, not the machine (data files, the ledger file, the
        output folder: :func:`bcsfl_flower.simulate.check_settings` adds those).
        ``num_clients`` 0 is allowed here (as many clients as the federation has nodes).

        Parameters
        ----------
        names : Mapping[str, str], optional
            Field name -> how to call it in a message (e.g. ``{"num_server_rounds":
            "--rounds"}``); a field not named is called by its run-config key.
        """
        label = option_names(names)
        found: list[str] = []
        wrong_type = set()
        for f in fields(self):  # a value of the wrong type cannot be compared: say so once
            value, default = getattr(self, f.name), f.default
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, float):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            else:
                ok = isinstance(value, type(default)) and not (isinstance(default, int) and isinstance(value, bool))
            if not ok:
                wrong_type.add(f.name)
                found.append(f"{label[f.name]} must be {type(default).__name__} (got {value!r})")

        def check(name: str, ok: bool, problem: str, note: str = "") -> None:
            if name not in wrong_type and not ok:
                found.append(f"{label[name]} {problem} (got {getattr(self, name)!r}){note}")

        def one_of(name: str, choices: tuple[str, ...]) -> None:
            check(name, getattr(self, name) in choices, f"must be one of {', '.join(choices)}")

        def finite(name: str) -> bool:
            return name not in wrong_type and math.isfinite(getattr(self, name))

        one_of("strategy", STRATEGIES)
        one_of("dataset", DATASETS)
        if "num_clients" not in wrong_type:
            from .federation import MIN_COMMITTEE

            check("num_clients", self.num_clients >= 0, "must be at least 0",
                  "; 0: as many as the federation has nodes")
            if self.strategy == "bcsfl" and 0 < self.num_clients < MIN_COMMITTEE:
                check("num_clients", False, f"must be at least {MIN_COMMITTEE} for BCS-FL",
                      "; its committee has 3f+1 members, f >= 1")
        check("num_server_rounds", self.num_server_rounds >= 1, "must be at least 1")
        check("local_epochs", self.local_epochs >= 1, "must be at least 1")
        check("learning_rate", finite("learning_rate") and self.learning_rate > 0, "must be greater than 0")
        check("batch_size", self.batch_size >= 1, "must be at least 1")
        check("momentum", finite("momentum") and 0 <= self.momentum < 1, "must be in [0, 1)")
        check("dirichlet_alpha", finite("dirichlet_alpha") and self.dirichlet_alpha > 0, "must be greater than 0")
        check("malicious_fraction", finite("malicious_fraction") and 0 <= self.malicious_fraction < 1,
              "must be in [0, 1)", ": it is the share of clients that attack")
        one_of("attack", ATTACKS)
        one_of("dp_accountant", ("rdp", "prv"))
        one_of("lr_schedule", ("constant", "cosine"))
        check("attack_scale", finite("attack_scale"), "must be a finite number")
        check("dp_noise", finite("dp_noise") and self.dp_noise >= 0, "must be at least 0", "; 0 turns DP off")
        check("dp_max_grad_norm", finite("dp_max_grad_norm") and self.dp_max_grad_norm > 0,
              "must be greater than 0")
        check("target_epsilon", "target_epsilon" not in wrong_type and self.target_epsilon >= 0,
              "must be at least 0", "; 0 or inf turns it off")
        one_of("model", ("auto", "default", "dp", "scatter"))
        check("prune", finite("prune") and 0 <= self.prune < 1, "must be in [0, 1)",
              ": it is the share of weights pruned")
        one_of("compression", ("none", "topk"))
        check("topk_fraction", finite("topk_fraction") and 0 < self.topk_fraction <= 0.4, "must be in (0, 0.4]",
              "; past 0.4 the encoding nears the dense model's size")
        check("quantize_bits", self.quantize_bits in (0, 2, 8), "must be 0, 2 or 8",
              "; 0: float32 values, 8: int8, 2: ternary")
        check("root_size", self.root_size >= 0, "must be at least 0", "; 0: no root set")
        check("example_cap", finite("example_cap") and self.example_cap >= 0, "must be at least 0", "; 0: no cap")
        check("server_momentum", finite("server_momentum") and 0 <= self.server_momentum < 1, "must be in [0, 1)",
              "; 0: no server momentum")
        if "committee_size" not in wrong_type:
            from .federation import MIN_COMMITTEE

            check("committee_size", self.committee_size >= MIN_COMMITTEE, f"must be at least {MIN_COMMITTEE}",
                  "; a committee has 3f+1 members, f >= 1")
        check("byzantine_coordinators", self.byzantine_coordinators >= 0, "must be at least 0")
        one_of("committee", COMMITTEES)
        if "bcsfl_ledger" not in wrong_type:
            problem = ledger_url_problem(self.bcsfl_ledger)
            if problem:
                found.append(f"{label['bcsfl_ledger']} {problem}")
        return found

    @property
    def dp_enabled(self) -> bool:
        """DP-SGD is on: a noise multiplier, or a finite positive target epsilon."""
        return self.dp_noise > 0 or 0 < self.target_epsilon < math.inf

    def model_variant(self) -> str:
        """The model variant clients, committee and server build (see ``model``)."""
        if self.model == "auto":
            if not self.dp_enabled:
                return "default"
            return "scatter" if self.dataset in ("mnist", "fashion-mnist") else "dp"
        return self.model

    def to_mapping(self) -> dict[str, Any]:
        """Run-config style keys, the inverse of :meth:`from_mapping`."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}


def option_names(names: Mapping[str, str] | None = None) -> dict[str, str]:
    """Field name -> its name in messages: ``names``' where given, else the run-config key."""
    return {f.name: f.name.replace("_", "-") for f in fields(RunSettings)} | dict(names or {})


def ledger_url_problem(url: str) -> str | None:
    """Why ``url`` names no ledger ``open_ledger`` can open (``None``: it does); the file is not looked at.

    Accepted: ``memory``, ``sqlite:///relative/path``, ``sqlite:////absolute/path``, a
    bare file path, ``http://host:port`` and ``https://host:port`` (a ledger cluster).
    """
    from urllib.parse import urlsplit

    hint = "use memory, sqlite:///PATH or http://HOST:PORT"
    text = url
    if not text.strip():
        return f"is empty: {hint}"
    if text.startswith(("http://", "https://")):
        try:
            host = urlsplit(text).hostname
            urlsplit(text).port  # noqa: B018 (raises on a bad port)
        except ValueError as err:
            return f"{text!r} is not a valid URL ({err}): {hint}"
        return None if host else f"{text!r} names no host: {hint}"
    if text == "memory" or text.startswith("memory://"):
        return None
    if text.startswith("sqlite:"):
        if not text.startswith("sqlite:///") or len(text) == len("sqlite:///"):
            return f"{text!r} is not a sqlite URL: use sqlite:///relative/path or sqlite:////absolute/path"
        return None
    if "://" in text:
        return f"{text!r} has an unknown scheme: {hint}"
    return None
