"""The round pool: a relay, a producer or even the committee cannot decide on a subset of what clients sent.

Clients pool their signed packages on the chain (``bcsfl_mod`` with the committee on the
nodes); a round block must account for every pooled package. The attacks: a relay that
forwards only the attackers' replies (real ClientApps, real SQLite ledger, coordinators on
the nodes), a round block certified by the whole committee but leaving a pooled package
out, a carrier that alters a package (its example count) on the way into the pool, and
pool transactions for identities the chain does not know.
"""

from __future__ import annotations

import pytest
from flwr.app import ArrayRecord

from bcsfl_flower import BCSFL
from bcsfl_flower.apps.client_app import make_client_app
from bcsfl_flower.apps.task import make_root_set, malicious_ids
from bcsfl_flower.crypto import SigningKey
from bcsfl_flower.federation import PooledPackage
from bcsfl_flower.inprocess import LocalGrid
from bcsfl_flower.ledger import LedgerError, make_transaction, open_ledger, verify_chain
from bcsfl_flower.models import build_model
from bcsfl_flower.protocol import PACKAGE_KEY
from bcsfl_flower.settings import RunSettings

from ledger_kit import Federation

N = 6


class ForwardsOnlyAttackers(BCSFL):
    """A relay that hands the round only the attackers' replies (and pools only theirs).

    ``reach_members``: it still learns from every reply where each member answers, so
    the coordinators get its messages (else it reaches only the attackers' nodes).
    """

    def __init__(self, attackers: set[str], reach_members: bool, **kwargs):
        super().__init__(**kwargs)
        self.attackers, self.reach_members, self.withheld = attackers, reach_members, []

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        if self.reach_members:
            self._node_of.update({m.content[PACKAGE_KEY]["client-id"]: m.metadata.src_node_id for m in replies})
        kept = [m for m in replies if not m.has_error() and m.content[PACKAGE_KEY]["client-id"] in self.attackers]
        self.withheld.append(len(replies) - len(kept))
        return super().aggregate_train(server_round, kept)


@pytest.mark.parametrize("reach_members", [True, False], ids=["members-reached", "members-cut-off"])
def test_relay_forwarding_a_subset_cannot_change_the_inputs(tmp_path, reach_members):
    """The round commits the full pool (members reached) or nothing at all (members cut off)."""
    s = RunSettings(dataset="digits", num_clients=N, root_size=50, committee="nodes", committee_size=4,
                    malicious_fraction=0.34, attack="sign-flip",
                    bcsfl_ledger=f"sqlite:///{tmp_path / 'ledger.db'}", bcsfl_key_dir=str(tmp_path / "keys"))
    attackers = {f"client-{i}" for i in malicious_ids(s, N)}
    assert 0 < len(attackers) < N
    strategy = ForwardsOnlyAttackers(attackers, reach_members, fraction_evaluate=0.0, min_available_nodes=N, min_train_nodes=N,
                                     ledger=s.bcsfl_ledger, committee="nodes", root_set=make_root_set(s, N),
                                     key_dir=s.bcsfl_key_dir, enrolment_key=s.enrolment_key_path())
    strategy.start(grid=LocalGrid(make_client_app(s.to_mapping()), N),
                   initial_arrays=ArrayRecord(build_model("digits", seed=s.seed).state_dict()), num_rounds=2)
    assert strategy.withheld == [N - len(attackers)] * 2  # the relay really withheld the honest replies
    with open_ledger(s.bcsfl_ledger) as ledger:
        assert verify_chain(ledger).ok
        rounds = [b for b in ledger.blocks(1) if "round" in b.data]
        if not reach_members:  # the attackers' members alone are no quorum: delayed, never a subset
            assert rounds == [] and not any(r["committed"] for r in strategy.rounds)
            assert all("no quorum" in r["reason"] for r in strategy.rounds)
            return
        assert all(r["committed"] for r in strategy.rounds) and len(rounds) == 2
        for block in rounds:
            # Every client's package went in (the clients pooled their own), and the attackers were rejected.
            assert [i["client_id"] for i in block.data["inputs"]] == sorted(f"client-{i}" for i in range(N))
            decided = {d["client_id"]: d["kept"] for d in block.data["decisions"]}
            assert not any(decided[a] for a in attackers)
            assert all(decided[c] for c in decided if c not in attackers)


def test_a_round_block_leaving_out_a_pooled_package_is_refused(federation: Federation):
    """Even with every member's signature, a block deciding on a subset of the pool does not commit."""
    federation.ledger.append(federation.pool_block(1))
    honest = federation.round_block(1)
    victim = honest.data["inputs"][0]["client_id"]
    state = federation.ledger.state()
    inputs = [i for i in honest.data["inputs"] if i["client_id"] != victim]
    decisions = [d for d in honest.data["decisions"] if d["client_id"] != victim]
    from bcsfl_flower.federation import Certificate, next_stakes

    stakes = next_stakes(state.stakes(), [d["client_id"] for d in decisions], [], state.charter.policy)
    statement = state.statement(1, state.head, honest.data["model-params"], inputs, decisions, [], stakes)
    cert = Certificate(statement, tuple(statement.sign(m, federation.keys[m]) for m in state.committee()))
    subset = federation.round_block(1, inputs=inputs, decisions=decisions, stakes=stakes,
                                    certificate=cert.to_json())
    head = federation.ledger.latest().hash
    with pytest.raises(LedgerError, match=rf"exactly the round's pool \(missing \['{victim}'\]"):
        federation.ledger.append(subset)
    assert federation.ledger.latest().hash == head
    federation.ledger.append(honest)  # the full pool still commits


def test_a_carrier_cannot_inflate_num_examples_on_the_way_into_the_pool(federation: Federation):
    """The relay raises a pooled package's example count (its weight): the client's signature no longer holds."""
    package = federation.package("client-1", 1)
    inflated = PooledPackage({**package.header, "num_examples": 10**9}, package.signature, package.metrics)
    tx = make_transaction(SigningKey.generate(), {"pool": [inflated.to_json()]})
    head = federation.ledger.latest().hash
    with pytest.raises(LedgerError, match="signature does not verify under its enrolled key"):
        federation.ledger.append(federation.tx_block([tx]))
    assert federation.ledger.latest().hash == head and not federation.ledger.state().pool


def test_pool_entries_for_unknown_or_mismatched_identities_are_refused(federation: Federation):
    mallory = SigningKey.generate()
    package = federation.package("client-2", 1)
    stranger = PooledPackage({**package.header, "client_id": "mallory", "public_key": mallory.public_hex},
                             package.signature, {})
    wrong_key = PooledPackage({**package.header, "public_key": mallory.public_hex}, package.signature, {})
    for bad, reason in ((stranger, "not an enrolled client"), (wrong_key, "names a key other than its enrolled one")):
        tx = make_transaction(mallory, {"pool": [bad.to_json()]})
        with pytest.raises(LedgerError, match=reason):
            federation.ledger.append(federation.tx_block([tx]))
    # A client's newest package counts: a replayed older one changes nothing, a newer one replaces it.
    federation.ledger.append(federation.pool_block(2, ["client-2"]))
    older = federation.package("client-2", 1)
    federation.ledger.append(federation.tx_block([make_transaction(mallory, {"pool": [older.to_json()]})]))
    assert federation.ledger.state().pool["client-2"].packet_id == "client-2-r2"
    federation.ledger.append(federation.pool_block(3, ["client-2"]))
    assert federation.ledger.state().pool["client-2"].packet_id == "client-2-r3"
