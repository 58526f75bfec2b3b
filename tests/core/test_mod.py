"""bcsfl_mod around a plain train function: signs, registers, leaves other messages alone."""

import time

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MessageType, Metadata, MetricRecord, RecordDict

from bcsfl_flower import bcsfl_mod, make_bcsfl_mod
from bcsfl_flower.committee.verify import PackageVerifier, VerifiedUpdate
from bcsfl_flower.ledger import open_ledger
from bcsfl_flower.package import PACKAGE_KEY, numpy_to_arrays

from .helpers import global_model


def user_train(msg: Message, context: Context) -> Message:
    """A user's untouched train function: returns its arrays in its own key order."""
    g = {k: v.numpy() for k, v in msg.content["arrays"].items()}
    local = {"b": g["b"] + 0.1, "w": g["w"] - 0.1}  # deliberately other order
    return Message(RecordDict({"arrays": numpy_to_arrays(local),
                               "metrics": MetricRecord({"num-examples": 12, "train_loss": 0.5})}), reply_to=msg)


def instruction(message_type=MessageType.TRAIN, server_round=2):
    content = RecordDict({"arrays": numpy_to_arrays(global_model()), "config": ConfigRecord({"server-round": server_round})})
    meta = Metadata(run_id=1, message_id="instr", src_node_id=0, dst_node_id=7, reply_to_message_id="",
                    group_id="1", created_at=time.time(), ttl=3600.0, message_type=message_type)
    return Message(metadata=meta, content=content)


def context(tmp_path, **node):
    run_config = {"bcsfl-ledger": f"sqlite:///{tmp_path / 'ledger.db'}", "bcsfl-key-dir": str(tmp_path / "keys")}
    return Context(run_id=1, node_id=7, node_config={"partition-id": 3, **node}, state=RecordDict(), run_config=run_config)


def test_mod_signs_train_replies_and_registers_key(tmp_path):
    ctx = context(tmp_path)
    out = bcsfl_mod(instruction(), ctx, user_train)
    header = out.content.config_records[PACKAGE_KEY]
    assert header["client-id"] == "client-3" and header["server-round"] == 2 and header["num-examples"] == 12
    with open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}") as ledger:
        assert ledger.identity("client-3") == header["public-key"]
        verifier = PackageVerifier(registry=ledger.identity)
        ok = verifier.verify(out.content, server_round=2, reference=global_model(), now=header["timestamp"])
    assert isinstance(ok, VerifiedUpdate), ok
    # The key persists: a second reply is signed by the same key.
    again = bcsfl_mod(instruction(), ctx, user_train)
    assert again.content.config_records[PACKAGE_KEY]["public-key"] == header["public-key"]
    assert (tmp_path / "keys" / "client-3.key").stat().st_mode & 0o777 == 0o600


def test_mod_leaves_evaluate_untouched_and_config_overrides_defaults(tmp_path):
    def user_eval(msg, ctx):
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 1, "acc": 0.5})}), reply_to=msg)

    out = bcsfl_mod(instruction(MessageType.EVALUATE), context(tmp_path), user_eval)
    assert PACKAGE_KEY not in out.content.config_records
    mod = make_bcsfl_mod(client_id="factory-1")
    signed = mod(instruction(), context(tmp_path), user_train)
    assert signed.content.config_records[PACKAGE_KEY]["client-id"] == "factory-1"
    named = mod(instruction(), context(tmp_path, **{"bcsfl-client-id": "from-node-config"}), user_train)
    assert named.content.config_records[PACKAGE_KEY]["client-id"] == "from-node-config"
    assert np.isfinite(signed.content.config_records[PACKAGE_KEY]["timestamp"])
