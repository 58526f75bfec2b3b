"""The client layer alone: a node's identity, key and signed train reply, with no ledger or committee."""

import time

import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, Metadata, MetricRecord, RecordDict

from bcsfl_flower.client.identity import client_identity, config_value, key_folder, node_key
from bcsfl_flower.client.signing import sign_reply
from bcsfl_flower.crypto import SigningKey
from bcsfl_flower.package import ModelPackage, metrics_hash, model_hash, numpy_to_arrays
from bcsfl_flower.protocol import PACKAGE_KEY

from message_kit import global_model


def instruction(g, server_round=3):
    meta = Metadata(run_id=1, message_id="instr", src_node_id=0, dst_node_id=7, reply_to_message_id="",
                    group_id="1", created_at=time.time(), ttl=3600.0, message_type=MessageType.TRAIN)
    content = RecordDict({"arrays": numpy_to_arrays(g), "config": ConfigRecord({"server-round": server_round})})
    return Message(metadata=meta, content=content)


def test_sign_reply_hashes_in_the_global_order_and_binds_round_examples_and_metrics():
    g = global_model()
    local = {"b": g["b"] + 0.1, "w": g["w"] - 0.1}  # the user's own order, not the global model's
    msg = instruction(g)
    metrics = MetricRecord({"num-examples": 12, "train_loss": 0.5})
    reply = Message(RecordDict({"arrays": numpy_to_arrays(local), "metrics": metrics}), reply_to=msg)
    key = SigningKey.from_seed(b"client-5")
    signed = sign_reply(msg, reply, key, "client-5")
    package = ModelPackage.from_record(signed.content.config_records[PACKAGE_KEY])
    assert package.signature_valid(key.public_hex) and package.public_key == key.public_hex
    assert package.model_hash == model_hash({"w": local["w"], "b": local["b"]}) != model_hash(local)
    assert (package.client_id, package.server_round, package.num_examples) == ("client-5", 3, 12)
    assert package.metrics_hash == metrics_hash({"metrics": dict(metrics)})


def test_sign_reply_needs_exactly_one_array_record():
    g = global_model()
    msg = instruction(g)
    two = Message(RecordDict({"a": numpy_to_arrays(g), "b": numpy_to_arrays(g)}), reply_to=msg)
    with pytest.raises(ValueError, match="exactly one ArrayRecord"):
        sign_reply(msg, two, SigningKey.generate(), "client-5")


def test_identity_reads_node_config_then_run_config_and_keeps_one_key(tmp_path):
    ctx = Context(run_id=1, node_id=9, node_config={"partition-id": 4}, state=RecordDict(),
                  run_config={"bcsfl-key-dir": str(tmp_path / "run"), "bcsfl-client-id": "from-run"})
    assert config_value(ctx, "missing", "fallback") == "fallback"
    assert client_identity(ctx) == "from-run" and key_folder(ctx) == tmp_path / "run"
    ctx.node_config["bcsfl-client-id"] = "from-node"
    assert client_identity(ctx) == "from-node"
    bare = Context(run_id=1, node_id=9, node_config={}, state=RecordDict(), run_config={})
    assert client_identity(bare) == "node-9" and client_identity(bare, "given") == "given"
    first = node_key(tmp_path / "keys", "client-4")
    assert node_key(tmp_path / "keys", "client-4").public_hex == first.public_hex
    assert (tmp_path / "keys" / "client-4.key").is_file()
