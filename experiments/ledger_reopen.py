"""What reopening a ledger file costs, with and without its replay point (issue #17).

    python -m experiments.ledger_reopen                 # 100,000 transactions, blocks of 1,000
    python -m experiments.ledger_reopen --txs 20000     # smaller, faster

Builds one SQLite ledger (a charter, one enrolled client, blocks of signed transactions),
then opens it three ways and reads its state: as saved (from the replay point,
:mod:`bcsfl_flower.ledger.resume`), with the point removed (every block replayed from
genesis, every signature checked again, what a restart cost before), and read-only (what
``bcsfl ledger verify`` does, never from the point). Each line gives the seconds and the
count of Ed25519 verifications run (the signature memo off), and the last the ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bcsfl_flower.crypto import SigningKey, set_verify_cache, verify_cache_stats
from bcsfl_flower.federation import Charter
from bcsfl_flower.ledger import SqliteLedger, build_block, make_transaction
from bcsfl_flower.ledger.replay import make_charter_block, make_enrolment
from bcsfl_flower.ledger.resume import META_KEY


def build(path: Path, txs: int, per_block: int) -> None:
    """A ledger at ``path`` holding ``txs`` signed transactions in blocks of ``per_block``."""
    authority, client, producer = (SigningKey.from_seed(s) for s in (b"authority", b"client-0", b"producer"))
    ledger = SqliteLedger(path)
    ledger.install_charter(make_charter_block(authority, Charter(authority.public_hex, 4)))
    ledger.register_identity(make_enrolment(authority, "client-0", client.public_hex))
    model = ledger.put_model(b"reopen benchmark model")
    head, done = ledger.latest(), 0
    while done < txs:
        n = min(per_block, txs - done)
        batch = [make_transaction(client, {"model-params": model, "num": done + i}).to_json() for i in range(n)]
        head = build_block(head, {"transactions": batch}, producer, copy=False)
        ledger.append(head)
        done += n
    ledger.close()


def reopen(path: Path, read_only: bool = False) -> tuple[float, int]:
    """Seconds and Ed25519 verifications to open ``path`` and read its state."""
    before = verify_cache_stats()["verified"]
    t0 = time.perf_counter()
    ledger = SqliteLedger(path, read_only=read_only)
    ledger.state()
    seconds = time.perf_counter() - t0
    ledger.close()
    return seconds, verify_cache_stats()["verified"] - before


def main(argv: list[str] | None = None) -> int:
    """Build, reopen three ways, print one line each and the ratio."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--txs", type=int, default=100_000, help="transactions in the file")
    p.add_argument("--block", type=int, default=1_000, help="transactions per block")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bcsfl-reopen-") as tmp:
        path = Path(tmp) / "ledger.db"
        build(path, args.txs, args.block)
        set_verify_cache(False)  # count real verifications only
        point_s, point_v = reopen(path)
        ledger = SqliteLedger(path)
        ledger.set_meta(META_KEY, "")  # a point that does not parse: replayed from genesis, as before points
        ledger.close()
        full_s, full_v = reopen(path)
        ro_s, ro_v = reopen(path, read_only=True)
    print(f"txs={args.txs} block={args.block}")
    print(f"from_point seconds={point_s:.3f} verifications={point_v}")
    print(f"from_genesis seconds={full_s:.3f} verifications={full_v}")
    print(f"read_only seconds={ro_s:.3f} verifications={ro_v}")
    print(f"reopen_speedup={full_s / max(point_s, 1e-9):.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
