"""Top-k upload compression with error feedback: the codec, the coordinators' decode, the client's residual."""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, Metadata, RecordDict

from bcsfl_flower.committee.verify import PackageVerifier, Rejection, StoreReader, VerifiedUpdate, verify_pool
from bcsfl_flower.compression import (COMPRESSED_KEY, apply_delta, compress, decode, encode, encoded_size,
                                      payload_bytes, to_record)
from bcsfl_flower.crypto import SigningKey, sha256_hex
from bcsfl_flower.package import PACKAGE_KEY, ModelPackage, canonical_bytes, numpy_to_arrays

from message_kit import global_model, signed_content

KEY = SigningKey.from_seed(b"alice")


def _flat(t):
    return np.concatenate([v.ravel() for v in t.values()])


def test_topk_keeps_the_largest_entries_and_the_residual_holds_the_rest():
    update = np.array([0.1, -5.0, 0.2, 3.0, -0.05, 0.0], np.float32)
    blob, residual = compress(update, fraction=0.34)  # ceil(0.34 * 6) = 3 entries
    idx, values = decode(blob, 6)
    assert idx.tolist() == [1, 2, 3] and values.tolist() == pytest.approx([-5.0, 0.2, 3.0])
    assert residual.tolist() == pytest.approx([0.1, 0, 0, 0, -0.05, 0])
    assert len(blob) == encoded_size(3, 0)


def test_error_feedback_delays_but_never_loses_mass():
    rng = np.random.default_rng(0)
    updates = rng.normal(size=(12, 500)).astype(np.float32)
    residual, sent = None, np.zeros(500, np.float64)
    for u in updates:
        blob, residual = compress(u, residual, fraction=0.02, bits=8)
        idx, values = decode(blob, 500)
        sent[idx] += values
    np.testing.assert_allclose(sent + residual, updates.astype(np.float64).sum(0), atol=1e-4)


def test_int8_values_are_within_half_a_step_and_the_error_stays_in_the_residual():
    update = np.random.default_rng(1).normal(size=1000).astype(np.float32)
    blob, residual = compress(update, fraction=0.1, bits=8)
    idx, values = decode(blob, 1000)
    scale = np.abs(update[idx]).max() / 127
    assert np.abs(values - update[idx]).max() <= scale / 2 + 1e-6
    np.testing.assert_allclose(residual[idx], update[idx] - values, atol=1e-6)
    assert len(blob) == encoded_size(100, 8) < 0.1 * update.nbytes


def test_ternary_values_are_the_signs_times_the_mean_magnitude_and_the_rest_is_fed_back():
    update = np.array([0.5, -4.0, 0.0, 2.0, -1.0, 0.1, 3.0], np.float32)
    blob, residual = compress(update, fraction=0.5, bits=2)  # 4 kept: -4, 2, -1, 3; mean magnitude 2.5
    idx, values = decode(blob, 7)
    assert idx.tolist() == [1, 3, 4, 6] and values.tolist() == pytest.approx([-2.5, 2.5, -2.5, 2.5])
    np.testing.assert_allclose(residual, [0.5, -1.5, 0, -0.5, 1.5, 0.1, 0.5], atol=1e-6)
    assert len(blob) == encoded_size(4, 2) == 25 + 8 + 1


def test_error_feedback_with_ternary_values_also_loses_nothing():
    updates = np.random.default_rng(3).normal(size=(8, 300)).astype(np.float32)
    residual, sent = None, np.zeros(300, np.float64)
    for u in updates:
        blob, residual = compress(u, residual, fraction=0.05, bits=2)
        idx, values = decode(blob, 300)
        sent[idx] += values
    np.testing.assert_allclose(sent + residual, updates.astype(np.float64).sum(0), atol=1e-4)


