"""The PBFT wire codec: exact round trips, and garbage never decodes into a message."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bcsfl_flower.consensus.messages import (
    CatchUp, Commit, CommittedEntry, PrePrepare, Request, Status, sign,
)
from bcsfl_flower.consensus.quorum import QuorumCertificate
from bcsfl_flower.crypto import SigningKey
from bcsfl_flower.ledger.ops import encode_ping_op, parse_op
from bcsfl_flower.ledger.wire import WireError, decode_message, encode_message

KEY = SigningKey.from_seed(b"wire-test")


@settings(max_examples=60, deadline=None)
@given(client=st.text(max_size=20), rid=st.integers(0, 2**40), value=st.text(max_size=200),
       view=st.integers(0, 1000), seq=st.integers(1, 10**6))
def test_messages_round_trip_byte_for_byte(client: str, rid: int, value: str, view: int,
                                           seq: int) -> None:
    req = Request.make(client, rid, value)
    pp = sign(PrePrepare(view, seq, req.digest, req, 0), KEY)
    commit = sign(Commit(view, seq, req.digest, 1), KEY)
    qc = QuorumCertificate(view, seq, req.digest, (commit, commit))
    catch_up = sign(CatchUp((CommittedEntry(seq, req, qc), CommittedEntry(seq + 1, None, qc)), 2),
                    KEY)
    for msg in (pp, commit, catch_up, sign(Status(view, True, seq, 0, 3), KEY)):
        back = decode_message(encode_message(msg))
        assert back == msg and back.encoded() == msg.encoded()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_is_a_wire_error(data: bytes) -> None:
    try:
        decode_message(data)
    except WireError:
        pass


@settings(max_examples=100, deadline=None)
@given(cut=st.integers(0, 400), flip=st.integers(0, 400))
def test_truncated_or_flipped_frames_fail_cleanly(cut: int, flip: int) -> None:
    req = Request.make("c", 1, encode_ping_op(0))
    raw = bytearray(encode_message(sign(PrePrepare(0, 1, req.digest, req, 0), KEY)))
    mutated = bytes(raw[: cut % len(raw)])
    try:
        decode_message(mutated)
    except WireError:
        pass
    raw[flip % len(raw)] ^= 0x5A
    try:
        msg = decode_message(bytes(raw))
    except WireError:
        return
    assert isinstance(msg, PrePrepare)  # well-typed; its signature check is the replica's job
    assert parse_op(encode_ping_op(1)).kind == "ping"
