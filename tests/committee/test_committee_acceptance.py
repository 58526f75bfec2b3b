"""The committee's check on a client node: train only on the model the chain certifies."""

import sqlite3

from flwr.app import RecordDict

from bcsfl_flower.committee.acceptance import acceptance_problem
from bcsfl_flower.ledger import open_ledger
from bcsfl_flower.package import arrays_to_numpy
from bcsfl_flower.protocol import ACCEPTED_KEY

from message_kit import chartered_strategy, global_model as model
from core.test_strategy import CLIENTS, honest_replies, run_round


def test_acceptance_refuses_a_model_the_chain_does_not_certify_and_a_truncated_ledger(tmp_path):
    url = f"sqlite:///{tmp_path / 'l.db'}"
    g = model()
    strategy, keys, _ = chartered_strategy(tmp_path, CLIENTS[:5], g, ledger=url)
    node = RecordDict()
    with open_ledger(url) as ledger:
        assert acceptance_problem(g, ledger, node) is None  # before round 1: accepted on first use
        first_head = node.config_records[ACCEPTED_KEY]["seq"]
    arrays, _ = run_round(strategy, g, 1, honest_replies(keys, g, 1))
    g1 = arrays_to_numpy(arrays)
    with open_ledger(url) as ledger:
        assert "differs from the one certified in round 1" in acceptance_problem(g, ledger, node)
        assert acceptance_problem(g1, ledger, node) is None
        assert node.config_records[ACCEPTED_KEY]["seq"] > first_head
    strategy.ledger.close()
    con = sqlite3.connect(tmp_path / "l.db")
    top = con.execute("select max(sequence_no) from blocks").fetchone()[0]
    con.execute("delete from blocks where sequence_no = ?", (top,))
    con.commit()
    con.close()
    with open_ledger(url) as ledger:
        assert "truncated" in acceptance_problem(g, ledger, node)
