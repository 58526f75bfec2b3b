"""A dishonest ServerApp cannot make honest clients train on a model the committee did not certify.

The committee runs on client nodes (``committee="nodes"``); the ServerApp relays. Each
case subclasses the real strategy to misbehave in one way and checks what the honest
clients (real ClientApps with ``bcsfl_mod``) did.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from bcsfl_flower import BCSFL
from bcsfl_flower.apps.client_app import make_client_app
from bcsfl_flower.apps.task import client_ids, make_root_set, malicious_ids
from bcsfl_flower.inprocess import LocalGrid
from bcsfl_flower.federation import Certificate, verify
from bcsfl_flower.ledger import open_ledger, verify_chain
from bcsfl_flower.models import build_model
from bcsfl_flower.package import arrays_to_numpy, numpy_to_arrays
from bcsfl_flower.settings import RunSettings

N = 5


def settings(tmp_path) -> RunSettings:
    return RunSettings(dataset="digits", num_clients=N, root_size=50, committee="nodes", committee_size=4,
                       bcsfl_ledger=f"sqlite:///{tmp_path / 'ledger.db'}", bcsfl_key_dir=str(tmp_path / "keys"))


class Recording(BCSFL):
    """The honest relay, recording the train replies of each round."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.train_replies: dict[int, list] = {}

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        self.train_replies[server_round] = replies
        return super().aggregate_train(server_round, replies)


def run(strategy_cls, tmp_path, rounds=2, **kwargs):
    s = settings(tmp_path)
    grid = LocalGrid(make_client_app(s.to_mapping()), N)
    strategy = strategy_cls(fraction_evaluate=0.0, min_available_nodes=N, min_train_nodes=N, ledger=s.bcsfl_ledger,
                            committee_size=4, committee="nodes", root_set=make_root_set(s, N),
                            key_dir=s.bcsfl_key_dir, enrolment_key=s.enrolment_key_path(), **kwargs)
    model = build_model("digits", seed=s.seed)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=rounds)
    return strategy, grid


def refusals(replies) -> list[str]:
    return [m.error.reason for m in replies if m.has_error()]


def perturbed(arrays: ArrayRecord, scale: float) -> ArrayRecord:
    rng = np.random.default_rng(int(scale * 100))
    return numpy_to_arrays({k: (v + scale * rng.normal(size=v.shape)).astype(v.dtype) for k, v in arrays_to_numpy(arrays).items()})


def test_honest_relay_commits_certified_rounds_and_clients_train(tmp_path):
    strategy, _ = run(Recording, tmp_path, rounds=2)
    assert all(r["committed"] for r in strategy.rounds)
    assert refusals(strategy.train_replies[2]) == []  # round 2's model carried a valid certificate
    with open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}") as ledger:
        assert verify_chain(ledger).ok
        block = ledger.latest()
        committee = ledger.state_at(block.sequence_no - 1).committee()
        certificate = Certificate.from_json(block.data["certificate"])
        verify(certificate, certificate.statement, committee)  # 2f+1 of the chain's committee, own keys
        assert block.data["committee"] == list(committee) and len(certificate.signatures) >= 3


class SubstitutesAggregate(Recording):
    """(a) hands Flower (and so the clients) its own model instead of the committed one."""

    def aggregate_train(self, server_round, replies):
        arrays, metrics = super().aggregate_train(server_round, replies)
        return (perturbed(arrays, 0.5) if arrays is not None else None), metrics


def test_a_substituted_aggregate_is_refused_by_every_client(tmp_path):
    strategy, _ = run(SubstitutesAggregate, tmp_path, rounds=2)
    reasons = refusals(strategy.train_replies[2])
    assert len(reasons) == N and all("differs from the one certified in round 1" in r for r in reasons)


class DropsOneCoordinator(Recording):
    """(b) silently drops the votes of one committee member each round."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        relay, inner = self.relay, self.relay.decide

        def decide(grid, *, state, **kw):
            relay.drop_votes_from = {list(state.committee())[-1]}
            return inner(grid, state=state, **kw)

        relay.decide = decide


def test_b_dropped_votes_still_commit_with_2f_plus_1(tmp_path):
    strategy, _ = run(DropsOneCoordinator, tmp_path, rounds=2)
    assert all(r["committed"] for r in strategy.rounds)
    assert refusals(strategy.train_replies[2]) == []
    with open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}") as ledger:
        for block in ledger.blocks(1):
            if "round" in block.data:
                signers = [s["member"] for s in block.data["certificate"]["signatures"]]
                assert len(signers) == 3 and block.data["committee"][-1] not in signers


class ReplaysCertificate(Recording):
    """(c) in round 3 sends round 1's certified model again (with its block named as the certificate)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.history: dict[int, ArrayRecord] = {}

    def configure_train(self, server_round, arrays, config, grid):
        self.history[server_round] = arrays
        if server_round == 3:
            old = next(b for b in self.ledger.blocks(1) if b.data.get("round") == 1)
            messages = list(super().configure_train(server_round, self.history[2], config, grid))
            for msg in messages:
                msg.content["bcsfl.certificate"] = ConfigRecord({"block-hash": old.hash, "block-seq": old.sequence_no})
            return messages
        return super().configure_train(server_round, arrays, config, grid)


