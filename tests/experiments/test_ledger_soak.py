"""The ledger soak's verdicts (``experiments.ledger_soak_checks``): stalls, memory, exactly once, abuse.

The soak itself runs for minutes (``python -m experiments.ledger_soak --quick``); what
it concludes from its records is checked here on hand-made records, so that a soak
that fails, fails for what the cluster did.
"""

from __future__ import annotations

import os
from collections import Counter

from experiments.ledger_soak import main as soak_main
from experiments.ledger_soak_checks import ChainAudit, abuse_verdict, fault_plan, rss_growth, rss_mib, stalls


def _block(seq: int, ids: list[str]) -> dict[str, object]:
    return {"sequenceNo": seq, "hash": f"h{seq}", "data": {"transactions": [{"id": i} for i in ids]}}


def test_stalls_count_the_edges_of_the_window() -> None:
    assert stalls([1.0, 2.0, 5.0, 6.0], 0.0, 10.0) == 4.0  # 6 -> end of window
    assert stalls([1.0, 2.0, 5.0, 6.0], 1.5, 6.0) == 3.0  # 2 -> 5, the 1.0 before is outside
    assert stalls([20.0], 3.0, 10.0) == 7.0  # nothing inside: the whole window
    assert stalls([3.5, 4.0], 3.0, 4.0) == 0.5  # stuck when the window opens counts


def test_rss_growth_compares_the_first_and_last_thirds() -> None:
    flat = [(t, 200.0 + (t % 3)) for t in range(90)]
    assert not rss_growth(flat).unbounded
    leak = [(t, 200.0 + 5 * t) for t in range(90)]  # 200 MiB -> 645 MiB
    g = rss_growth(leak)
    assert g.unbounded and g.first_max == 200 + 5 * 29 and g.last_max == g.overall_max == 645
    early_peak = [(t, 900.0 if t == 10 else 300.0) for t in range(90)]  # a burst early, then steady
    assert not rss_growth(early_peak).unbounded
    assert rss_growth([]).overall_max == 0.0
    here = rss_mib(os.getpid())
    assert here is not None and here > 1 and rss_mib(2**22 + 12345) is None


def test_chain_audit_finds_lost_duplicated_misplaced_and_diverged() -> None:
    acked = {"a": (1,), "b": (1, 2), "c": (2,), "d": (3,)}
    audit = ChainAudit(acked)
    audit.add_node(0, [_block(0, []), _block(1, ["a", "b"]), _block(2, ["c", "x"]), _block(3, ["d"])])
    assert not (audit.lost or audit.duplicated or audit.misplaced) and audit.chains_equal
    audit.add_node(1, [_block(0, []), _block(1, ["a", "b"]), _block(2, ["c", "x", "x"])])  # d lost, x twice
    assert audit.lost == {"d"} and audit.duplicated == {"x"} and not audit.chains_equal
    audit.add_node(2, [_block(0, []), _block(1, ["a"]), _block(2, ["c", "b"]), _block(3, ["d"])])
    assert audit.misplaced == set()  # b's answer named blocks 1 and 2: both fine
    audit.add_node(3, [_block(0, []), _block(1, ["a", "b"]), _block(2, ["x"]), _block(3, ["d", "c"])])
    assert audit.misplaced == {"c"}  # c's answer said block 2
    assert audit.heads[1] == (3, "h2") and audit.on_chain == 5
    empty = ChainAudit({"a": (1,)})
    empty.add_node(0, [])  # an unreadable node holds nothing
    assert empty.lost == {"a"}


def test_abuse_verdict_counts_anything_but_4xx() -> None:
    answers = {"malformed_json": Counter({"400": 3, "unreachable": 1}), "huge_page": Counter({"422": 2}),
               "forged_tx": Counter({"403": 1, "200": 1, "500": 2})}
    bad, text = abuse_verdict(answers)
    assert bad == 3 and "forged_tx=200x1,403x1,500x2" in text and "malformed_json=400x3,unreachable" in text


def test_fault_plan_one_fault_at_a_time() -> None:
    quick = fault_plan(110, 25, 100)
    assert [a for _, a in quick] == ["kill-primary", "kill-backup", "partition-backup", "kill-primary"]
    assert quick[3][0] >= quick[2][0] + 30  # the next fault waits for the frozen node to resume
    long = fault_plan(3600, 60, 10)
    assert sum(a.startswith("partition") for _, a in long) == 6
    assert all(b[0] - a[0] >= 60 for a, b in zip(long, long[1:]))


def test_soak_help_names_its_options(capsys) -> None:  # type: ignore[no-untyped-def]
    try:
        soak_main(["--help"])
    except SystemExit as exit_:
        assert exit_.code == 0
    out = capsys.readouterr().out
    assert "--quick" in out and "--minutes" in out and "SIGSTOP" in out
