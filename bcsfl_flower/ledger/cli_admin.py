"""``ledger init`` and ``ledger enrol``: the enrolment authority's two commands.

``init`` founds a federation on a ledger file: it creates the enrolment key if missing
and installs the charter (block 1, signed by that key). A cluster gets its charter from
``ledger up`` (or ``init --out charter.json`` for ``ledger serve --charter``) instead.
``enrol`` admits one identity: it signs the enrolment transaction with the enrolment
key and writes it to a ledger, or to a ticket file that the client submits later
(``enrol --ticket FILE --ledger URL``, or ``POST /identities`` with the file as body),
so the key never leaves the operator's machine.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

from bcsfl_flower.crypto import SigningKey
from bcsfl_flower.federation import Charter
from bcsfl_flower.federation.state import DEFAULT_MAX_MODEL_BYTES

from . import open_ledger
from .block import LedgerError, Transaction
from .charter_file import load_key, write_charter
from .replay import advance, enrolment_of, genesis_replay, make_charter_block, make_enrolment

__all__ = ["add_admin_commands", "cmd_enrol", "cmd_init"]

_ERRORS = (OSError, LedgerError, ValueError, sqlite3.Error)


def cmd_init(args: argparse.Namespace) -> int:
    """Install a new charter on ``args.ledger`` and/or write it to ``args.out``.

    Parameters
    ----------
    args : argparse.Namespace
        ``ledger`` (URL or None), ``out`` (path or None), ``enrolment_key``,
        ``committee_size``, ``max_model_bytes``.

    Returns
    -------
    int
        0 when the charter is installed (or this key's charter already is), 1 when the
        ledger has another authority's charter, 2 on bad options or an unusable file.
    """
    if not args.ledger and not args.out:
        print("ERROR: give --ledger URL (install the charter) and/or --out FILE (write it)", file=sys.stderr)
        return 2
    if args.ledger and args.ledger.startswith(("http://", "https://")):
        print("ERROR: a ledger cluster installs its charter when its nodes start: use bcsfl ledger up "
              "--enrolment-key FILE, or init --out charter.json and ledger serve --charter charter.json",
              file=sys.stderr)
        return 2
    try:
        key = SigningKey.load_or_create(args.enrolment_key)
        block = make_charter_block(key, Charter(key.public_hex, args.committee_size,
                                                max_model_bytes=args.max_model_bytes))
        advance(genesis_replay(), block)  # the rules' limits before anything is written
    except _ERRORS as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    if args.out:
        write_charter(args.out, block)
        print(f"charter written to {args.out} (block 1 {block.hash})")
    if args.ledger:
        try:
            with open_ledger(args.ledger) as ledger:
                current = ledger.state().charter
                if current is not None:
                    if current.enrolment_key != key.public_hex:
                        print(f"ERROR: {args.ledger} already has a charter by another enrolment authority "
                              f"({current.enrolment_key[:16]}...)", file=sys.stderr)
                        return 1
                    print(f"{args.ledger} already has this authority's charter (block 1 {ledger.block(1).hash})")
                    return 0
                ledger.install_charter(block)
        except _ERRORS as err:
            print(f"ERROR: {err}", file=sys.stderr)
            return 2
        print(f"charter installed in {args.ledger}: block 1 {block.hash}")
    print(f"enrolment authority {key.public_hex} (key {args.enrolment_key}); committee "
          f"{args.committee_size}, max model {args.max_model_bytes} bytes")
    return 0


def _ticket(path: str) -> Transaction:
    tx = Transaction.from_json(json.loads(Path(path).read_text()))
    enrolment_of(tx)  # it must be an enrolment
    return tx


def cmd_enrol(args: argparse.Namespace) -> int:
    """Sign an enrolment (or read a ticket) and submit it to ``args.ledger`` or write it to ``args.out``.

    Returns
    -------
    int
        0 when enrolled or written, 1 when the ledger refuses it, 2 on bad options or files.
    """
    try:
        if args.ticket:
            tx = _ticket(args.ticket)
        else:
            if not args.enrolment_key or not args.client_id or not args.public_key:
                print("ERROR: give --enrolment-key FILE (the operator's key: DIR/enrolment.key from ledger up, "
                      "OUT/keys/enrolment.key from simulate), --client-id and --public-key (or --ticket FILE)",
                      file=sys.stderr)
                return 2
            public = args.public_key.strip().lower()
            if len(public) != 64 or any(c not in "0123456789abcdef" for c in public):
                print("ERROR: --public-key must be 64 hex characters (an Ed25519 public key)", file=sys.stderr)
                return 2
            tx = make_enrolment(load_key(args.enrolment_key), args.client_id, public, args.role)
    except _ERRORS as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    cid, public, role = enrolment_of(tx)
    if args.out:
        Path(args.out).write_text(json.dumps(tx.to_json(), indent=1, sort_keys=True) + "\n")
        print(f"enrolment ticket for {cid!r} ({role}, key {public[:16]}...) written to {args.out}")
        return 0
    try:
        with open_ledger(args.ledger, create=False) as ledger:
            ledger.register_identity(tx)
    except (OSError, ValueError, sqlite3.Error) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    except LedgerError as err:
        print(f"REFUSED: {err}", file=sys.stderr)
        return 1
    print(f"enrolled {cid!r} ({role}, key {public[:16]}...) in {args.ledger}")
    return 0


def add_charter_options(parser: argparse.ArgumentParser, when: str = "") -> None:
    """``--committee-size`` and ``--max-model-bytes``: the charter's rules (``init`` and ``up``)."""
    parser.add_argument("--committee-size", type=int, default=4, help=f"coordinators per round (>= 4){when}")
    parser.add_argument("--max-model-bytes", type=int, default=DEFAULT_MAX_MODEL_BYTES,
                        help=f"largest model the ledger stores{when}")


def add_admin_commands(subparsers: Any) -> None:
    """Add ``init`` and ``enrol`` to ``subparsers``."""
    init = subparsers.add_parser("init", help="found a federation: enrolment key and charter (block 1)")
    init.add_argument("--ledger", default=None, metavar="URL",
                      help="ledger file (sqlite:///path or a path) to install the charter in")
    init.add_argument("--out", default=None, metavar="CHARTER.json",
                      help="also write the signed charter block here (for ledger serve --charter)")
    init.add_argument("--enrolment-key", required=True, metavar="FILE",
                      help="the enrolment authority's key file (created if missing, mode 0600)")
    add_charter_options(init)
    init.set_defaults(func=cmd_init)
    enrol = subparsers.add_parser("enrol", help="admit an identity (signed by the enrolment key)")
    enrol.add_argument("--enrolment-key", default=None, metavar="FILE", help="the enrolment authority's key")
    enrol.add_argument("--client-id", default=None, metavar="ID")
    enrol.add_argument("--public-key", default=None, metavar="HEX", help="the identity's Ed25519 public key")
    enrol.add_argument("--role", choices=("client", "relay"), default="client")
    enrol.add_argument("--ticket", default=None, metavar="FILE",
                       help="submit this enrolment ticket (from enrol --out) instead of signing one")
    where = enrol.add_mutually_exclusive_group(required=True)
    where.add_argument("--ledger", default=None, metavar="URL", help="ledger file or node URL to enrol in")
    where.add_argument("--out", default=None, metavar="TICKET.json",
                       help="write the signed enrolment here; the client submits it")
    enrol.set_defaults(func=cmd_enrol)
