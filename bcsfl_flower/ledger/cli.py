"""``ledger verify``, ``show``, ``init``, ``enrol``, ``serve`` and ``up`` subcommands.

``register(subparsers)`` adds ``ledger {verify,show,init,enrol,serve,up}`` to the
top-level ``bcsfl`` parser; each sets ``func(args) -> int``. ``python -m
bcsfl_flower.ledger.cli`` offers them directly. ``verify`` and ``show`` take a file path
(opened read-only) or an ``http://`` URL of a ledger node; ``verify`` also takes anchors
held outside the file (the expected enrolment authority, a head hash or height seen
before, a live node to compare with). ``init`` and ``enrol`` are the enrolment
authority's (:mod:`~.cli_admin`); ``serve`` runs one ledger node, ``up`` a local cluster
of N nodes.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from . import open_ledger
from .block import Block, LedgerError
from .charter_file import load_public_key
from .cli_admin import add_admin_commands, add_charter_options
from .cluster import add_serve_args
from .verify import verify_chain

__all__ = ["add_commands", "cmd_serve", "cmd_show", "cmd_up", "cmd_verify", "main", "register"]

_PREFIX = 12
_COMMANDS = "{verify,show,init,enrol,serve,up}"


def _open(url: str) -> Any:
    """Open an existing ledger for reading; never creates or writes a file."""
    return open_ledger(url, create=False, read_only=True)


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify the ledger at ``args.ledger``; print the summary line.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments with ``ledger`` (a path or URL) and the anchors ``authority``
        (hex), ``authority_key`` (a key file), ``head``, ``height`` and ``against``
        (each None when not given).

    Returns
    -------
    int
        0 when the chain verifies, 1 when it does not, 2 when it cannot be opened.
    """
    authority = getattr(args, "authority", None)
    if getattr(args, "authority_key", None):
        try:
            authority = load_public_key(args.authority_key)
        except (OSError, LedgerError) as err:
            print(f"ERROR: --authority-key: {err}", file=sys.stderr)
            return 2
    try:
        ledger = _open(args.ledger)
    except (OSError, LedgerError, ValueError, NotImplementedError, sqlite3.Error) as err:
        print(f"ERROR: cannot open ledger {args.ledger}: {err}", file=sys.stderr)
        return 2
    with ledger:
        report = verify_chain(ledger, authority=authority, head=getattr(args, "head", None),
                              height=getattr(args, "height", None), against=getattr(args, "against", None))
    print(report.summary())
    return 0 if report.ok else 1


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds")


def _short(value: Any) -> str:
    return value[:_PREFIX] if isinstance(value, str) and value else "-"


def _decided(data: dict[str, Any], kept: bool) -> str:
    decisions = data.get("decisions")
    if not isinstance(decisions, list):
        return "-"
    return str(sum(1 for d in decisions if isinstance(d, dict) and d.get("kept") is kept))


def block_summary(block: Block) -> dict[str, str]:
    """One display row for ``ledger show``.

    Parameters
    ----------
    block : Block
        The block to summarise.

    Returns
    -------
    dict[str, str]
        Column name -> cell text.
    """
    data = block.data
    rnd = data.get("round")
    return {
        "seq": str(block.sequence_no),
        "time": _iso(block.timestamp),
        "hash": _short(block.hash),
        "lastHash": _short(block.last_hash),
        "producer": _short(block.public),
        "#tx": str(len(block.transactions)),
        "round": "-" if rnd is None else str(rnd),
        "accepted": _decided(data, True),
        "rejected": _decided(data, False),
        "model": _short(data.get("model-params")),
    }


def format_table(rows: list[dict[str, str]]) -> str:
    """Render rows (same keys) as a left-aligned text table with a header."""
    if not rows:
        return ""
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols).rstrip()]
    lines.append("  ".join("-" * widths[c] for c in cols))
    lines += ["  ".join(r[c].ljust(widths[c]) for c in cols).rstrip() for r in rows]
    return "\n".join(lines)


