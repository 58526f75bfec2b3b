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
from pathlib import Path
from typing import Any

from . import open_ledger, sqlite_path
from .block import Block, LedgerError
from .charter_file import load_public_key
from .sqlite import sqlite_file_kind
from .cli_admin import add_admin_commands, add_charter_options
from .cluster import add_serve_args
from .quota_flags import add_quota_args, quota_args
from .verify import verify_chain

__all__ = ["HelpFormatter", "Parser", "add_commands", "cmd_serve", "cmd_show", "cmd_up", "cmd_verify",
           "describe_commands", "main", "register"]

_PREFIX = 12
_COMMANDS = "{verify,show,init,enrol,serve,up}"
#: What opening a ledger can raise for a bad file or URL (not a bug): one line, exit 2.
_OPEN_ERRORS = (OSError, LedgerError, ValueError, NotImplementedError, sqlite3.Error)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help, unless the help already names it or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text.lower() or not action.option_strings or action.default in (None, "", argparse.SUPPRESS)
                or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """The ``bcsfl`` parsers: defaults in the help, and a usage error in one line (exit 2).

    Subcommand parsers made through ``add_subparsers()`` are of this class too.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> Any:  # noqa: D102 (argparse's)
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def describe_commands(parser: argparse.ArgumentParser) -> None:
    """Give every subcommand under ``parser`` its one-line help as description, and every option without
    help its default, so that ``--help`` at any level says what the command does and what it assumes."""
    for action in parser._actions:
        if action.option_strings and action.help is None and action.default not in (None, "", argparse.SUPPRESS):
            action.help = "(default: %(default)s)"
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                if sub.description is None and helps.get(name):
                    sub.description = helps[name][:1].upper() + helps[name][1:] + "."
                describe_commands(sub)


def _file_problem(url: str) -> str | None:
    """Why the ledger file ``url`` names cannot be read as one, from a look at its first bytes; ``None`` for
    a URL that names no file, or a file that starts as SQLite's do."""
    try:
        path_text = sqlite_path(url)
    except ValueError as err:
        return str(err)
    if path_text is None:
        return None
    path = Path(path_text)
    if not path.exists():
        return "no such ledger file"
    if path.is_dir():
        return "a folder, not a ledger file"
    try:
        kind = sqlite_file_kind(path)
    except OSError as err:
        return f"cannot read it: {err.strerror or err}"
    if kind == "empty":
        return "not a ledger (an empty file)"
    if kind == "other":
        return "not a ledger (not a SQLite database)"
    return None


def _open(url: str) -> Any:
    """Open an existing ledger for reading; never creates or writes a file (not even an empty one)."""
    problem = _file_problem(url)
    if problem:
        raise LedgerError(problem)
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
    except _OPEN_ERRORS as err:
        print(f"ERROR: cannot open ledger {args.ledger}: {err}", file=sys.stderr)
        return 2
    with ledger:
        try:
            report = verify_chain(ledger, authority=authority, head=getattr(args, "head", None),
                                  height=getattr(args, "height", None), against=getattr(args, "against", None))
        except _OPEN_ERRORS as err:
            print(f"ERROR: cannot read ledger {args.ledger}: {err}", file=sys.stderr)
            return 2
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
        0 on success (also when the chain does not verify: a warning on stderr says
        so), 1 if a stored block cannot be read, 2 if the ledger cannot be opened.
    """
    try:
        ledger = _open(args.ledger)
    except _OPEN_ERRORS as err:
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
        try:
            report = verify_chain(ledger)
            warning = None if report.ok else f"WARNING: this chain does not verify ({report.summary()})"
        except _OPEN_ERRORS as err:
            warning = f"WARNING: this chain could not be verified ({err})"
    print(format_table([block_summary(b) for b in blocks]))
    print(f"({len(blocks)} of {height} blocks shown)")
    if warning:
        sys.stdout.flush()
        print(f"{warning}; `ledger verify` says more", file=sys.stderr)
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
        ``batch_size``, ``request_timeout`` and the quota options (``cluster.add_quota_args``),
        which are handed to every node.

    Returns
    -------
    int
        0 after a clean stop, 1 if a node died, 2 on bad options.
    """
    from .cluster import up

    if args.nodes < 1 or not 0 < args.base_port < 65536:
        print("ERROR: need --nodes >= 1 and a valid --base-port", file=sys.stderr)
        return 2
    extra = ["--batch-size", str(args.batch_size), "--request-timeout", str(args.request_timeout),
             *quota_args(args)]
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
        "verify", help="re-verify every block and stored model of a ledger",
        description="Re-verify every block (hash links, signatures, the federation's rules) and every stored "
                    "model of a ledger; print one line: OK with the head and the enrolment authority, or FAILED "
                    "at the first bad block. A file is opened read-only: nothing is created or written. Exit "
                    "0: it verifies; 1: it does not; 2: it cannot be opened."
    )
    verify.add_argument("ledger", metavar="PATH_OR_URL",
                        help="ledger file (sqlite:///path or a path, opened read-only) or http://host:port")
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
    show = subparsers.add_parser(
        "show", help="print the blocks of a ledger as a table",
        description="Print the blocks of a ledger as a table (sequence, time, hashes, producer, transactions, "
                    "round, accepted/rejected updates, model). A file is opened read-only: nothing is created "
                    "or written. A chain that does not verify is shown all the same, with a warning on stderr."
    )
    show.add_argument("ledger", metavar="PATH_OR_URL",
                      help="ledger file (sqlite:///path or a path, opened read-only) or http://host:port")
    show.add_argument(
        "--limit", type=_limit, default=None, metavar="N", help="show only the newest N (default: all)"
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
    add_quota_args(up)
    up.set_defaults(func=cmd_up)


def register(subparsers: Any) -> None:
    """Add the ``ledger`` command group (``verify``, ``show``, ``init``, ``enrol``, ``serve``, ``up``) to a CLI.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The top-level ``bcsfl`` subparsers; dispatch to ``args.func(args)``.
    """
    ledger = subparsers.add_parser(
        "ledger", help="inspect, verify, found and serve a BCS-FL ledger",
        description="Inspect (show), verify, found (init, enrol) and serve (serve, up) a BCS-FL ledger: "
                    "a signed hash chain with a store of the models its blocks name.")
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
    parser = Parser(prog="python -m bcsfl_flower.ledger.cli", description="BCS-FL ledger tools")
    sub = parser.add_subparsers(dest="command", metavar=_COMMANDS)
    sub.required = True
    add_commands(sub)
    describe_commands(parser)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
