"""The BCS-FL strategy: FedAvg's interface, a committee instead of a trusted server."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from .client.acceptance import CERT_KEY
from .committee.agreement import Agreement
from .committee.chain import committee_seed, stakes_before
from .committee.committee import Committee
from .committee.coordinator import Behaviour
from .committee.filter import FilterConfig, finite_or_none
from .committee.outcome import RoundOutcome, block_data
from .committee.pbft_agreement import PbftAgreement
from .committee.relay import RelayCommittee
from .committee.rootset import RootSet
from .federation.stake import StakeBook, StakePolicy, draw_committee
from .committee.verify import PackageVerifier, Rejection, VerifiedUpdate, verify_round
from .crypto import SigningKey
from .ledger import Ledger, build_block, make_transaction, open_ledger
from .package import PACKAGE_KEY, ModelPackage, arrays_to_numpy, canonical_bytes, numpy_to_arrays, parse_canonical_bytes

__all__ = ["BCSFL"]


# pylint: disable=too-many-instance-attributes,too-many-arguments
class BCSFL(FedAvg):
    """Blockchain-based Collaborative Secure Federated Learning (BCS-FL).

    Takes FedAvg's arguments with the same meaning, so ``FedAvg(...)`` ->
    ``BCSFL(...)`` is the whole server-side change; clients add ``bcsfl_mod``. Each
    round it verifies every signed model package, draws a committee of coordinators
    by Proof-of-Stake (seeded by the previous block's hash), lets them filter updates
    by cosine similarity to a robust reference and by root-set loss change, agree on
    the candidate's hash (2f+1 of 3f+1), and commits the candidate as a block before
    handing it back to Flower.

    Parameters
    ----------
    fraction_train, fraction_evaluate, min_train_nodes, min_evaluate_nodes,
    min_available_nodes, weighted_by_key, arrayrecord_key, configrecord_key,
    train_metrics_aggr_fn, evaluate_metrics_aggr_fn
        As in :class:`flwr.serverapp.strategy.FedAvg`.
    ledger : str | Ledger (default: "sqlite:///bcsfl-ledger.db")
        Where committed global models go: a ledger URL (``memory``,
        ``sqlite:///file.db``) or an open :class:`~bcsfl_flower.ledger.Ledger`.
    committee_size : int (default: 4)
        Coordinators drawn per round; 3f+1 members tolerate f Byzantine ones.
    root_set : RootSet | None (default: None)
        Clean data the coordinators hold. With it, the reference direction is the
        root-set update and candidates are checked by root-set loss; without it, the
        coordinate-wise median of the updates and reported losses are used.
    filter_config : FilterConfig
        Cosine threshold, norm bound and loss-check limits.
    stake_policy : StakePolicy
        Initial stake, reward and penalty.
    max_package_age : float (default: 600)
        Packages older than this many seconds are rejected as stale.
    agreement : Agreement | None
        How the committee agrees (default: PBFT among the members,
        :class:`~bcsfl_flower.committee.pbft_agreement.PbftAgreement`).
    byzantine_first : int (default: 0)
        Experiment hook: the first this-many coordinators drawn each round propose a
        poisoned candidate (the view-0 primary first), forcing view changes.
    committee : str (default: "server")
        ``"server"``: the committee runs inside this ServerApp (quick simulations; its
        members' keys live here). ``"nodes"``: the drawn coordinators are client nodes
        that recompute, verify and sign themselves (through ``bcsfl_mod``); this
        strategy only relays, and clients accept a model only with its certificate.
    enrollment : str (default: "ledger")
        ``"ledger"``: a client counts only once its key is in the ledger's identity
        registry (``bcsfl_mod`` registers it on first use). ``"first-use"``: a
        self-consistent package from an unknown client registers its key (for
        ledgers the clients cannot reach, such as ``memory``).
    byzantine_coordinators : Mapping[str, Behaviour] | None
        Test hook: coordinators (by client id) that propose a dishonest candidate.
    """

    def __init__(
        self,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        weighted_by_key: str = "num-examples",
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        train_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord] | None = None,
        evaluate_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord] | None = None,
        *,
        ledger: str | Ledger = "sqlite:///bcsfl-ledger.db",
        committee_size: int = 4,
        root_set: RootSet | None = None,
        filter_config: FilterConfig | None = None,
        stake_policy: StakePolicy | None = None,
        max_package_age: float = 600.0,
        agreement: Agreement | None = None,
        byzantine_first: int = 0,
        committee: str = "server",
        enrollment: str = "ledger",
        byzantine_coordinators: Mapping[str, Behaviour] | None = None,
    ) -> None:
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
            weighted_by_key=weighted_by_key,
            arrayrecord_key=arrayrecord_key,
            configrecord_key=configrecord_key,
            train_metrics_aggr_fn=train_metrics_aggr_fn,
            evaluate_metrics_aggr_fn=evaluate_metrics_aggr_fn,
        )
        if committee not in ("server", "nodes"):
            raise ValueError("committee must be 'server' or 'nodes'")
        self.committee_mode = committee
        self.relay = RelayCommittee()
        self._relay_key = SigningKey.generate()  # signs blocks; the certificate carries the coordinators' votes
        self._grid: Grid | None = None
        if enrollment not in ("ledger", "first-use"):
            raise ValueError("enrollment must be 'ledger' or 'first-use'")
        self.enrollment = enrollment
        self._ledger_arg = ledger
        self._ledger: Ledger | None = ledger if isinstance(ledger, Ledger) else None
        self.root_set = root_set
        self.filter_config = filter_config or FilterConfig()
        self.stakes = StakeBook(stake_policy or StakePolicy())
        self.committee = Committee(
            size=committee_size,
            agreement=agreement or PbftAgreement(),
            byzantine=dict(byzantine_coordinators or {}),
            byzantine_first=byzantine_first,
        )
        self.verifier = PackageVerifier(
            registry=lambda cid: self.ledger.identity(cid),
            max_age=max_package_age,
            arrayrecord_key=arrayrecord_key,
        )
        self.rounds: list[dict[str, Any]] = []
        self._global: dict[str, np.ndarray] = {}
        self._epsilon: dict[str, float] = {}
        self._on_chain_ids: set[str] | None = None

    @property
    def ledger(self) -> Ledger:
        """The ledger, opened on first use."""
        if self._ledger is None:
            self._ledger = open_ledger(str(self._ledger_arg))
        return self._ledger

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        super().summary()
        log(INFO, "\t└──> BCS-FL: committee of %d, ledger %s", self.committee.size, self._ledger_arg)
        log(INFO, "\t\t└── reference: %s", "root set" if self.root_set else "coordinate-wise median")

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global model (packages are checked against it), then as FedAvg.

        With the committee on nodes, each message also names the block that certifies
        the global model, so clients can check it against the ledger before training.
        """
        self._global = arrays_to_numpy(arrays)
        self._grid = grid
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if self.committee_mode == "nodes":
            head = self.ledger.latest()
            certificate = ConfigRecord({"block-hash": head.hash, "block-seq": head.sequence_no})
            for msg in messages:
                msg.content[CERT_KEY] = certificate
        return messages

    def _verify_all(self, server_round: int, replies: Iterable[Message]) -> tuple[list[VerifiedUpdate], list[Rejection]]:
        valid, errors = self._check_and_log_replies(replies, is_train=True, validate=False)
        rejections = [Rejection(f"node-{m.metadata.src_node_id}", f"error reply: {m.error.reason}") for m in errors]
        if self.enrollment == "first-use":
            self._enroll_first_use(valid)
        updates, found = verify_round(
            self.verifier, [(f"node-{m.metadata.src_node_id}", m.content) for m in valid],
            server_round=server_round, reference=self._global, now=time.time(),
        )
        rejections += found
        for r in rejections:
            log(WARNING, "BCS-FL rejected %s: %s", r.client_id, r.reason)
        return updates, rejections

    def _enroll_first_use(self, replies: list[Message]) -> None:
        """Register unknown clients whose package verifies under its own key."""
        for msg in replies:
            try:
                package = ModelPackage.from_record(msg.content.config_records[PACKAGE_KEY])
            except (KeyError, ValueError):
                continue  # the verifier rejects it with the reason
            if self.ledger.identity(package.client_id) is None and package.signature_valid(package.public_key):
                self.ledger.register_identity(package.client_id, package.public_key, role="client")

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Verify, draw the committee, filter, agree, commit; return the committed model."""
        started = time.perf_counter()
        replies = list(replies)
        updates, rejections = self._verify_all(server_round, replies)
        stages = {"verify": time.perf_counter() - started}
        registered = self.ledger.identities()  # one read per round (an HTTP call when remote)
        new_identities = self._admit_registered(registered)
        head = self.ledger.latest()
        seed = committee_seed(head, server_round)
        # The stake book is rebuilt from the chain each round, so anyone can recompute the draw.
        self.stakes.stakes = stakes_before(head, {**dict.fromkeys(self._on_chain_ids or ()), **new_identities},
                                           self.stakes.policy)
        if self.committee_mode == "nodes":
            outcome = self._decide_on_nodes(server_round, seed, replies, list(new_identities))
        else:
            outcome = self._decide_in_process(server_round, seed, updates)
        stages.update(outcome.timings)
        record: dict[str, Any] = {
            "round": server_round,
            "stages": stages,
            "committee": outcome.members,
            "rejections": {r.client_id: r.reason for r in rejections},
            "bytes_moved": outcome.bytes_moved,
        }
        if outcome.certificate is None or outcome.candidate_bytes is None:
            log(WARNING, "BCS-FL round %d: no quorum (%s); global model unchanged", server_round, outcome.log)
            record.update(accepted=[], rejected=sorted({r.client_id for r in rejections} | {u.client_id for u in updates}),
                          committed=False, server_seconds=time.perf_counter() - started)
            self.rounds.append(record)
            return None, None

        self._update_stakes(outcome, rejections, registered)
        for u in updates:
            if "epsilon" in u.metrics:
                self._epsilon[u.client_id] = u.metrics["epsilon"]
        t_commit = time.perf_counter()
        block = self._commit(server_round, seed, outcome, updates, rejections, new_identities)
        stages["ledger_commit"] = time.perf_counter() - t_commit
        self._on_chain_ids.update(new_identities)  # type: ignore[union-attr]
        committed = parse_canonical_bytes(self.ledger.get_model(outcome.certificate.value))
        kept = set(outcome.kept)
        kept_contents = [m.content for m, u in self._pair(replies, updates) if u.client_id in kept]
        metrics = self.train_metrics_aggr_fn(kept_contents, self.weighted_by_key) if kept_contents else None
        rejected = sorted(set(outcome.rejected) | {r.client_id for r in rejections})
        log(INFO, "BCS-FL round %d: kept %d, rejected %d %s; committee %s; block %d",
            server_round, len(kept), len(rejected), rejected, outcome.members, block.sequence_no)
        record.update(
            accepted=sorted(kept),
            rejected=rejected,
            decisions=outcome.decisions,
            model_hash=outcome.certificate.value,
            block=block.sequence_no,
            committed=True,
            dissenters=outcome.dissenters,
            consensus=outcome.consensus,
            server_seconds=time.perf_counter() - started,
        )
        self.rounds.append(record)
        return numpy_to_arrays(committed), metrics

    def _decide_in_process(self, server_round: int, seed: str, updates: list[VerifiedUpdate]) -> RoundOutcome:
        decision = self.committee.decide(
            server_round=server_round, stakes=self.stakes.snapshot(), seed=seed, global_tensors=self._global,
            updates=updates, root=self.root_set, config=self.filter_config,
        )
        if decision.output is None or decision.certificate is None:
            return RoundOutcome(decision.members, decision.public_keys, None, None, [], decision.dissenters, None,
                                timings=decision.timings, log=decision.log)
        result = decision.output.result
        return RoundOutcome(
            members=decision.members,
            public_keys=decision.public_keys,
            certificate=decision.certificate,
            candidate_bytes=decision.output.candidate_bytes,
            decisions=[d.to_json() for d in result.decisions],
            dissenters=decision.dissenters,
            producer=self.committee.key(decision.primary),
            filter_info={
                "reference": result.reference,
                "root_source": self.root_set.source if self.root_set else None,
                "clip_norm": finite_or_none(result.clip_norm),
                "root_loss_before": finite_or_none(result.root_loss_before),
                "root_loss_after": finite_or_none(result.root_loss_after),
            },
            timings=decision.timings,
            log=decision.log,
            consensus=decision.consensus,
        )

    def _decide_on_nodes(self, server_round: int, seed: str, replies: list[Message], newcomers: list[str]) -> RoundOutcome:
        if self._grid is None:
            raise RuntimeError("committee='nodes' needs the Grid from configure_train")
        t0 = time.perf_counter()
        members = draw_committee(self.stakes.snapshot(), self.committee.size, seed)
        node_of: dict[str, int] = {}
        contents = []
        for msg in replies:
            if msg.has_error():
                continue
            contents.append(msg.content)
            header = msg.content.config_records.get(PACKAGE_KEY)
            if header is not None and isinstance(header.get("client-id"), str):
                node_of.setdefault(header["client-id"], msg.metadata.src_node_id)
        identities = {m: self.ledger.identity(m) for m in members}
        decision = self.relay.decide(
            self._grid, server_round=server_round, members=members, node_of=node_of, identities=identities,
            global_arrays=numpy_to_arrays(self._global), contents=contents, newcomers=newcomers,
        )
        candidate = decision.candidate
        return RoundOutcome(
            members=members,
            public_keys={m: k for m, k in identities.items() if k},
            certificate=decision.certificate,
            candidate_bytes=canonical_bytes(candidate) if candidate is not None else None,
            decisions=decision.decisions,
            dissenters=decision.dissenters,
            producer=self._relay_key,
            filter_info={"reference": "computed by the coordinator nodes"},
            timings={"committee_on_nodes": time.perf_counter() - t0},
            log=decision.log,
            bytes_moved=decision.bytes_sent + decision.bytes_received,
            consensus={"protocol": "prepare/commit votes relayed to coordinator nodes"},
        )

    @staticmethod
    def _pair(replies: list[Message], updates: list[VerifiedUpdate]) -> list[tuple[Message, VerifiedUpdate]]:
        by_packet = {u.package.packet_id: u for u in updates}
        pairs = []
        for msg in replies:
            if not msg.has_error() and PACKAGE_KEY in msg.content.config_records:
                pid = msg.content.config_records[PACKAGE_KEY].get("packet-id")
                if pid in by_packet:
                    pairs.append((msg, by_packet[pid]))
        return pairs

    def _admit_registered(self, registered: dict[str, dict[str, Any]]) -> dict[str, str]:
        """Client identities registered since the last committed block (they join this round)."""
        if self._on_chain_ids is None:  # once per strategy: identities already on chain
            self._on_chain_ids = {cid for blk in self.ledger.blocks(1) for cid in blk.data.get("identities", {})}
        on_chain = self._on_chain_ids
        return {
            cid: info["public_key"]
            for cid, info in registered.items()
            if cid not in on_chain and info.get("role", "client") == "client"
        }

    def _update_stakes(self, outcome: RoundOutcome, rejections: list[Rejection],
                       registered: dict[str, dict[str, Any]]) -> None:
        self.stakes.reward(outcome.kept)
        self.stakes.punish(outcome.rejected + [r.client_id for r in rejections if r.client_id in registered])
        self.stakes.reward(m for m in outcome.members if m not in outcome.dissenters)
        self.stakes.punish(outcome.dissenters)

    def _commit(self, server_round, seed, outcome: RoundOutcome, updates, rejections, identities):
        """Write the candidate bytes and the round's record as a block signed by the producer."""
        digest = self.ledger.put_model(outcome.candidate_bytes)
        kept = set(outcome.kept)
        tx = make_transaction(outcome.producer, {
            "model-params": digest,
            "model-acc": None,
            "num": int(sum(u.package.num_examples for u in updates if u.client_id in kept)),
        })
        data = block_data(outcome, server_round=server_round, seed=seed, digest=digest, transaction=tx,
                          updates=updates, rejections=rejections, stakes=self.stakes.snapshot(),
                          epsilon=self._epsilon, identities=identities)
        block = build_block(self.ledger.latest(), data, outcome.producer)
        self.ledger.append(block)
        return block
