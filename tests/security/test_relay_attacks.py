"""A dishonest relay (ServerApp) and forged packages, through the real strategy and client check.

The strategy runs real rounds on a real SQLite ledger with enrolled clients' signed
packages; the attacker then does what a relay with file access can do: forge packages
under a victim's id, replay old ones, or write a block straight into the SQLite file past
the rules. Clients check a global model with :func:`acceptance_problem`, the check
``bcsfl_mod`` runs before training when the committee is on the nodes.
"""

from __future__ import annotations

import sqlite3

from flwr.app import RecordDict

from bcsfl_flower.committee.acceptance import acceptance_problem
from bcsfl_flower.crypto import SigningKey
from bcsfl_flower.ledger import build_block, verify_chain
from bcsfl_flower.package import arrays_to_numpy, canonical_bytes
from bcsfl_flower.protocol import PACKAGE_KEY

from message_kit import chartered_strategy, global_model, reply, signed_content
from core.test_strategy import honest_replies, run_round

CLIENTS = [f"client-{i}" for i in range(6)]


def _stake(strategy, cid: str) -> float:
    return strategy.ledger.state().stakes()[cid]


def test_forged_header_cannot_slash_the_victim(tmp_path):
    """Packages under the victim's id, from Mallory and replayed by the relay, move no stake."""
    g = global_model()
    strategy, keys, _ = chartered_strategy(tmp_path, CLIENTS, g, ledger=f"sqlite:///{tmp_path / 'l.db'}")
    victim, mallory = "client-2", SigningKey.generate()
    first = honest_replies(keys, g, 1)
    before = _stake(strategy, victim)
    arrays, _ = run_round(strategy, g, 1, first)
    assert arrays is not None and _stake(strategy, victim) > before
    g2 = arrays_to_numpy(arrays)
    poison = {k: (-10 * v).astype(v.dtype) for k, v in g2.items()}
    forged = [
        # Mallory signs a poisoned update under the victim's id, with her key and then with the victim's.
        reply(signed_content(mallory, poison, client_id=victim, server_round=2), node_id=90),
        # The relay replays the victim's package of round 1.
        next(m for m in first if m.content[PACKAGE_KEY]["client-id"] == victim),
    ]
    forged_header = signed_content(mallory, poison, client_id=victim, server_round=2)
    forged_header[PACKAGE_KEY]["public-key"] = keys[victim].public_hex
    forged.append(reply(forged_header, node_id=91))
    before = _stake(strategy, victim)
    arrays, _ = run_round(strategy, g2, 2, forged + honest_replies(keys, g2, 2))
    assert arrays is not None
    block = strategy.ledger.latest()
    # Refused where they arrived, with reasons; none reached the chain's pool, so the block refuses nothing.
    assert block.data["refused"] == []
    refused = [r for r in strategy.rounds[-1]["refusals"] if r["client_id"] == victim]
    assert len(refused) == 3, strategy.rounds[-1]["refusals"]
    assert {r["reason"].split(" (")[0] for r in refused} >= {"public key differs from the registered one",
                                                             "bad signature"}
    assert any("round 1" in r["reason"] or "replayed" in r["reason"] for r in refused)
    # The victim's own package was kept, and nothing the forgers did was booked on it.
    assert [d["kept"] for d in block.data["decisions"] if d["client_id"] == victim] == [True]
    assert _stake(strategy, victim) == before + strategy.ledger.state().charter.policy.reward


def test_relay_writing_past_the_rules_is_refused_by_clients(tmp_path):
    """The relay writes a block into the SQLite file by hand: a poisoned model and the stake book it likes."""
    g = global_model()
    path = tmp_path / "l.db"
    strategy, keys, _ = chartered_strategy(tmp_path, CLIENTS, g, ledger=f"sqlite:///{path}")
    arrays, _ = run_round(strategy, g, 1, honest_replies(keys, g, 1))
    certified = arrays_to_numpy(arrays)
    honest_client = RecordDict()
    assert acceptance_problem(certified, strategy.ledger, honest_client) is None
    head = strategy.ledger.latest()

    poison = {k: (v + 1).astype(v.dtype) for k, v in certified.items()}
    digest = strategy.ledger.put_model(canonical_bytes(poison))
    data = {**head.data, "round": 2, "model-params": digest,
            "stakes": {**head.data["stakes"], "client-5": 1e9}}
    forged = build_block(head, data, SigningKey.generate())
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO blocks VALUES (?,?,?,?,?,?,?)", tuple(forged.to_row()))

    problem = acceptance_problem(poison, strategy.ledger.__class__(path), honest_client)
    assert problem is not None and f"does not verify: stored block {forged.sequence_no}: data.stakes" in problem
    report = verify_chain(strategy.ledger.__class__(path))
    assert not report.ok and report.first_bad_block == forged.sequence_no
