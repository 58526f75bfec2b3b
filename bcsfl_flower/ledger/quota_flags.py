"""Command-line options for a ledger node's quotas (``ledger serve`` and ``ledger up``).

Every field of :class:`~.service.Quotas` has a flag. A flag given wins; one left out
leaves the field to its ``BCSFL_LEDGER_<FIELD>`` environment variable, else to the
default. ``ledger up`` hands the flags it was given to every node process as ``serve``
options, so ``ps`` shows what each node enforces. Kept out of :mod:`~.service` so that
``bcsfl --help`` does not import FastAPI.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

__all__ = ["QUOTA_FLAGS", "add_quota_args", "node_quotas", "quota_args"]

#: One flag per field of :class:`~.service.Quotas`: ``field -> (flag, type, default, help)``.
#: The defaults repeat ``Quotas()``'s (a test keeps them equal) so that ``--help`` shows
#: them without importing FastAPI; a flag left out leaves the field to ``BCSFL_LEDGER_*``.
QUOTA_FLAGS: dict[str, tuple[str, type, float, str]] = {
    "max_json_body": ("--max-json-body", int, 16 * 1024 * 1024,
                      "largest JSON body in bytes (/postModelUpdate, /blocks, /identities); 413 beyond"),
    "max_block_data": ("--max-block-data", int, 4 * 1024 * 1024,
                       "largest data of a block posted to /blocks, canonical JSON bytes; 413 beyond"),
    "max_tx_data": ("--max-tx-data", int, 1024 * 1024,
                    "largest data of one posted transaction, canonical JSON bytes; 413 beyond"),
    "page": ("--page-size", int, 100, "blocks per GET /getBlockchain answer when no limit is given"),
    "max_page": ("--max-page", int, 1000, "largest limit of GET /getBlockchain; a larger one is 422"),
    "write_rate": ("--write-rate", float, 20.0,
                   "signed writes per second per enrolled identity (token bucket; 0: unlimited); 429 beyond"),
    "write_burst": ("--write-burst", float, 100.0, "burst of the per-identity write bucket"),
    "anon_rate": ("--anon-rate", float, 20.0,
                  "unauthenticated writes per second per remote address (0: unlimited); 429 beyond"),
    "anon_burst": ("--anon-burst", float, 200.0, "burst of the per-address write bucket"),
}


def add_quota_args(p: argparse.ArgumentParser) -> None:
    """One option per :data:`QUOTA_FLAGS` entry (default None: ``BCSFL_LEDGER_<FIELD>`` or the built-in value).

    Parameters
    ----------
    p : argparse.ArgumentParser
        The parser of ``ledger serve`` or ``ledger up``.
    """
    group = p.add_argument_group("quotas", "what one client may ask of a node (flag, else the "
                                           "BCSFL_LEDGER_<FIELD> variable, else the default shown)")
    for name, (flag, kind, default, text) in QUOTA_FLAGS.items():
        group.add_argument(flag, dest=f"quota_{name}", type=kind, default=None, metavar="N",
                           help=f"{text} (default: {default}; env BCSFL_LEDGER_{name.upper()})")


def quota_args(args: argparse.Namespace) -> list[str]:
    """The quota options given in ``args``, as ``serve`` arguments (``up`` hands them to every node).

    Parameters
    ----------
    args : argparse.Namespace
        Parsed options of a parser that had :func:`add_quota_args`.

    Returns
    -------
    list[str]
        ``[flag, value, ...]`` for each quota given; empty if none was.
    """
    out: list[str] = []
    for name, (flag, _kind, _default, _text) in QUOTA_FLAGS.items():
        value = getattr(args, f"quota_{name}", None)
        if value is not None:
            out += [flag, repr(value)]
    return out


def node_quotas(args: argparse.Namespace) -> Any:
    """The node's :class:`~.service.Quotas`: the environment's, with the flags given on top.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed ``serve`` options.

    Returns
    -------
    Quotas
        What the node enforces.

    Raises
    ------
    ValueError
        A ``BCSFL_LEDGER_*`` value that is not a number, or quotas that do not fit
        together (e.g. ``--page-size`` above ``--max-page``).
    """
    from .service import Quotas

    given = {name: getattr(args, f"quota_{name}") for name in QUOTA_FLAGS
             if getattr(args, f"quota_{name}", None) is not None}
    return dataclasses.replace(Quotas.from_env(), **given)
