"""experiments/round_overhead.py at a tiny size: it runs in process, and its last line parses."""

from __future__ import annotations

import math
import re

from experiments import round_overhead


def test_tiny_run_prints_a_parsable_last_line_with_counts(capsys):
    assert round_overhead.main(["--clients", "6", "--rounds", "1"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    m = re.fullmatch(r"clients=(\d+) ratio=(\S+) encodings_per_update=(\S+) hashes_per_update=(\S+)", last)
    assert m, last
    clients, ratio, enc, hashes = int(m[1]), float(m[2]), float(m[3]), float(m[4])
    assert clients == 6
    assert all(math.isfinite(x) for x in (ratio, enc, hashes))
    assert ratio > 0 and enc > 0 and hashes > 0  # the profiler and the hashlib shim counted something


def test_the_hashlib_shim_is_taken_away_after_the_run(capsys):
    import hashlib

    from bcsfl_flower import crypto
    from bcsfl_flower.consensus import messages

    round_overhead.main(["--clients", "4", "--rounds", "1", "--warmup", "0"])
    capsys.readouterr()
    assert crypto.hashlib is hashlib and messages.hashlib is hashlib
