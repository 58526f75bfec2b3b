"""A lying coordinator node is outvoted: its statement, candidate and record never reach the ledger.

The committee runs on client nodes; the member the relay asks for the candidate (the first
reachable one) lies: it signs, with its own enrolled key, a statement for a poisoned model and
sends that model and its record. The other three sign the honest statement; the relay
certifies that one, asks an agreeing member for the candidate, and records the liar as dissent.
"""

from __future__ import annotations

import json

from flwr.app import ArrayRecord, ConfigRecord, Context, Message

from bcsfl_flower import BCSFL
from bcsfl_flower.apps.client_app import make_client_app
from bcsfl_flower.apps.task import make_root_set
from bcsfl_flower.crypto import SigningKey
from bcsfl_flower.federation import RoundStatement
from bcsfl_flower.inprocess import LocalGrid
from bcsfl_flower.keys import key_path
from bcsfl_flower.ledger import open_ledger, verify_chain
from bcsfl_flower.models import build_model
from bcsfl_flower.package import arrays_to_numpy, model_hash, numpy_to_arrays
from bcsfl_flower.protocol import CANDIDATE_KEY, RETURN_CANDIDATE_KEY, ROLE_COORDINATE, ROLE_KEY, VOTE_KEY
from bcsfl_flower.settings import RunSettings

N = 5


class LyingFirstMember:
    """A ClientApp whose node, when asked for the candidate, signs and sends a poisoned one."""

    def __init__(self, app, key_dir):
        self.app, self.key_dir, self.lied = app, key_dir, []

    def __call__(self, msg: Message, context: Context) -> Message:
        reply = self.app(msg, context)
        config = msg.content.config_records.get("config", ConfigRecord())
        if config.get(ROLE_KEY) != ROLE_COORDINATE or not config.get(RETURN_CANDIDATE_KEY) or reply.has_error():
            return reply
        vote = dict(reply.content.config_records[VOTE_KEY])
        honest = arrays_to_numpy(reply.content.array_records[CANDIDATE_KEY])
        poisoned = {k: (v - 5.0).astype(v.dtype) for k, v in honest.items()}
        record = json.loads(vote["record"])
        record["model-params"] = model_hash(poisoned)
        statement = RoundStatement.from_json({**json.loads(vote["statement"]), "model": record["model-params"]})
        signature = statement.sign(vote["member"], SigningKey.load_or_create(key_path(self.key_dir, vote["member"])))
        vote.update(statement=json.dumps(statement.to_json()), signature=signature.sign, beacon=signature.beacon,
                    record=json.dumps(record))
        reply.content[VOTE_KEY] = ConfigRecord(vote)
        reply.content[CANDIDATE_KEY] = numpy_to_arrays(poisoned)
        self.lied.append((int(config["server-round"]), vote["member"], record["model-params"]))
        return reply


def test_a_lying_first_member_is_outvoted_and_its_candidate_never_reaches_the_ledger(tmp_path):
    s = RunSettings(dataset="digits", num_clients=N, root_size=50, committee="nodes", committee_size=4,
                    bcsfl_ledger=f"sqlite:///{tmp_path / 'ledger.db'}", bcsfl_key_dir=str(tmp_path / "keys"))
    app = LyingFirstMember(make_client_app(s.to_mapping()), s.bcsfl_key_dir)
    strategy = BCSFL(fraction_evaluate=0.0, min_available_nodes=N, min_train_nodes=N, ledger=s.bcsfl_ledger,
                     committee="nodes", root_set=make_root_set(s, N), key_dir=s.bcsfl_key_dir,
                     enrolment_key=s.enrolment_key_path())
    strategy.start(grid=LocalGrid(app, N), initial_arrays=ArrayRecord(build_model("digits", seed=s.seed).state_dict()),
                   num_rounds=2)
    assert [r for r, _, _ in app.lied] == [1, 2]
    assert all(r["committed"] for r in strategy.rounds)
    with open_ledger(s.bcsfl_ledger) as ledger:
        assert verify_chain(ledger).ok
        blocks = [b for b in ledger.blocks(1) if "round" in b.data]
        for block, (_, liar, forged) in zip(blocks, app.lied):
            assert block.data["model-params"] != forged and not ledger.has_model(forged)
            assert [d["member"] for d in block.data["dissent"]] == [liar]
            assert liar not in {sig["member"] for sig in block.data["certificate"]["signatures"]}
    # What Flower got back is the certified model, fetched from an agreeing member.
    assert [r["model_hash"] for r in strategy.rounds] == [b.data["model-params"] for b in blocks]