def test_c_a_replayed_certificate_is_refused(tmp_path):
    strategy, _ = run(ReplaysCertificate, tmp_path, rounds=3)
    reasons = refusals(strategy.train_replies[3])
    assert len(reasons) == N and all("differs from the one certified in round 2" in r for r in reasons)


class ShowsDifferentModels(Recording):
    """(d) in round 2 shows one forged model to half the clients and another to the rest."""

    def configure_train(self, server_round, arrays, config, grid):
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if server_round == 2:
            for i, msg in enumerate(messages):  # FedAvg shares one RecordDict: give each its own
                msg.content = RecordDict({**dict(msg.content.items()), "arrays": perturbed(arrays, 0.3 if i % 2 else 0.6)})
        return messages


def test_d_split_views_are_refused_by_every_client(tmp_path):
    strategy, _ = run(ShowsDifferentModels, tmp_path, rounds=2)
    reasons = refusals(strategy.train_replies[2])
    assert len(reasons) == N and all("differs from the one certified in round 1" in r for r in reasons)


def committed_hashes(tmp_path, mode: str, server_momentum: float = 0.0, rounds: int = 3,
                     strategy_cls=BCSFL) -> list[str]:
    """Run ``rounds`` rounds with the committee in ``mode`` (20% sign-flip attackers); the models' hashes."""
    tag = f"{mode}-{server_momentum}-{strategy_cls.__name__}"
    s = RunSettings(dataset="digits", num_clients=N, root_size=50, committee=mode, committee_size=4,
                    malicious_fraction=0.2, attack="sign-flip", bcsfl_ledger=f"sqlite:///{tmp_path / tag}.db",
                    bcsfl_key_dir=str(tmp_path / tag / "keys"), server_momentum=server_momentum)
    grid = LocalGrid(make_client_app(s.to_mapping()), N)
    strategy = strategy_cls(fraction_evaluate=0.0, min_available_nodes=N, min_train_nodes=N, ledger=s.bcsfl_ledger,
                            committee_size=4, committee=mode, root_set=make_root_set(s, N), key_dir=s.bcsfl_key_dir,
                            enrolment_key=s.enrolment_key_path(), filter_config=s.filter_config())
    strategy.start(grid=grid, initial_arrays=ArrayRecord(build_model("digits", seed=s.seed).state_dict()),
                   num_rounds=rounds)
    assert all(r["committed"] for r in strategy.rounds)
    bad = set(client_ids(malicious_ids(s, N)))
    assert bad and all(bad <= set(r["rejected"]) for r in strategy.rounds)
    hashes = [r.get("model_hash") for r in strategy.rounds]
    state = strategy.ledger.state()
    assert (state.previous_model, state.model) == tuple(hashes[-2:])
    return hashes


def test_nodes_and_server_committees_commit_the_same_models(tmp_path):
    server, nodes = committed_hashes(tmp_path, "server"), committed_hashes(tmp_path, "nodes")
    assert server == nodes and len(set(nodes)) == 3


def test_with_server_momentum_every_member_reads_the_previous_model_off_its_own_ledger(tmp_path):
    """Members on client nodes compute the momentum from their own chains: the relay sends no previous model."""
    plain = committed_hashes(tmp_path, "server")
    server, nodes = committed_hashes(tmp_path, "server", 0.5), committed_hashes(tmp_path, "nodes", 0.5)
    assert server == nodes
    # rounds 1 and 2 have no previous certified model; round 3 moves by the momentum too
    assert server[:2] == plain[:2] and server[2] != plain[2]


class SendsItsOwnModels(BCSFL):
    """(e) once the chain certifies a model, sends every coordinator a model of its own with each role message."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        inner = self.relay.decide

        def decide(grid, *, state, **kw):
            if state.model is not None:  # before that, the sent model is the start by design
                kw["global_arrays"] = perturbed(numpy_to_arrays(self._global), 0.5)
            return inner(grid, state=state, **kw)

        self.relay.decide = decide


def test_with_server_momentum_a_relay_cannot_feed_the_members_a_model(tmp_path):
    """After round 1 the members take the global model, and the one before it, only off their ledgers."""
    honest = committed_hashes(tmp_path, "nodes", 0.5)
    assert committed_hashes(tmp_path, "nodes", 0.5, strategy_cls=SendsItsOwnModels) == honest
