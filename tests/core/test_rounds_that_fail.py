"""A round in which no client update is accepted fails: no round block, ``committed`` False, the run goes on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bcsfl_flower.ledger import open_ledger, verify_chain
from bcsfl_flower.settings import RunSettings
from bcsfl_flower.simulate import simulate

from message_kit import chartered_strategy, global_model, reply, signed_content

CLIENTS = [f"client-{i}" for i in range(4)]


def _round_blocks(ledger) -> list[int]:
    return [b.data["round"] for b in ledger.blocks(1) if "round" in b.data]


def _cancelling_replies(keys, g, server_round):
    """Two pairs of opposite steps: the coordinate-wise median reference is zero, so the
    committee (no root set) keeps nobody: every cosine is 0, at or below the threshold."""
    rng = np.random.default_rng(1)
    d = {k: 0.05 * rng.normal(size=v.shape) for k, v in g.items()}
    e = {k: 0.05 * rng.normal(size=v.shape) for k, v in g.items()}
    steps = [d, {k: -v for k, v in d.items()}, e, {k: -v for k, v in e.items()}]
    return [reply(signed_content(keys[c], {k: (g[k] + s[k]).astype(np.float32) for k in g}, client_id=c,
                                 server_round=server_round, metrics={"train_loss": 1.0}), node_id=i + 1)
            for i, (c, s) in enumerate(zip(CLIENTS, steps))]


def test_a_certified_keep_nobody_appends_no_block_and_returns_nothing(tmp_path):
    g = global_model()
    strategy, keys, _ = chartered_strategy(tmp_path, CLIENTS, g)
    height, stakes = strategy.ledger.height(), strategy.ledger.state().stakes()
    strategy.bootstrap(g)
    assert strategy.aggregate_train(1, _cancelling_replies(keys, g, 1)) == (None, None)
    # Only the round's pool was written; no round block, no stake moved, the model unchanged.
    assert strategy.ledger.height() == height + 1 and _round_blocks(strategy.ledger) == []
    state = strategy.ledger.state()
    assert state.round == 0 and state.model is None and state.stakes() == stakes
    record = strategy.rounds[-1]
    assert record["committed"] is False and "block" not in record and "model_hash" not in record
    assert "no update accepted" in record["reason"] and "rejected all 4" in record["reason"]
    assert record["accepted"] == [] and record["rejected"] == CLIENTS
    assert [d["kept"] for d in record["decisions"]] == [False] * 4  # what the committee decided, for the report
    assert verify_chain(strategy.ledger).ok


def test_a_round_whose_every_package_is_refused_runs_no_committee(tmp_path):
    g = global_model()
    strategy, keys, _ = chartered_strategy(tmp_path, CLIENTS, g)
    height = strategy.ledger.height()
    strategy.committee.decide = lambda **kw: (_ for _ in ()).throw(AssertionError("the committee ran"))
    strategy.bootstrap(g)
    # Packages signed for another round: refused before the pool.
    stale = [reply(signed_content(keys[c], g, client_id=c, server_round=7), node_id=i + 1)
             for i, c in enumerate(CLIENTS)]
    assert strategy.aggregate_train(1, stale) == (None, None)
    assert strategy.ledger.height() == height  # nothing pooled, nothing appended
    record = strategy.rounds[-1]
    assert record["committed"] is False and "the round's pool is empty, 4 reply(ies) refused" in record["reason"]
    assert record["committee"] and record["rejected"] == CLIENTS
    # An empty reply list fails the same way.
    assert strategy.aggregate_train(2, []) == (None, None)
    assert "pool is empty, 0 reply(ies) refused" in strategy.rounds[-1]["reason"]


def test_an_all_malicious_federation_fails_every_round_and_the_run_goes_on(tmp_path, capsys, caplog):
    """Every client flips signs (0.9 of 4 is 4): each round fails cleanly; metrics say so.
    Quiet: no per-round lines, no Flower INFO; the failed rounds' errors still show."""
    import logging

    level = logging.getLogger("flwr").level
    out = tmp_path / "out"
    s = RunSettings(dataset="digits", num_clients=4, num_server_rounds=2, malicious_fraction=0.9,
                    attack="sign-flip", bcsfl_ledger=f"sqlite:///{out / 'ledger.db'}",
                    bcsfl_key_dir=str(out / "keys"), out=str(out))
    metrics = simulate(s, "inprocess", quiet=True)
    assert "[bcsfl] round" not in capsys.readouterr().out
    shown = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "flwr"]
    assert all(level >= logging.WARNING for level, _ in shown), shown
    assert sum(level == logging.ERROR and "not committed: no update accepted" in m for level, m in shown) == 2
    assert logging.getLogger("flwr").level == level  # restored after the run
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert len(metrics["malicious_clients"]) == 4
    assert metrics["failed_rounds"] == 2 == len(metrics["rounds"])
    for r in metrics["rounds"]:
        assert r["committed"] is False and "no update accepted" in r["reason"], r
        assert r["accepted"] == [] and set(r["rejected"]) == set(metrics["malicious_clients"])
        assert isinstance(r["accuracy"], float) and "block" not in r
    with open_ledger(out / "ledger.db", create=False) as ledger:
        assert _round_blocks(ledger) == [] and verify_chain(ledger).ok
    assert not list(Path(out).glob(".metrics.json.*"))  # written whole, no leftover


def test_baseline_rounds_are_committed_when_flower_got_an_aggregate(tmp_path):
    out = tmp_path / "out"
    s = RunSettings(strategy="fedavg", dataset="digits", num_clients=3, num_server_rounds=1, out=str(out),
                    bcsfl_ledger=f"sqlite:///{out / 'ledger.db'}", bcsfl_key_dir=str(out / "keys"))
    metrics = simulate(s, "inprocess", quiet=True)
    assert metrics["failed_rounds"] == 0 and [r["committed"] for r in metrics["rounds"]] == [True]
    assert "resumed_from_round" not in metrics  # a baseline has no chain
