"""The BCS-FL strategy (BCS-FL, Sec. IV): FedAvg's interface, a certified committee instead of a trusted server."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from logging import ERROR, INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result
from flwr.supercore import log

from .committee.agreement import Agreement
from .committee.committee import Committee
from .committee.coordinator import previous_model
from .committee.enrolment import authority_key, enrol_first_use, install_charter, enrol_relay
from .committee.filter import FilterConfig
from .keys import RELAY_ID, key_path, member_keys
from .committee.outcome import RoundOutcome, block_data, client_key
from .committee.pbft_agreement import PbftAgreement
from .committee.relay import RelayCommittee
from .committee.rootset import RootSet
from .committee.verify import PackageVerifier, Rejection, VerifiedUpdate, StoreReader, verify_pool, verify_round
from .crypto import SigningKey
from .federation import MIN_COMMITTEE, CertificateError, FederationState, StakePolicy, verify
from .ledger import Ledger, LedgerError, build_block, open_ledger
from .package import PACKAGE_KEY, arrays_to_numpy, canonical_bytes, numpy_to_arrays, parse_canonical_bytes
from .package import model_hash as canonical_hash

__all__ = ["BCSFL", "ResumeError"]


class ResumeError(RuntimeError):
    """A run cannot start on this ledger: it already certified rounds and the run does not
    continue from its head, or the head's model does not fit the run's model (one line)."""


# pylint: disable=too-many-instance-attributes,too-many-arguments
class BCSFL(FedAvg):
    """Blockchain-based Collaborative Secure Federated Learning (BCS-FL).

    Takes FedAvg's arguments with the same meaning, so ``FedAvg(...)`` ->
    ``BCSFL(...)`` is the whole server-side change; clients add ``bcsfl_mod``. Each
    round it reads the certified chain state once, verifies every signed model package
    against the enrolled keys, lets the committee the chain draws (at least 4 members)
    filter updates by cosine similarity to a robust reference and by root-set loss
    change, and commits the candidate only with 2f+1 member signatures over the round
    statement (model, inputs, decisions, stakes) before handing it back to Flower.

    One round without Flower's loop (tests, attacks): ``BCSFL(ledger=..., key_dir=D,
    enrolment_key=K)``, then ``bootstrap(initial_model)`` (installs the charter), enrol
    the clients (``ledger.register_identity(make_enrolment(K, id, key.public_hex))``,
    their keys at ``D/<id>.key`` so the in-process committee can sign), then
    ``aggregate_train(server_round, replies)`` with signed replies; call
    ``bootstrap(model)`` with each new global model before the next round.

    Parameters
    ----------
    fraction_train, fraction_evaluate, min_train_nodes, min_evaluate_nodes,
    min_available_nodes, weighted_by_key, arrayrecord_key, configrecord_key,
    train_metrics_aggr_fn, evaluate_metrics_aggr_fn
        As in :class:`flwr.serverapp.strategy.FedAvg`.
    ledger : str | Ledger (default: "sqlite:///bcsfl-ledger.db")
        Where committed global models go: a ledger URL (``memory``,
        ``sqlite:///file.db``, ``http://node``) or an open :class:`~bcsfl_flower.ledger.Ledger`.
    committee_size : int (default: 4)
        Coordinators drawn per round, written into the charter of a fresh ledger
        (a ledger with a charter keeps its own); at least 4 (3f+1 with f >= 1).
    root_set : RootSet | None (default: None)
        Clean data the coordinators hold. With it, the reference direction is the
        root-set update and candidates are checked by root-set loss; without it, the
        coordinate-wise median of the updates and reported losses are used.
    filter_config : FilterConfig | None (default: None, i.e. ``FilterConfig()``)
        Cosine threshold, norm bound and loss-check limits.
    stake_policy : StakePolicy | None (default: None, i.e. ``StakePolicy()``)
        Initial stake, reward and penalty, written into the charter of a fresh ledger.
    max_package_age : float (default: 600.0)
        Packages older than this many seconds are refused as stale.
    agreement : Agreement | None (default: None, i.e. ``PbftAgreement()``)
        How the in-process committee agrees on the round statement.
    committee : str (default: "server")
        ``"server"``: the committee runs inside this ServerApp with the members' keys
        from ``key_dir`` (simulations on one machine). ``"nodes"``: the drawn
        coordinators are client nodes that verify, compute and sign themselves
        (through ``bcsfl_mod``); this strategy only relays, and clients train only on
        the model the chain certifies.
    enrollment : str (default: "ledger")
        ``"ledger"``: a package counts only once its client is enrolled by the
        enrolment authority (``bcsfl_mod`` submits its enrolment). ``"first-use"``:
        this strategy enrols, with the enrolment key, every unknown client whose
        package is signed by the key it carries. For ledgers the clients cannot reach
        (``memory``), simulation only: whoever first sends under an id owns it.
    key_dir : str (default: ".bcsfl/keys")
        This machine's key folder (:mod:`bcsfl_flower.keys`): the members'
        ``<id>.key`` files (``committee="server"``), ``enrolment.key`` and ``relay.key``.
    enrolment_key : str | SigningKey | None (default: None)
        The enrolment authority's key (a path to its raw key file, or the key). When
        the ledger has no charter yet, this strategy installs one at the first
        ``configure_train`` naming this key, ``committee_size``, ``stake_policy`` and
        the initial model's exact size. None: ``<key_dir>/enrolment.key``, created
        for a fresh ledger (this machine's operator starts the federation) and read
        if present otherwise. Also used for ``enrollment="first-use"`` and to enrol
        the relay's identity on an HTTP ledger.
    resume : bool (default: False)
        What :meth:`start` does on a ledger that already certified rounds when the
        initial model is not the chain head's model: ``False`` refuses the run with
        :class:`ResumeError` (a second ``flwr run`` on the same ledger file would
        otherwise train a fresh model that the chain does not follow); ``True`` starts
        from the head's certified model instead (same tensor names and shapes, or
        :class:`ResumeError`), and chain round numbers continue after the head's.
        An initial model that *is* the head's model always continues.

    A round in which no update is accepted (empty pool, every pooled package refused,
    or the committee keeps none) commits no block: ``aggregate_train`` returns
    ``(None, None)``, the global model stays the last certified one, and the round's
    record says ``committed: False`` with the ``reason``.
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
        committee: str = "server",
        enrollment: str = "ledger",
        key_dir: str = ".bcsfl/keys",
        enrolment_key: str | SigningKey | None = None,
        resume: bool = False,
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
        if enrollment not in ("ledger", "first-use"):
            raise ValueError("enrollment must be 'ledger' or 'first-use'")
        if committee_size < MIN_COMMITTEE:
            raise ValueError(f"committee_size must be at least {MIN_COMMITTEE} (3f+1 with f >= 1)")
        self.committee_mode = committee
        self.enrollment = enrollment
        self.committee_size = committee_size
        self.stake_policy = stake_policy or StakePolicy()
        self.key_dir = key_dir
        self.enrolment_key = enrolment_key
        self.root_set = root_set
        self.resume = resume
        self.filter_config = filter_config or FilterConfig()
        # The in-process committee (committee="server"). Experiments and tests make members misbehave
        # through it: ``strategy.committee.byzantine_first = 1`` (see :class:`Committee`).
        self.committee = Committee(agreement or PbftAgreement())
        self.relay = RelayCommittee()
        self.verifier = PackageVerifier(registry=lambda cid: None, max_age=max_package_age,
                                        arrayrecord_key=arrayrecord_key)
        self.rounds: list[dict[str, Any]] = []
        self._ledger_arg = ledger
        self._ledger: Ledger | None = ledger if isinstance(ledger, Ledger) else None
        self._remote = isinstance(ledger, str) and ledger.startswith(("http://", "https://"))
        # Signs the blocks it writes (any key: their authority is the certificate); on an
        # HTTP ledger also its enrolled identity for model uploads.
        self._relay_key = SigningKey.load_or_create(key_path(key_dir, RELAY_ID)) if self._remote \
            else SigningKey.generate()
        self._grid: Grid | None = None
        self._global: dict[str, np.ndarray] = {}
        self._epsilon: dict[str, float] = {}
        self._node_of: dict[str, int] = {}  # client id -> Flower node id, from the replies' headers
        self._bootstrapped = False
        self._round_base = 0  # certified rounds on the ledger before this run (Flower counts from 1 each run)

    @property
    def ledger(self) -> Ledger:
        """The ledger, opened on first use (on HTTP, uploading as the relay's identity)."""
        if self._ledger is None:
            url = str(self._ledger_arg)
            self._ledger = open_ledger(url, uploader=(RELAY_ID, self._relay_key)) if self._remote else open_ledger(url)
        return self._ledger

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        super().summary()
        log(INFO, "\t└──> BCS-FL: committee of %d (%s), ledger %s", self.committee_size, self.committee_mode,
            self._ledger_arg)
        log(INFO, "\t\t└── reference: %s", "root set" if self.root_set else "coordinate-wise median")

    # -- set-up ------------------------------------------------------------------------
    def bootstrap(self, arrays: ArrayRecord | Mapping[str, np.ndarray]) -> None:
        """Take ``arrays`` as the global model; on the first call, make the ledger ready.

        Installs the charter on a ledger that has none (with the enrolment key), and on
        an HTTP ledger enrols the relay's identity. ``configure_train`` calls it; a test
        that drives ``aggregate_train`` directly calls it once with the initial model.
        """
        self._global = arrays_to_numpy(arrays) if isinstance(arrays, ArrayRecord) else dict(arrays)
        if self._bootstrapped:
            return
        state = self.ledger.state()
        authority = authority_key(self.enrolment_key, self.key_dir, create=state.charter is None)
        if state.charter is None:
            if authority is None:
                raise RuntimeError("the ledger has no charter and no enrolment key was given: pass enrolment_key "
                                   "or install one with the operator's key")
            install_charter(self.ledger, authority, committee_size=self.committee_size, policy=self.stake_policy,
                            max_model_bytes=len(canonical_bytes(self._global)))
        elif (state.charter.committee_size, state.charter.policy) != (self.committee_size, self.stake_policy):
            log(WARNING, "BCS-FL: the ledger's charter rules (committee of %d, %s) apply, not this strategy's",
                state.charter.committee_size, state.charter.policy)
        if state.model is not None and canonical_hash(self._global) != state.model:
            self._global = self._continue_from_head(state, self._global)  # raises unless resume
        self._round_base = state.round
        if self._remote:
            enrol_relay(self.ledger, self._relay_key, authority)
        self._bootstrapped = True

    @property
    def round_base(self) -> int:
        """Rounds the ledger had certified when this run started (Flower round r is chain round base + r)."""
        return self._round_base

    def ledger_name(self) -> str:
        """The ledger as messages name it: its file, its URL, or the URL it was given."""
        if self._ledger is not None:
            for attr in ("path", "url"):
                if getattr(self._ledger, attr, None):
                    return str(getattr(self._ledger, attr))
        return str(self._ledger_arg)

    def head_model(self, template: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """The chain head's certified model, as ``template``'s names and shapes (None: no certified round).

        Raises :class:`ResumeError` (one line) when the head's model is missing from
        the store or its tensors are not ``template``'s (names, order, shapes): the
        ledger belongs to another model.
        """
        state = self.ledger.state()
        if state.model is None:
            return None
        where = f"the ledger {self.ledger_name()}"
        try:
            head = parse_canonical_bytes(self.ledger.get_model(state.model))
        except (KeyError, ValueError, LedgerError) as err:
            raise ResumeError(f"{where}: cannot read the head's certified model {state.model[:16]}: {err}") from None
        want = [(n, tuple(np.shape(t))) for n, t in template.items()]
        have = [(n, tuple(t.shape)) for n, t in head.items()]
        if want != have:
            diff = next(((w, h) for w, h in zip(want, have) if w != h), None)
            detail = (f"{diff[1][0]}{list(diff[1][1])} where the model has {diff[0][0]}{list(diff[0][1])}" if diff
                      else f"{len(have)} tensors where the model has {len(want)}")
            raise ResumeError(f"{where} certifies a different model (round {state.round}: {detail}); "
                              "resume with the model it was trained with, or use a new ledger")
        return {n: np.array(t) for n, t in head.items()}  # writable copies

    def _continue_from_head(self, state: FederationState, initial: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``initial`` replaced by the head's model when resuming; the refusal otherwise."""
        if not self.resume:
            raise ResumeError(
                f"the ledger {self.ledger_name()} already holds certified rounds (up to round {state.round}): "
                "set resume=true (bcsfl simulate --resume, or BCSFL(resume=True)) to continue from its head, "
                "or use a new ledger")
        head = self.head_model(initial)
        assert head is not None
        log(INFO, "BCS-FL: resuming from the ledger's head: round %d, model %s", state.round, state.model[:16])
        return head

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3, timeout: float = 3600,
              train_config: ConfigRecord | None = None, evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None) -> Result:
        """As :meth:`flwr.serverapp.strategy.Strategy.start`, on the chain's model.

        On a ledger that already certified rounds, an ``initial_arrays`` other than the
        head's model is refused (:class:`ResumeError`), or with ``resume=True``
        replaced by the head's model before anything runs (Flower's round-0
        evaluation included). Flower counts this run's rounds from 1; the chain's
        round numbers continue after the head's (each round's record has both).
        """
        state = self.ledger.state()
        if state.model is not None:
            initial = arrays_to_numpy(initial_arrays)
            if canonical_hash(initial) != state.model:
                initial_arrays = numpy_to_arrays(self._continue_from_head(state, initial))
        return super().start(grid, initial_arrays, num_rounds=num_rounds, timeout=timeout, train_config=train_config,
                             evaluate_config=evaluate_config, evaluate_fn=evaluate_fn)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global model (packages are checked against it), then as FedAvg."""
        self.bootstrap(arrays)
        self._grid = grid
        return super().configure_train(server_round, arrays, config, grid)

    # -- one round: admit -> pool -> verify -> draw -> decide -> commit -> report ------------
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Admit and pool the packages, let the chain's committee decide on the pool, commit; the model."""
        started = time.perf_counter()
        admitted, turned_away = self._admit(server_round, list(replies))
        state = self.ledger.state()  # the one read of certified state: the round decides on its pool
        updates, refused = self._verify_pool(server_round, state, admitted)
        record = self._record(server_round, state, updates, turned_away + refused, started)
        outcome, problem = None, state.committee_problem()
        if problem is None and not updates:  # nothing to decide on: no committee, no block
            problem = _nothing_to_aggregate(state, turned_away + refused)
        if problem is None:
            outcome = self._decide(server_round, record["chain_round"], state, updates, refused, record)
            problem = self._commit(record["chain_round"], state, outcome, updates, record)
        return self._report(server_round, state, outcome, problem, record, started)

    def _admit(self, server_round: int, replies: list[Message]) -> tuple[list[VerifiedUpdate], list[Rejection]]:
        """Verify the replies and pool what passes on the chain; the rest is refused here, with why.

        A client on the committee's side may have pooled its package itself: the pool
        keeps the first package of each client, whoever carried it.
        """
        if self.enrollment == "first-use":
            enrol_first_use(self.ledger, replies, authority_key(self.enrolment_key, self.key_dir))
        state = self.ledger.state()
        self.verifier.registry = lambda cid: client_key(state, cid)
        valid, failed = self._check_and_log_replies(replies, is_train=True, validate=False)
        for msg in valid:  # where each identity answers, for the coordinator messages (committee="nodes")
            header = msg.content.config_records.get(PACKAGE_KEY)
            if header is not None and isinstance(header.get("client-id"), str):
                self._node_of.setdefault(header["client-id"], msg.metadata.src_node_id)
        turned_away = [Rejection(f"node-{m.metadata.src_node_id}", f"error reply: {m.error.reason}") for m in failed]
        admitted, refused = verify_round(self.verifier, _packages(valid), server_round=server_round,
                                         reference=self._global, now=time.time())
        pooled = []
        for u in admitted:
            try:
                self.ledger.put_model(u.blob, u.package.model_hash)  # the verifier just hashed it
                pooled.append(u)
            except LedgerError as err:
                refused.append(Rejection(u.client_id, f"the ledger did not store the parameters: {err}",
                                         u.package.packet_id))
        try:
            self.ledger.post_pool([u.pooled for u in pooled if u.pooled is not None], self._relay_key)
        except LedgerError as err:
            log(ERROR, "BCS-FL round %d: could not pool the packages: %s", server_round, err)
        for r in refused + turned_away:
            log(WARNING, "BCS-FL refused %s: %s", r.client_id, r.reason)
        return pooled, refused + turned_away

    def _verify_pool(self, server_round: int, state: FederationState, admitted: list[VerifiedUpdate]
                     ) -> tuple[list[VerifiedUpdate], list[Rejection]]:
        """The committee's check of the pool; what this relay admitted is not read back from the store."""
        known = {u.package.model_hash: u.tensors for u in admitted}
        return verify_pool(state.pool, StoreReader(self.ledger.get_model, self._global, known),
                           server_round=server_round, reference=self._global, now=time.time(),
                           max_age=self.verifier.max_age, max_skew=self.verifier.max_skew)

    def _decide(self, server_round: int, chain_round: int, state: FederationState, updates: list[VerifiedUpdate],
                refused: list[Rejection], record: dict[str, Any]) -> RoundOutcome:
        """The committee's outcome: in this process, or relayed to the coordinator nodes."""
        decide = self._decide_on_nodes if self.committee_mode == "nodes" else self._decide_in_process
        outcome = decide(server_round, chain_round, state, updates, refused)
        record.update(committee=outcome.committee, bytes_moved=outcome.bytes_moved,
                      bytes_fetched=outcome.bytes_fetched, consensus=outcome.consensus,
                      dissenters=[d["member"] for d in outcome.dissent])
        record["stages"].update(outcome.timings)
        return outcome

    def _report(self, server_round: int, state: FederationState, outcome: RoundOutcome | None,
                problem: str | None, record: dict[str, Any], started: float
                ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Log and record the round; Flower gets the certified tensors (from memory) and the kept metrics."""
        record["server_seconds"] = time.perf_counter() - started
        self.rounds.append(record)
        if problem is not None or outcome is None or outcome.candidate is None:
            log(ERROR, "BCS-FL round %d not committed: %s; global model unchanged", server_round, problem)
            record.update(committed=False, reason=problem)
            return None, None
        log(INFO, "BCS-FL round %d: kept %d, rejected %d %s; committee %s; block %d", server_round,
            len(record["accepted"]), len(record["rejected"]), record["rejected"], record["committee"], record["block"])
        contents = [RecordDict({n: MetricRecord(dict(m)) for n, m in state.pool[c].metrics.items()})
                    for c in record["accepted"]]  # each kept update's signed metrics, as pooled
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key) if contents else None
        return numpy_to_arrays(outcome.candidate), metrics

    def _decide_in_process(self, server_round, chain_round, state, updates, refused) -> RoundOutcome:
        committee = state.committee()
        keys = member_keys(self.key_dir, committee)
        if len(keys) < len(committee):
            log(WARNING, "BCS-FL round %d: no registered key in %s for %s; they cannot sign", server_round,
                self.key_dir, sorted(set(committee) - set(keys)))
        return self.committee.decide(state=state, server_round=server_round, chain_round=chain_round, keys=keys,
                                     global_tensors=self._global, updates=updates, refused=refused,
                                     root=self.root_set, config=self.filter_config,
                                     previous=previous_model(state, self.ledger.get_model, self.filter_config))

    def _decide_on_nodes(self, server_round, chain_round, state, updates, refused) -> RoundOutcome:
        if self._grid is None:
            raise RuntimeError("committee='nodes' needs the Grid from configure_train")
        node_of = {m: self._node_of[m] for m in state.committee() if m in self._node_of}
        # Members read the pool and, once the chain certifies one, the global model off their ledgers.
        initial = numpy_to_arrays(self._global) if state.model is None else None
        return self.relay.decide(self._grid, state=state, server_round=server_round, chain_round=chain_round,
                                 node_of=node_of, global_arrays=initial)

    def _commit(self, chain_round: int, state: FederationState, outcome: RoundOutcome,
                updates: list[VerifiedUpdate], record: dict[str, Any]) -> str | None:
        """Check the certificate as every verifier will, store model and block; why not, or None."""
        if not outcome.committed:
            what = "no quorum" if outcome.certificate is None else "certified, but no matching record or candidate"
            return f"{what} ({'; '.join(outcome.log) or 'no certificate'})"
        assert outcome.certificate is not None and outcome.record is not None and outcome.candidate is not None
        try:  # the same verify the ledger rules, clients and `bcsfl ledger verify` run
            verify(outcome.certificate, outcome.record.statement(state, chain_round), state.committee())
        except CertificateError as err:
            return f"certificate does not verify: {err}"
        kept = set(outcome.record.kept)
        if not kept:  # a certified "keep nobody" moves no model: the round fails, no block
            record["decisions"] = outcome.record.decisions
            return (f"no update accepted: the committee rejected all {len(outcome.record.decisions)} verified "
                    "update(s)")
        t0 = time.perf_counter()
        for u in updates:
            if "epsilon" in u.metrics:
                self._epsilon[u.client_id] = u.metrics["epsilon"]
        num = sum(u.package.num_examples for u in updates if u.client_id in kept)
        data = block_data(outcome, server_round=chain_round, epsilon=self._epsilon, num_examples=num)
        try:
            if outcome.candidate_bytes:  # encoded and hashed once, by the in-process coordinator
                self.ledger.put_model(outcome.candidate_bytes, outcome.record.model)
            elif self.ledger.put_model(canonical_bytes(outcome.candidate)) != outcome.record.model:
                return "the candidate's bytes do not hash to the certified model"
            block = build_block(self.ledger.block(state.height - 1), data, self._relay_key)
            self.ledger.append(block)
        except LedgerError as err:
            return f"the ledger refused the block: {err}"
        record["stages"]["ledger_commit"] = time.perf_counter() - t0
        refused = {r["client_id"]: r["reason"] for r in outcome.record.refused}
        record.update(
            accepted=sorted(kept),
            rejected=sorted(set(outcome.record.rejected) | set(record["rejections"])),
            decisions=outcome.record.decisions,
            refused=refused,
            model_hash=outcome.record.model,
            block=block.sequence_no,
            committed=True,
        )
        return None

    def _record(self, server_round: int, state: FederationState, updates, rejections, started: float
                ) -> dict[str, Any]:
        """The round's entry in ``self.rounds`` before the committee decides."""
        drawn = time.perf_counter()
        committee = list(state.committee())
        stages = {"verify": drawn - started, "pos_draw": time.perf_counter() - drawn}
        return {
            "round": server_round,
            "chain_round": self._round_base + server_round,  # Flower counts rounds from 1 in every run
            "stages": stages,
            "committee": committee,
            "rejections": {r.client_id: r.reason for r in rejections},  # the last reason per id
            "refusals": [{"client_id": r.client_id, "packet_id": r.packet_id, "reason": r.reason} for r in rejections],
            "accepted": [],
            "rejected": sorted({r.client_id for r in rejections} | {u.client_id for u in updates}),
            "bytes_moved": 0,
        }


def _nothing_to_aggregate(state: FederationState, refused: list[Rejection]) -> str:
    """Why a round with no verified update fails (``refused``: this round's refusals, with their reasons)."""
    reasons = "; ".join(sorted({r.reason for r in refused}))
    reasons = f" ({reasons[:300]}{'...' if len(reasons) > 300 else ''})" if reasons else ""
    if not state.pool:
        return f"no update accepted: the round's pool is empty, {len(refused)} reply(ies) refused{reasons}"
    return f"no update accepted: all {len(state.pool)} pooled package(s) were refused at verification{reasons}"


def _packages(replies: Iterable[Message]) -> list[tuple[str, RecordDict]]:
    """``(fallback id, content)`` for each reply: ``node-<id>`` names a package without a header."""
    return [(f"node-{m.metadata.src_node_id}", m.content) for m in replies]