def test_apply_delta_is_reference_plus_the_sent_entries():
    g = global_model(0)
    update = {name: np.random.default_rng(2).normal(size=t.shape).astype(np.float32) for name, t in g.items()}
    blob, residual = compress(_flat(update), fraction=0.25)
    dense = apply_delta(blob, g)
    assert list(dense) == list(g) and all(dense[n].dtype == g[n].dtype for n in g)
    np.testing.assert_allclose(_flat(dense) - _flat(g) + residual, _flat(update), atol=1e-6)


def _raw(n, gaps, values, bits=0, scale=1.0, k=None):
    head = struct.pack("<8sBQIf", b"BCSFLtk1", bits, n, len(gaps) if k is None else k, scale)
    return head + np.asarray(gaps, "<u2").tobytes() + np.asarray(values, "<f4" if bits == 0 else "i1").tobytes()


def test_indices_travel_as_two_byte_gaps_bridged_by_zero_entries_in_large_models():
    n = 200_000
    update = np.zeros(n, np.float32)
    update[[5, 150_000, 199_999]] = [1.0, -2.0, 3.0]
    blob, residual = compress(update, fraction=3 / n)
    idx, values = decode(blob, n)
    # 5 -> 150000 and 150000 -> 199999 need one bridge at 65540, one at 131075
    assert idx.tolist() == [5, 65540, 131075, 150_000, 199_999] and len(blob) == encoded_size(5)
    dense = np.zeros(n, np.float32)
    dense[idx] = values
    np.testing.assert_array_equal(dense, update)
    assert not residual.any()


