"""The federation's rules that every party re-runs: charter, enrolment, stakes, draw, certificate.

Shared vocabulary of the layers (client, committee, ledger) and free of all of them: it
imports only :mod:`bcsfl_flower.crypto`. See :mod:`.state` for the state machine and
:mod:`.certificate` for the one certificate and its ``verify``.
"""

from .certificate import (
    MIN_COMMITTEE,
    Certificate,
    CertificateError,
    RoundStatement,
    Signature,
    digest_json,
    next_seed,
    quorum_size,
    valid_signers,
    verify,
)
from .pool import PooledPackage, metrics_digest, package_digest
from .stake import StakePolicy, draw_committee, next_stakes, seed_uniform
from .state import (
    Charter,
    FederationState,
    Identity,
    RuleViolation,
    decisions_digest,
    enrolment_data,
    inputs_digest,
    round_statement,
)

__all__ = [
    "MIN_COMMITTEE", "Certificate", "CertificateError", "Charter", "FederationState", "Identity", "PooledPackage", "RoundStatement",
    "RuleViolation", "Signature", "StakePolicy", "decisions_digest", "digest_json", "draw_committee",
    "enrolment_data", "inputs_digest", "metrics_digest", "package_digest", "next_seed", "next_stakes", "quorum_size", "round_statement",
    "seed_uniform", "valid_signers", "verify",
]
