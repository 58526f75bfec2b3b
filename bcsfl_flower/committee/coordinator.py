"""A coordinator's whole job as one pure function (BCS-FL, Sec. IV-B), and the committee member around it.

``coordinate`` maps (global model and the one certified before it, verified packages,
root set, filter thresholds) to
(decisions, candidate bytes, candidate hash). Every honest coordinator computes the
same bytes from the same inputs, so a replica checks the proposer's hash instead of
trusting it. :class:`Coordinator` adds an identity (a signing key) and, for tests and
experiments, a Byzantine behaviour that replaces the honest output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..crypto import SigningKey, sha256_hex
from ..federation import FederationState
from ..package import canonical_bytes, parse_canonical_bytes
from .filter import FilterConfig, FilterResult, filter_and_aggregate
from .rootset import RootSet
from .verify import VerifiedUpdate

__all__ = ["Coordinator", "CoordinatorOutput", "coordinate", "poisoned_candidate", "previous_model"]


@dataclass(frozen=True)
class CoordinatorOutput:
    """What a coordinator proposes: its filter result and the candidate's bytes/hash."""

    result: FilterResult
    candidate_bytes: bytes
    candidate_hash: str


def coordinate(
    global_tensors: Mapping[str, np.ndarray],
    updates: Sequence[VerifiedUpdate],
    *,
    server_round: int,
    root: RootSet | None,
    config: FilterConfig,
    previous: Mapping[str, np.ndarray] | None = None,
) -> CoordinatorOutput:
    """Filter ``updates`` and aggregate the kept ones into the candidate global model.

    ``previous`` is the model the chain certified before ``global_tensors`` (the server
    momentum's other end; None: none yet).
    """
    result = filter_and_aggregate(global_tensors, updates, server_round=server_round, root=root, config=config,
                                  previous=previous)
    blob = canonical_bytes(result.candidate)
    return CoordinatorOutput(result, blob, sha256_hex(blob))


def previous_model(state: FederationState, get_model: Callable[[str], bytes],
                   config: FilterConfig) -> dict[str, np.ndarray] | None:
    """The model certified before the head's, read from the store, when ``config``'s momentum needs it.

    Every member reads it off its own ledger by the hash the chain certifies, so no
    relay can hand a coordinator another one.
    """
    if not config.server_momentum > 0 or state.previous_model is None:
        return None
    return parse_canonical_bytes(get_model(state.previous_model))


Behaviour = Callable[[CoordinatorOutput, Mapping[str, np.ndarray]], CoordinatorOutput]


def poisoned_candidate(scale: float = -5.0) -> Behaviour:
    """A Byzantine behaviour: propose ``global + scale * (honest - global)``.

    With a negative scale the proposal walks against the honest aggregate, which is
    what a coordinator colluding with poisoned clients would push.
    """

    def behave(honest: CoordinatorOutput, global_tensors: Mapping[str, np.ndarray]) -> CoordinatorOutput:
        poisoned = {
            k: (g + scale * (honest.result.candidate[k] - g)).astype(g.dtype) if np.issubdtype(g.dtype, np.floating) else g
            for k, g in global_tensors.items()
        }
        blob = canonical_bytes(poisoned)
        return CoordinatorOutput(replace(honest.result, candidate=poisoned), blob, sha256_hex(blob))

    return behave


@dataclass
class Coordinator:
    """One committee member: an id, its signing key, and optionally a Byzantine twist.

    Parameters
    ----------
    member_id : str
        The enrolled client id the chain knows it by.
    key : SigningKey | None (default: None)
        Its registered key, which signs the round statement (None: not at hand, silent).
    behaviour : Behaviour | None (default: None)
        Test hook: transforms the honest output into what this member proposes.
    """

    member_id: str
    key: SigningKey | None = None
    behaviour: Behaviour | None = None

    def propose(self, honest: CoordinatorOutput, global_tensors: Mapping[str, np.ndarray]) -> CoordinatorOutput:
        """This member's proposal, given the honest output of :func:`coordinate`.

        The in-process committee computes :func:`coordinate` once and shares it among
        honest members (same inputs, same bytes); only a Byzantine member diverges.
        """
        return honest if self.behaviour is None else self.behaviour(honest, global_tensors)
