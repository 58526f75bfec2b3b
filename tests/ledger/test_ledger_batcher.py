"""The sans-IO batcher and recovery watch, driven with events and a fake clock.

No sockets, no event loop, no sleeps: each test builds a :class:`Batcher` for one node,
tells it what the node knows (:class:`NodeFacts`, on a real chartered chain in memory)
and the time, and checks the actions it returns (forward, propose, ping, timers,
answers to waiting clients).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from bcsfl_flower.consensus.messages import Status, sign
from bcsfl_flower.crypto import SigningKey
from bcsfl_flower.ledger import MemoryLedger, Transaction
from bcsfl_flower.ledger.block import make_transaction
from bcsfl_flower.ledger.batcher import (
    OUTSTANDING_TTL, BatchConfig, Batcher, BatchTimer, CancelTimer, ForwardTxs, NodeFacts, Ping,
    ProposeBlock, Resolve, SetTimer, TxWait,
)
from bcsfl_flower.ledger.recovery import RecoveryWatch
from ledger_kit import Federation, seeded

CFG = BatchConfig(batch_size=2, batch_delay=0.01, max_inflight=2, request_timeout=2.0, tx_retry=5.0)
KEY = seeded("node-0")


@pytest.fixture
def fed() -> Federation:
    return Federation.start(MemoryLedger())


def facts(fed: Federation, primary: int = 0, leads: bool = True) -> NodeFacts:
    return NodeFacts(primary, leads, fed.ledger.latest(), fed.ledger.state(), fed.ledger.has_model)


def txs(fed: Federation, n: int, start: int = 0) -> list[dict]:
    return [fed.tx(f"client-{i % 5}", n=start + i).to_json() for i in range(n)]


def proposed(actions: list) -> list:
    return [a.block for a in actions if isinstance(a, ProposeBlock)]


def executed(fed: Federation, batcher: Batcher, block, ok: bool = True) -> list:
    """Execute ``block`` on the in-memory chain (when ok) and tell the batcher."""
    if ok:
        fed.ledger.append(block)
    return batcher.on_executed(block, ok, facts=facts(fed))


# ---------------------------------------------------------------------- routing
def test_a_backup_forwards_its_clients_transactions_to_the_primary_and_watches_them(fed):
    b = Batcher(0, KEY, CFG)
    batch = txs(fed, 3)
    out = b.add(batch, facts=facts(fed, primary=2, leads=False), now=100.0, from_client=True)
    assert out == [SetTimer(BatchTimer.RETRY, 1.0), ForwardTxs(2, batch, 1)]
    assert set(b.outstanding) == {tx["id"] for tx in batch} and not b.pool
    # a second batch: the retry timer is armed already
    more = txs(fed, 1, start=10)
    assert b.add(more, facts=facts(fed, primary=2, leads=False), now=100.5, from_client=True) == [
        ForwardTxs(2, more, 1)]


def test_forwarded_transactions_stop_after_three_hops_and_garbage_is_ignored(fed):
    b = Batcher(0, KEY, CFG)
    batch = txs(fed, 1)
    view = facts(fed, primary=1, leads=False)
    assert b.add(batch, facts=view, now=0.0, hops=2) == [ForwardTxs(1, batch, 3)]
    assert b.add(batch, facts=view, now=0.0, hops=3) == []
    assert b.add([1, "x", {"id": 7}, {"no": "id"}], facts=view, now=0.0, hops=0) == []


def test_the_primary_pools_and_arms_one_build_timer(fed):
    b = Batcher(0, KEY, CFG)
    first = b.add(txs(fed, 1), facts=facts(fed), now=0.0, hops=1)
    assert first == [SetTimer(BatchTimer.BUILD, CFG.batch_delay)]
    assert b.add(txs(fed, 1, start=5), facts=facts(fed), now=0.001, hops=1) == []  # not re-armed
    assert len(b.pool) == 2 and b.armed == {BatchTimer.BUILD}


# ---------------------------------------------------------------------- building
def test_the_build_timer_proposes_chained_blocks_up_to_the_inflight_limit(fed):
    b = Batcher(0, KEY, CFG)
    batch = txs(fed, 5)
    b.add(batch, facts=facts(fed), now=0.0)
    head = fed.ledger.latest()
    out = b.on_timer(BatchTimer.BUILD, facts=facts(fed), now=0.01, wall=head.timestamp + 10)
    blocks = proposed(out)
    assert out == [ProposeBlock(block) for block in blocks]
    assert len(blocks) == CFG.max_inflight  # two blocks of two; the fifth waits
    assert [blk.transactions for blk in blocks] == [batch[:2], batch[2:4]]
    assert blocks[0].last_hash == head.hash and blocks[1].last_hash == blocks[0].hash
    assert blocks[0].timestamp == head.timestamp + 10 and blocks[0].public == KEY.public_hex
    assert list(b.pool) == [batch[4]["id"]] and b.armed == set()


def test_a_block_is_never_stamped_before_its_parent(fed):
    b = Batcher(0, KEY, CFG)
    b.add(txs(fed, 1), facts=facts(fed), now=0.0)
    head = fed.ledger.latest()
    [block] = proposed(b.on_timer(BatchTimer.BUILD, facts=facts(fed), now=1.0, wall=head.timestamp - 60))
    assert block.timestamp == head.timestamp


def test_an_executed_block_answers_its_waiters_and_lets_the_next_one_be_built(fed):
    b = Batcher(0, KEY, CFG)
    batch = txs(fed, 5)
    wait = TxWait([tx["id"] for tx in batch[:3]])
    assert b.register(wait) == []
    b.add(batch, facts=facts(fed), now=0.0, from_client=True)
    first, second = proposed(b.on_timer(BatchTimer.BUILD, facts=facts(fed), now=0.01, wall=0.0))
    assert executed(fed, b, first) == [SetTimer(BatchTimer.BUILD, 0.0)]  # the fifth is due
    assert wait.remaining == {batch[2]["id"]}
    assert executed(fed, b, second) == [Resolve(wait)]  # the build timer is still armed
    assert wait.where == {batch[0]["id"]: 2 + 5, batch[1]["id"]: 2 + 5, batch[2]["id"]: 3 + 5}
    assert not b.proposed and not b.inflight_ids and b.head is None
    assert list(b.outstanding) == [batch[4]["id"]]
    [third] = proposed(b.on_timer(BatchTimer.BUILD, facts=facts(fed), now=0.02, wall=0.0))
    assert third.last_hash == second.hash and third.transactions == [batch[4]]


def test_a_client_waiting_for_what_already_committed_is_answered_at_once(fed):
    b = Batcher(0, KEY, CFG)
    batch = txs(fed, 2)
    b.add(batch, facts=facts(fed), now=0.0)
    [block] = proposed(b.on_timer(BatchTimer.BUILD, facts=facts(fed), now=0.0, wall=0.0))
    executed(fed, b, block)
    wait = TxWait([batch[1]["id"]])
    assert b.register(wait) == [Resolve(wait)] and wait.where == {batch[1]["id"]: block.sequence_no}
    # and a committed transaction sent again is not pooled again
    assert b.add(batch, facts=facts(fed), now=1.0) == [SetTimer(BatchTimer.BUILD, CFG.batch_delay)]
    assert not b.pool


def on_chain(fed: Federation):
    """``NodeFacts.committed`` read off the chain (as a node reads its SQLite file)."""
    def committed(ids):
        where = {tx["id"]: b.sequence_no for b in fed.ledger.blocks() for tx in b.transactions}
        return {i: where[i] for i in ids if i in where}
    return committed


def test_a_transaction_already_on_the_chain_is_never_batched_again_even_by_a_fresh_batcher(fed):
    first = Batcher(0, KEY, CFG)
    old = txs(fed, 2)
    first.add(old, facts=facts(fed), now=0.0, from_client=True)
    [block] = proposed(first.on_timer(BatchTimer.BUILD, facts=facts(fed), now=0.0, wall=0.0))
    executed(fed, first, block)
    # The node restarts: a new batcher that remembers nothing; the chain does.
    b = Batcher(0, KEY, CFG)
    known = replace(facts(fed), committed=on_chain(fed))
    wait = TxWait([old[0]["id"]])
    assert b.register(wait, facts=known) == [Resolve(wait)] and wait.where == {old[0]["id"]: block.sequence_no}
    new = txs(fed, 1, start=10)
    b.add([old[1], *new, old[0]], facts=known, now=1.0, from_client=True)
    assert list(b.pool) == [new[0]["id"]] and list(b.outstanding) == [new[0]["id"]]
    [again] = proposed(b.on_timer(BatchTimer.BUILD, facts=known, now=1.0, wall=0.0))
    assert again.transactions == new
    # Nor forwarded: a backup drops it too, and answers a client waiting for it.
    backup = Batcher(1, seeded("node-1"), CFG)
    late = TxWait([old[1]["id"]])
    backup.waits[old[1]["id"]] = [late]  # registered before the lookup could know
    acts = backup.add([old[1]], facts=replace(known, primary=0, leads=False), now=2.0, hops=1)
    assert acts == [Resolve(late)] and late.where == {old[1]["id"]: block.sequence_no}


def test_a_refused_block_gives_back_only_what_is_not_on_the_chain(fed):
    b = Batcher(0, KEY, replace(CFG, batch_size=3, max_inflight=1))
    batch = txs(fed, 3)
    b.add(batch, facts=facts(fed), now=0.0)
    [block] = proposed(b.on_timer(BatchTimer.BUILD, facts=facts(fed), now=0.0, wall=0.0))
    # A faulty node got batch[1] onto the chain first; the block is refused on every node.
    fed.ledger.append(fed.tx_block([Transaction.from_json(batch[1])]))
    b.on_executed(block, False, facts=replace(facts(fed), committed=on_chain(fed)))
    assert list(b.pool) == [batch[0]["id"], batch[2]["id"]]


def test_a_forgotten_wait_is_not_answered(fed):
    b = Batcher(0, KEY, CFG)
    batch = txs(fed, 1)
    wait = TxWait([batch[0]["id"]])
    b.register(wait)
    b.forget(wait)
    b.add(batch, facts=facts(fed), now=0.0)
    [block] = proposed(b.on_timer(BatchTimer.BUILD, facts=facts(fed), now=0.0, wall=0.0))
    assert executed(fed, b, block) == [] and wait.remaining == {batch[0]["id"]}


def test_the_primary_batches_only_what_it_verified_so_its_block_vouches_for_every_signature(fed):
    """A faulty forwarder's forged transaction never reaches a block: the primary's
    signature on a block is its word that every transaction in it is validly signed."""
    b = Batcher(0, KEY, replace(CFG, batch_size=3, max_inflight=1))
    good = txs(fed, 2)
    forged = dict(fed.tx("client-1", n=99).to_json(), sign="00" * 64)
    unsigned = {k: v for k, v in fed.tx("client-2", n=98).to_json().items() if k != "sign"}
    b.add([good[0], forged, unsigned, good[1]], facts=facts(fed), now=0.0, hops=1)
    [block] = proposed(b.on_timer(BatchTimer.BUILD, facts=facts(fed), now=0.0, wall=0.0))
    assert block.transactions == good and not b.pool


def test_a_refused_block_is_proposed_again_without_its_bad_transactions(fed):
    b = Batcher(0, KEY, replace(CFG, batch_size=3, max_inflight=1))
    good = txs(fed, 2)
    stranger = make_transaction(seeded("not enrolled"), {"n": 1}).to_json()  # validly signed, refused by the rules
    b.add([good[0], stranger, good[1]], facts=facts(fed), now=0.0, hops=1)
    [block] = proposed(b.on_timer(BatchTimer.BUILD, facts=facts(fed), now=0.0, wall=0.0))
    assert block.transactions == [good[0], stranger, good[1]]
    assert executed(fed, b, block, ok=False) == [SetTimer(BatchTimer.BUILD, 0.0)]
    assert list(b.pool) == [good[0]["id"], good[1]["id"]] and b.head is None
    [again] = proposed(b.on_timer(BatchTimer.BUILD, facts=facts(fed), now=0.0, wall=0.0))
    assert again.transactions == good and again.last_hash == fed.ledger.latest().hash


def test_a_transaction_referencing_an_unknown_model_is_dropped_on_refusal(fed):
    b = Batcher(0, KEY, CFG)
    tx = fed.tx("client-0", model=b"some update").to_json()
    b.add([tx], facts=facts(fed), now=0.0)
    [block] = proposed(b.on_timer(BatchTimer.BUILD, facts=facts(fed), now=0.0, wall=0.0))
    gone = replace(facts(fed), has_model=lambda digest: False)
    assert b.on_executed(block, False, facts=gone) == [] and not b.pool


# ---------------------------------------------------------------------- views
def test_a_new_primary_takes_back_its_inflight_transactions(fed):
    b = Batcher(0, KEY, CFG)
    batch = txs(fed, 4)
    b.add(batch, facts=facts(fed), now=0.0)
    b.on_timer(BatchTimer.BUILD, facts=facts(fed), now=0.0, wall=0.0)
    assert len(b.proposed) == 2 and not b.pool
    # a view change: this node leads again; its blocks of the old view will not commit
    assert b.on_view(facts=facts(fed)) == [SetTimer(BatchTimer.BUILD, 0.0)]
    assert list(b.pool) == [tx["id"] for tx in batch] and not b.proposed and b.head is None


def test_a_node_that_lost_the_lead_hands_its_pool_and_its_clients_transactions_over(fed):
    b = Batcher(0, KEY, CFG)
    mine, forwarded = txs(fed, 2), txs(fed, 2, start=10)
    b.add(mine, facts=facts(fed), now=0.0, from_client=True)
    b.add(forwarded, facts=facts(fed), now=0.0, hops=1)
    out = b.on_view(facts=facts(fed, primary=3, leads=False))
    assert out == [ForwardTxs(3, mine + forwarded, 1)] and not b.pool


def test_a_build_timer_firing_after_the_lead_was_lost_forwards_the_pool(fed):
    b = Batcher(0, KEY, CFG)
    batch = txs(fed, 2)
    b.add(batch, facts=facts(fed), now=0.0, hops=1)
    out = b.on_timer(BatchTimer.BUILD, facts=facts(fed, primary=1, leads=False), now=0.1, wall=0.0)
    assert out == [ForwardTxs(1, batch, 1)] and not b.proposed


def test_a_fenced_primary_keeps_its_pool_without_building(fed):
    b = Batcher(0, KEY, CFG)  # primary of its view, but may not propose (fenced, recovering)
    b.add(txs(fed, 2), facts=facts(fed, primary=0, leads=False), now=0.0)
    assert b.on_timer(BatchTimer.BUILD, facts=facts(fed, primary=0, leads=False), now=0.1, wall=0.0) == []
    assert len(b.pool) == 2


# ---------------------------------------------------------------------- retries
def test_the_retry_timer_pings_then_forwards_again_then_gives_up(fed):
    b = Batcher(0, KEY, CFG)
    batch = txs(fed, 2)
    backup = facts(fed, primary=1, leads=False)
    b.add(batch, facts=backup, now=0.0, from_client=True)
    retry = SetTimer(BatchTimer.RETRY, 1.0)
    assert b.on_timer(BatchTimer.RETRY, facts=backup, now=1.0, wall=0.0) == [retry]
    assert b.on_timer(BatchTimer.RETRY, facts=backup, now=3.0, wall=0.0) == [Ping(), retry]
    assert b.on_timer(BatchTimer.RETRY, facts=backup, now=5.5, wall=0.0) == [
        Ping(), ForwardTxs(1, batch, 1), retry]
    assert {t for _, t in b.outstanding.values()} == {5.5}  # their clocks restart
    assert b.on_timer(BatchTimer.RETRY, facts=backup, now=5.5 + OUTSTANDING_TTL + 1, wall=0.0) == []
    assert not b.outstanding and b.armed == set()


def test_committed_transactions_are_no_longer_watched(fed):
    b = Batcher(0, KEY, CFG)
    batch = txs(fed, 1)
    b.add(batch, facts=facts(fed), now=0.0, from_client=True)
    [block] = proposed(b.on_timer(BatchTimer.BUILD, facts=facts(fed), now=0.0, wall=0.0))
    executed(fed, b, block)
    assert b.on_timer(BatchTimer.RETRY, facts=facts(fed), now=10.0, wall=0.0) == []


def test_close_disarms_what_is_armed(fed):
    b = Batcher(0, KEY, CFG)
    assert b.close() == []
    b.add(txs(fed, 1), facts=facts(fed), now=0.0, from_client=True)
    assert b.close() == [CancelTimer(BatchTimer.BUILD), CancelTimer(BatchTimer.RETRY)]
    assert b.armed == set()


# ---------------------------------------------------------------------- recovery watch
def test_the_recovery_watch_waits_for_2f_peers_then_for_their_height():
    keys = [SigningKey.from_seed(f"watch-{i}".encode()) for i in range(4)]
    watch = RecoveryWatch(0, tuple(k.public_hex for k in keys), f=1, grace=3.0, started=10.0)
    assert watch.done(0, now=12.0) is None
    watch.observe(sign(Status(0, True, 7, 0, 1, b""), keys[1]))
    watch.observe(sign(Status(0, True, 9, 0, 2, b""), keys[1]))  # signed by another: ignored
    assert watch.done(0, now=12.5) is None
    watch.observe(sign(Status(0, True, 5, 0, 2, b""), keys[2]))
    assert watch.done(6, now=20.0) is None  # the target is 7, the grace no longer counts
    assert watch.done(7, now=20.0) == "caught up to 7" and not watch.recovering
    assert watch.done(7, now=21.0) is None


def test_the_recovery_watch_stops_waiting_after_the_grace_when_no_quorum_speaks():
    keys = tuple(SigningKey.from_seed(f"watch-{i}".encode()).public_hex for i in range(4))
    watch = RecoveryWatch(2, keys, f=1, grace=3.0, started=100.0)
    assert watch.done(0, now=102.9) is None
    assert watch.done(0, now=103.0) == "no quorum of peers heard in 3.0s"
    alone = RecoveryWatch(0, keys[:1], f=0, grace=3.0)
    assert not alone.recovering and alone.done(0, now=0.0) is None


def test_a_clients_request_asks_the_chain_once_unless_the_head_moved_in_between(fed):
    asked: list[list[str]] = []

    def committed(ids):
        asked.append(list(ids))
        return on_chain(fed)(ids)

    b = Batcher(1, seeded("node-1"), CFG)
    batch = txs(fed, 3)
    known = replace(facts(fed, primary=0, leads=False), committed=committed)
    b.register(TxWait([tx["id"] for tx in batch]), facts=known)
    b.add(batch, facts=known, now=0.0, from_client=True)
    assert [set(a) for a in asked] == [{tx["id"] for tx in batch}]  # register's lookup serves the add
    # A head that moved in between: what register found off the chain is asked again.
    first = Batcher(0, KEY, CFG)
    first.add(batch[:1], facts=facts(fed), now=0.0)
    [block] = proposed(first.on_timer(BatchTimer.BUILD, facts=facts(fed), now=0.0, wall=0.0))
    asked.clear()
    b.register(TxWait([tx["id"] for tx in batch]), facts=known)
    executed(fed, first, block)
    acts = b.add(batch, facts=replace(known, head=fed.ledger.latest()), now=1.0, from_client=True)
    assert len(asked) == 2 and batch[0]["id"] not in [tx["id"] for a in acts if isinstance(a, ForwardTxs)
                                                      for tx in a.txs]
