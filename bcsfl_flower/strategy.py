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

from .committee.agreement import Agreement, CountingAgreement
from .committee.chain import committee_seed, stakes_before
from .committee.committee import Committee, CommitteeDecision
from .committee.coordinator import Behaviour
from .committee.filter import FilterConfig, finite_or_none
from .committee.rootset import RootSet
from .committee.stake import StakeBook, StakePolicy
from .committee.verify import PackageVerifier, Rejection, VerifiedUpdate
from .ledger import Ledger, build_block, make_transaction, open_ledger
from .package import PACKAGE_KEY, ModelPackage, arrays_to_numpy, numpy_to_arrays, parse_canonical_bytes

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
        How the committee agrees (default: a 2f+1 quorum count).
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
            agreement=agreement or CountingAgreement(),
            byzantine=dict(byzantine_coordinators or {}),
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
        """Remember the global model (packages are checked against it), then as FedAvg."""
        self._global = arrays_to_numpy(arrays)
        return super().configure_train(server_round, arrays, config, grid)

    def _verify_all(self, server_round: int, replies: Iterable[Message]) -> tuple[list[VerifiedUpdate], list[Rejection]]:
        valid, errors = self._check_and_log_replies(replies, is_train=True, validate=False)
        rejections = [Rejection(f"node-{m.metadata.src_node_id}", f"error reply: {m.error.reason}") for m in errors]
        if self.enrollment == "first-use":
            self._enroll_first_use(valid)
        updates: list[VerifiedUpdate] = []
        now = time.time()
        for msg in valid:
            out = self.verifier.verify(
                msg.content, server_round=server_round, reference=self._global, now=now,
                fallback_id=f"node-{msg.metadata.src_node_id}",
            )
            if isinstance(out, VerifiedUpdate) and any(u.client_id == out.client_id for u in updates):
                out = Rejection(out.client_id, "second package from the same client this round", out.package.packet_id)
            (updates if isinstance(out, VerifiedUpdate) else rejections).append(out)
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
        new_identities = self._admit_registered()
        head = self.ledger.latest()
        seed = committee_seed(head, server_round)
        # The stake book is rebuilt from the chain each round, so anyone can recompute the draw.
        self.stakes.stakes = stakes_before(head, {**dict.fromkeys(self._on_chain_ids or ()), **new_identities},
                                           self.stakes.policy)
        decision = self.committee.decide(
            server_round=server_round,
            stakes=self.stakes.snapshot(),
            seed=seed,
            global_tensors=self._global,
            updates=updates,
            root=self.root_set,
            config=self.filter_config,
        )
        stages.update(decision.timings)
        record: dict[str, Any] = {
            "round": server_round,
            "stages": stages,
            "committee": decision.members,
            "rejections": {r.client_id: r.reason for r in rejections},
        }
        if decision.certificate is None or decision.output is None:
            log(WARNING, "BCS-FL round %d: no quorum (%s); global model unchanged", server_round, decision.log)
            record.update(accepted=[], rejected=sorted({r.client_id for r in rejections} | {u.client_id for u in updates}),
                          committed=False, server_seconds=time.perf_counter() - started)
            self.rounds.append(record)
            return None, None

        result = decision.output.result
        self._update_stakes(decision, rejections)
        for u in updates:
            if "epsilon" in u.metrics:
                self._epsilon[u.client_id] = u.metrics["epsilon"]
        t_commit = time.perf_counter()
        block = self._commit(server_round, decision, updates, rejections, new_identities, seed)
        stages["ledger_commit"] = time.perf_counter() - t_commit
        self._on_chain_ids.update(new_identities)  # type: ignore[union-attr]
        committed = parse_canonical_bytes(self.ledger.get_model(decision.certificate.value))
        kept = set(result.kept)
        kept_contents = [m.content for m, u in self._pair(replies, updates) if u.client_id in kept]
        metrics = self.train_metrics_aggr_fn(kept_contents, self.weighted_by_key) if kept_contents else None
        rejected = sorted(set(result.rejected) | {r.client_id for r in rejections})
        log(INFO, "BCS-FL round %d: kept %d, rejected %d %s; committee %s; block %d",
            server_round, len(kept), len(rejected), rejected, decision.members, block.sequence_no)
        record.update(
            accepted=sorted(kept),
            rejected=rejected,
            decisions=[d.to_json() for d in result.decisions],
            model_hash=decision.certificate.value,
            block=block.sequence_no,
            committed=True,
            dissenters=decision.dissenters,
            server_seconds=time.perf_counter() - started,
        )
        self.rounds.append(record)
        return numpy_to_arrays(committed), metrics

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

    def _admit_registered(self) -> dict[str, str]:
        """Client identities registered since the last committed block (they join this round)."""
        if self._on_chain_ids is None:  # once per strategy: identities already on chain
            self._on_chain_ids = {cid for blk in self.ledger.blocks(1) for cid in blk.data.get("identities", {})}
        on_chain = self._on_chain_ids
        return {
            cid: info["public_key"]
            for cid, info in self.ledger.identities().items()
            if cid not in on_chain and info.get("role", "client") == "client"
        }

    def _update_stakes(self, decision: CommitteeDecision, rejections: list[Rejection]) -> None:
        result = decision.output.result  # type: ignore[union-attr]
        self.stakes.reward(result.kept)
        registered = self.ledger.identities()
        self.stakes.punish(result.rejected + [r.client_id for r in rejections if r.client_id in registered])
        self.stakes.reward(m for m in decision.members if m not in decision.dissenters)
        self.stakes.punish(decision.dissenters)

    def _commit(self, server_round, decision, updates, rejections, identities, seed):
        """Write the candidate bytes and the round's record as a block signed by the primary."""
        output, cert = decision.output, decision.certificate
        digest = self.ledger.put_model(output.candidate_bytes)
        primary_key = self.committee.key(decision.primary)
        result = output.result
        tx = make_transaction(primary_key, {
            "model-params": digest,
            "model-acc": None,
            "num": int(sum(u.package.num_examples for u in updates if u.client_id in set(result.kept))),
        })
        data = {
            "round": server_round,
            "transactions": [tx],
            "model-params": digest,
            "seed": seed,
            "committee": [
                {"member": m, "public": decision.public_keys[m], "stake": self.stakes.stakes.get(m, 0.0)}
                for m in decision.members
            ],
            "quorum": cert.to_json(),
            "dissenters": decision.dissenters,
            "accepted": result.kept,
            "rejected": [{"client_id": d.client_id, "reason": d.reason} for d in result.decisions if not d.kept]
            + [{"client_id": r.client_id, "reason": r.reason} for r in rejections],
            "decisions": [d.to_json() for d in result.decisions],
            "packages": {u.client_id: u.package.model_hash for u in updates},
            "filter": {
                "reference": result.reference,
                "root_source": self.root_set.source if self.root_set else None,
                "clip_norm": finite_or_none(result.clip_norm),
                "root_loss_before": finite_or_none(result.root_loss_before),
                "root_loss_after": finite_or_none(result.root_loss_after),
            },
            "stakes": self.stakes.snapshot(),
            "epsilon": dict(sorted(self._epsilon.items())),
            "identities": identities,
        }
        block = build_block(self.ledger.latest(), data, primary_key)
        self.ledger.append(block)
        return block