def cmd_show(args: argparse.Namespace) -> int:
    """Print the newest ``args.limit`` blocks (all if ``None``) as a table.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments with ``ledger`` and ``limit``.

    Returns
    -------
    int
        0 on success, 1 if a stored block cannot be read, 2 if the ledger cannot be
        opened.
    """
    try:
        ledger = _open(args.ledger)
    except (OSError, LedgerError, ValueError, NotImplementedError, sqlite3.Error) as err:
        print(f"ERROR: cannot open ledger {args.ledger}: {err}", file=sys.stderr)
        return 2
    with ledger:
        try:
            height = ledger.height()
            start = 0 if args.limit is None else max(0, height - args.limit)
            blocks = ledger.blocks(start)
        except (LedgerError, sqlite3.Error) as err:
            print(f"ERROR: cannot read blocks: {err}", file=sys.stderr)
            return 1
    print(format_table([block_summary(b) for b in blocks]))
    print(f"({len(blocks)} of {height} blocks shown)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run one ledger node (HTTP API + PBFT) until SIGINT/SIGTERM.

    Parameters
    ----------
    args : argparse.Namespace
        The options of ``cluster.add_serve_args``.

    Returns
    -------
    int
        0 after a clean stop, 2 on bad options.
    """
    from .cluster import serve

    try:
        return serve(args)
    except (ValueError, TimeoutError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2


def cmd_up(args: argparse.Namespace) -> int:
    """Start ``args.nodes`` node processes on consecutive ports; stop them on a signal.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments with ``nodes``, ``base_port``, ``dir``, ``pbft_base_port``,
        ``batch_size`` and ``request_timeout``.

    Returns
    -------
    int
        0 after a clean stop, 1 if a node died, 2 on bad options.
    """
    from .cluster import up

    if args.nodes < 1 or not 0 < args.base_port < 65536:
        print("ERROR: need --nodes >= 1 and a valid --base-port", file=sys.stderr)
        return 2
    extra = ["--batch-size", str(args.batch_size), "--request-timeout", str(args.request_timeout)]
    try:
        return up(args.nodes, args.base_port, args.dir, args.pbft_base_port, extra,
                  args.enrolment_key, args.committee_size, args.max_model_bytes)
    except (LedgerError, OSError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2


def _limit(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def add_commands(subparsers: Any) -> None:
    """Add ``verify``, ``show``, ``init``, ``enrol``, ``serve`` and ``up`` to ``subparsers``.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        Where the commands are added (from ``add_subparsers()``).
    """
    verify = subparsers.add_parser(
        "verify", help="re-verify every block and stored model of a ledger"
    )
    verify.add_argument("ledger", metavar="PATH_OR_URL", help="ledger file (opened read-only) or URL")
    who = verify.add_mutually_exclusive_group()
    who.add_argument("--authority", default=None, metavar="HEX",
                     help="the expected enrolment authority's public key: the charter must name it")
    who.add_argument("--authority-key", default=None, metavar="FILE",
                     help="the same, read from the authority's key file (.key, or a file holding the hex key)")
    verify.add_argument("--head", default=None, metavar="HASH",
                        help="a block hash accepted earlier: the chain must still contain it")
    verify.add_argument("--height", type=_limit, default=None, metavar="N",
                        help="the chain must have at least N blocks (genesis included)")
    verify.add_argument("--against", default=None, metavar="URL",
                        help="a running ledger node: shared blocks must be equal and its chain not longer")
    verify.set_defaults(func=cmd_verify)
    show = subparsers.add_parser("show", help="print the blocks of a ledger as a table")
    show.add_argument("ledger", metavar="PATH_OR_URL", help="ledger file or URL")
    show.add_argument(
        "--limit", type=_limit, default=None, metavar="N", help="show only the newest N"
    )
    show.set_defaults(func=cmd_show)
    add_admin_commands(subparsers)
    serve = subparsers.add_parser("serve", help="run one ledger node (HTTP API + PBFT)")
    add_serve_args(serve)
    serve.set_defaults(func=cmd_serve)
    up = subparsers.add_parser("up", help="run N ledger nodes on this machine until Ctrl-C")
    up.add_argument("--nodes", type=int, default=4, help="number of nodes (3f+1 tolerates f)")
    up.add_argument("--base-port", type=int, default=8500,
                    help="HTTP ports base-port .. base-port+N-1")
    up.add_argument("--pbft-base-port", type=int, default=None,
                    help="PBFT ports (default: right after the HTTP ports)")
    up.add_argument("--dir", default="ledger-cluster", help="folder for keys and databases")
    up.add_argument("--batch-size", type=int, default=1000, help="transactions per block")
    up.add_argument("--request-timeout", type=float, default=2.0,
                    help="seconds before backups suspect the primary")
    up.add_argument("--enrolment-key", default=None, metavar="FILE",
                    help="the enrolment authority's key (default: DIR/enrolment.key, created if missing)")
    add_charter_options(up, ", for a new charter (DIR/charter.json is kept if it exists)")
    up.set_defaults(func=cmd_up)


def register(subparsers: Any) -> None:
    """Add the ``ledger`` command group (``verify``, ``show``, ``init``, ``enrol``, ``serve``, ``up``) to a CLI.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The top-level ``bcsfl`` subparsers; dispatch to ``args.func(args)``.
    """
    ledger = subparsers.add_parser("ledger", help="inspect, verify, found and serve a BCS-FL ledger")
    inner = ledger.add_subparsers(dest="ledger_command", metavar=_COMMANDS)
    inner.required = True
    add_commands(inner)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bcsfl_flower.ledger.cli {verify,show,init,enrol,serve,up} ...``.

    Parameters
    ----------
    argv : Sequence[str] | None (default: None)
        Arguments; ``sys.argv[1:]`` when ``None``.

    Returns
    -------
    int
        The command's exit code.
    """
    parser = argparse.ArgumentParser(
        prog="python -m bcsfl_flower.ledger.cli", description="BCS-FL ledger tools"
    )
    sub = parser.add_subparsers(dest="command", metavar=_COMMANDS)
    sub.required = True
    add_commands(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