MALFORMED = {
    "index out of range": (_raw(28, [4, 25], [1.0, 2.0]), "out of range"),  # 3, then 28
    "repeated index": (_raw(28, [4, 0], [1.0, 2.0]), "repeated index"),
    "count says more than sent": (_raw(28, [4, 2], [1.0, 2.0], k=3), "bytes where 3 entries"),
    "count above the model": (_raw(28, [], [], k=29), "29 entries for a model of 28"),
    "another model's size": (_raw(27, [3], [1.0]), "model of 27 values"),
    "NaN value": (_raw(28, [3], [np.nan]), "non-finite"),
    "Inf value": (_raw(28, [3], [np.inf]), "non-finite"),
    "zero scale": (_raw(28, [3], [5], bits=8, scale=0.0), "scale"),
    "NaN scale": (_raw(28, [3], [5], bits=8, scale=float("nan")), "scale"),
    "unknown width": (_raw(28, [3], [1.0], bits=4), "value width"),
    "ternary code 3": (_raw(28, [3], [], bits=2, scale=1.0) + bytes([3]), "code 3"),
    "ternary padding": (_raw(28, [3], [], bits=2, scale=1.0) + bytes([0b0100_0001]), "padding"),
    "truncated": (b"BCSFLtk1\0", "truncated"),
    "not an encoding": (b"X" * 40, "not a top-k encoding"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_encodings_are_refused_with_a_reason(case):
    blob, reason = MALFORMED[case]
    with pytest.raises(ValueError, match=reason):
        apply_delta(blob, global_model(0))  # 6 x 4 + 4 = 28 values


def _compressed_content(blob, client_id="alice", server_round=1, key=KEY):
    return signed_content(key, {COMPRESSED_KEY: np.frombuffer(blob, np.uint8)}, client_id=client_id,
                          server_round=server_round)


def _verifier():
    return PackageVerifier(registry={"alice": KEY.public_hex}.get, max_age=60.0)


def test_the_relay_verifies_the_signed_encoding_and_decodes_it_onto_the_global_model():
    g = global_model(0)
    blob, _ = compress(np.linspace(-1, 1, 28, dtype=np.float32), fraction=0.2, bits=8)
    out = _verifier().verify(_compressed_content(blob), server_round=1, reference=g, now=time.time())
    assert isinstance(out, VerifiedUpdate), out
    np.testing.assert_allclose(_flat(out.tensors), _flat(apply_delta(blob, g)))
    # What goes to the model store is the signed encoding, not the dense model.
    assert sha256_hex(out.blob) == out.package.model_hash and len(out.blob) < canonical_bytes(g).__len__()


def test_the_relay_refuses_a_malformed_or_tampered_encoding_and_remembers_no_packet():
    g, v = global_model(0), _verifier()
    signed_bad = _compressed_content(MALFORMED["repeated index"][0])  # signed by the client, still refused
    out = v.verify(signed_bad, server_round=1, reference=g, now=time.time())
    assert isinstance(out, Rejection) and out.reason.startswith("bad compressed update: a zero index gap")
    assert out.packet_id not in v.seen_packets
    blob, _ = compress(np.ones(28, np.float32), fraction=0.1)
    content = _compressed_content(blob)
    tampered = bytearray(blob)
    tampered[-1] ^= 0x40
    content["arrays"] = to_record(bytes(tampered))
    out = v.verify(content, server_round=1, reference=g, now=time.time())
    assert isinstance(out, Rejection) and "hash does not match" in out.reason


def test_committee_members_decode_pooled_encodings_from_the_store_and_refuse_malformed_ones():
    g = global_model(0)
    good, _ = compress(np.arange(28, dtype=np.float32), fraction=0.1)
    bad = MALFORMED["index out of range"][0]
    store, pool = {}, {}
    for cid, blob in (("alice", good), ("bob", bad)):
        key = SigningKey.from_seed(cid.encode())
        stored = canonical_bytes({COMPRESSED_KEY: np.frombuffer(blob, np.uint8)})
        package = ModelPackage.create(key, {COMPRESSED_KEY: np.frombuffer(blob, np.uint8)}, client_id=cid,
                                      server_round=1, num_examples=10)
        store[package.model_hash] = stored
        pool[cid] = package.pooled({})
    reader = StoreReader(store.__getitem__, g)
    updates, refused = verify_pool(pool, reader, server_round=1, reference=g, now=time.time())
    assert [u.client_id for u in updates] == ["alice"]
    np.testing.assert_allclose(_flat(updates[0].tensors), _flat(apply_delta(good, g)))
    assert [r.client_id for r in refused] == ["bob"] and "out of range" in refused[0].reason
    assert reader.bytes_read == sum(len(b) for b in store.values()) < 2 * len(canonical_bytes(g))


def test_an_encoding_larger_than_the_dense_model_is_refused_undecoded_by_relay_and_members_alike():
    g = global_model(0)
    huge = encode(28, np.arange(28), np.ones(28, np.float32))  # 28 of 28 entries: twice the dense bytes
    out = _verifier().verify(_compressed_content(huge), server_round=1, reference=g, now=time.time())
    assert isinstance(out, Rejection) and "more than the dense model's 196" in out.reason
    stored = canonical_bytes({COMPRESSED_KEY: np.frombuffer(huge, np.uint8)})
    with pytest.raises(ValueError, match="more than the dense model's 196"):
        StoreReader({"h": stored}.__getitem__, g)("h")
    far_too_big = _compressed_content(bytes(5000))
    out = _verifier().verify(far_too_big, server_round=1, reference=g, now=time.time())
    assert isinstance(out, Rejection) and "refused unread" in out.reason


def _train_message(weights, server_round):
    content = RecordDict({"arrays": numpy_to_arrays(weights), "config": ConfigRecord({"server-round": server_round})})
    meta = Metadata(run_id=1, message_id=f"m{server_round}", src_node_id=0, dst_node_id=7, reply_to_message_id="",
                    group_id="1", created_at=time.time(), ttl=3600.0, message_type=MessageType.TRAIN)
    return Message(metadata=meta, content=content)


def test_the_client_uploads_the_signed_encoding_and_keeps_its_residual_across_rounds(tmp_path):
    from bcsfl_flower.apps.client_app import make_client_app
    from bcsfl_flower.models import build_model
    from bcsfl_flower.training.train import get_weights

    app = make_client_app({"dataset": "digits", "strategy": "fedavg", "bcsfl-ledger": "memory",
                           "bcsfl-key-dir": str(tmp_path / "keys"), "compression": "topk", "topk-fraction": 0.01,
                           "quantize-bits": 8, "num-clients": 4})
    ctx = Context(run_id=1, node_id=7, node_config={"partition-id": 1, "num-partitions": 4}, state=RecordDict(),
                  run_config={})
    g = get_weights(build_model("digits"))
    residuals = []
    for server_round in (1, 2):
        reply = app(_train_message(g, server_round), ctx)
        assert list(reply.content["arrays"].keys()) == [COMPRESSED_KEY]
        metrics = reply.content["metrics"]
        assert metrics["upload-bytes"] == payload_bytes(reply.content["arrays"])
        # 1% of a 4.7k-parameter MLP: the encoding's fixed header and Flower's framing weigh in
        assert metrics["upload-bytes"] < 0.03 * metrics["dense-bytes"]
        header = reply.content.config_records[PACKAGE_KEY]
        verifier = PackageVerifier(registry={header["client-id"]: header["public-key"]}.get)
        out = verifier.verify(reply.content, server_round=server_round, reference=g, now=time.time())
        assert isinstance(out, VerifiedUpdate), out
        assert sum(int((out.tensors[n] != g[n]).sum()) for n in g) <= int(np.ceil(0.01 * _flat(g).size))
        residuals.append(ctx.state.array_records["bcsfl.residual"]["residual"].numpy().copy())
    assert np.abs(residuals[0]).sum() > 0 and not np.allclose(residuals[0], residuals[1])


@pytest.mark.slow
def test_a_compressed_run_trains_with_the_committee_on_the_nodes(tmp_path):
    from bcsfl_flower.settings import RunSettings
    from bcsfl_flower.simulate import simulate

    s = RunSettings(dataset="digits", num_clients=5, num_server_rounds=3, root_size=50, committee="nodes",
                    compression="topk", topk_fraction=0.05, quantize_bits=8,
                    bcsfl_ledger=f"sqlite:///{tmp_path / 'ledger.db'}", bcsfl_key_dir=str(tmp_path / "keys"),
                    out=str(tmp_path / "out"))
    metrics = simulate(s, engine="inprocess", quiet=True)
    assert all(r["committed"] and r["accepted"] for r in metrics["rounds"])
    assert not any("compressed" in str(why) for r in metrics["rounds"] for why in r.get("rejections", {}).values())
    assert metrics["rounds"][-1]["accuracy"] > metrics["rounds"][0]["accuracy"]


def test_a_round_of_compressed_replies_commits_without_the_malformed_one_and_records_why(tmp_path):
    from message_kit import chartered_strategy, reply

    from core.test_strategy import honest_replies, run_round

    clients = [f"client-{i}" for i in range(6)]
    g = global_model()
    strategy, keys, _ = chartered_strategy(tmp_path, clients, g)
    replies = []
    for i, dense in enumerate(honest_replies(keys, g, 1)):  # sparsify each honest update, sign the encoding
        cid = dense.content.config_records[PACKAGE_KEY]["client-id"]
        local = {n: a.numpy() for n, a in dense.content["arrays"].items()}
        blob, _ = compress(_flat(local) - _flat(g), fraction=0.5, bits=8)
        if cid == "client-5":
            blob = MALFORMED["repeated index"][0]  # well signed, badly formed
        replies.append(reply(signed_content(keys[cid], {COMPRESSED_KEY: np.frombuffer(blob, np.uint8)},
                                            client_id=cid, server_round=1, metrics={"train_loss": 1.0}),
                             node_id=i + 1))
    arrays, _ = run_round(strategy, g, 1, replies)
    record = strategy.rounds[-1]
    assert arrays is not None and record["committed"]
    assert "client-5" not in record["accepted"] and len(record["accepted"]) >= 4
    assert record["rejections"]["client-5"].startswith("bad compressed update: a zero index gap")
