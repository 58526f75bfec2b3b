"""``ledger verify`` and ``ledger show`` subcommands.

``register(subparsers)`` adds ``ledger {verify,show}`` to the top-level ``bcsfl``
parser; each sets ``func(args) -> int``. ``python -m bcsfl_flower.ledger.cli`` offers
``verify`` and ``show`` directly.
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
from .verify import verify_chain

__all__ = ["add_commands", "cmd_show", "cmd_verify", "main", "register"]

_PREFIX = 12


def _open(url: str) -> Any:
    """Open an existing ledger for reading; never creates a file."""
    return open_ledger(url, create=False)


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify the ledger at ``args.ledger``; print the summary line.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments with ``ledger`` (a path or URL).

    Returns
    -------
    int
        0 when the chain verifies, 1 when it does not, 2 when it cannot be opened.
    """
    try:
        ledger = _open(args.ledger)
    except (OSError, LedgerError, ValueError, NotImplementedError, sqlite3.Error) as err:
        print(f"ERROR: cannot open ledger {args.ledger}: {err}", file=sys.stderr)
        return 2
    with ledger:
        report = verify_chain(ledger)
    print(report.summary())
    return 0 if report.ok else 1


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds")


def _short(value: Any) -> str:
    return value[:_PREFIX] if isinstance(value, str) and value else "-"


def _count(value: Any) -> str:
    return str(len(value)) if isinstance(value, list) else "-"


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
        "accepted": _count(data.get("accepted")),
        "rejected": _count(data.get("rejected")),
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


def _limit(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("--limit must be >= 0")
    return value


def add_commands(subparsers: Any) -> None:
    """Add ``verify`` and ``show`` to ``subparsers`` (from ``add_subparsers()``).

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        Where the two commands are added.
    """
    verify = subparsers.add_parser(
        "verify", help="re-verify every block and stored model of a ledger"
    )
    verify.add_argument("ledger", metavar="PATH_OR_URL", help="ledger file or URL")
    verify.set_defaults(func=cmd_verify)
    show = subparsers.add_parser("show", help="print the blocks of a ledger as a table")
    show.add_argument("ledger", metavar="PATH_OR_URL", help="ledger file or URL")
    show.add_argument(
        "--limit", type=_limit, default=None, metavar="N", help="show only the newest N"
    )
    show.set_defaults(func=cmd_show)


def register(subparsers: Any) -> None:
    """Add the ``ledger`` command group (``verify``, ``show``) to a top-level CLI.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The top-level ``bcsfl`` subparsers; dispatch to ``args.func(args)``.
    """
    ledger = subparsers.add_parser("ledger", help="inspect and verify a BCS-FL ledger")
    inner = ledger.add_subparsers(dest="ledger_command", metavar="{verify,show}")
    inner.required = True
    add_commands(inner)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bcsfl_flower.ledger.cli {verify,show} ...``.

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
    sub = parser.add_subparsers(dest="command", metavar="{verify,show}")
    sub.required = True
    add_commands(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
