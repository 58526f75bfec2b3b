"""Builders for hand-made Flower messages and signed packages, shared by the test folders (no Ray needed)."""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict

from bcsfl_flower.crypto import SigningKey
from bcsfl_flower.package import PACKAGE_KEY, ModelPackage, numpy_to_arrays


def reply(content: RecordDict, node_id: int = 1) -> Message:
    """A train reply as the Grid hands it to ``aggregate_train``."""
    meta = Metadata(
        run_id=1, message_id=f"m{node_id}", src_node_id=node_id, dst_node_id=0,
        reply_to_message_id="instr", group_id="1", created_at=time.time(), ttl=3600.0,
        message_type="train",
    )
    return Message(metadata=meta, content=content)


def signed_content(
    key: SigningKey,
    tensors: Mapping[str, np.ndarray],
    *,
    client_id: str,
    server_round: int,
    num_examples: int = 100,
    metrics: Mapping[str, float] | None = None,
    timestamp: float | None = None,
) -> RecordDict:
    """A reply RecordDict with arrays, metrics and a package signed by ``key``."""
    metric_record = MetricRecord({"num-examples": num_examples, **(metrics or {})})
    package = ModelPackage.create(
        key, tensors, client_id=client_id, server_round=server_round, num_examples=num_examples,
        metrics={"metrics": dict(metric_record)}, timestamp=timestamp,
    )
    return RecordDict({
        "arrays": numpy_to_arrays(tensors),
        "metrics": metric_record,
        PACKAGE_KEY: package.to_record(),
    })


def global_model(seed: int = 0, sizes: tuple[int, ...] = (6, 4)) -> dict[str, np.ndarray]:
    """A small two-tensor 'model'."""
    rng = np.random.default_rng(seed)
    return {"w": rng.normal(size=sizes).astype(np.float32), "b": np.zeros(sizes[-1], np.float32)}


def arrays(tensors: Mapping[str, np.ndarray]) -> ArrayRecord:
    return numpy_to_arrays(tensors)


def train_config(server_round: int) -> ConfigRecord:
    return ConfigRecord({"server-round": server_round})


def chartered_strategy(tmp_path, clients, g, *, ledger="memory", **kwargs):
    """A BCSFL on ``ledger`` with a charter and ``clients`` enrolled, their keys in ``tmp_path/keys``.

    Returns ``(strategy, keys, authority)``. The strategy signs for the committee with
    the keys it finds in its key dir (``<key_dir>/<client>.key``), as in a simulation.
    ``byzantine_coordinators`` / ``byzantine_first`` set the in-process committee's
    misbehaving members (:class:`~bcsfl_flower.committee.committee.Committee`).
    """
    from bcsfl_flower import BCSFL
    from bcsfl_flower.keys import key_path
    from bcsfl_flower.ledger.replay import make_enrolment

    key_dir = tmp_path / "keys"
    authority = SigningKey.from_seed(b"enrolment-authority")
    byzantine, first = kwargs.pop("byzantine_coordinators", {}), kwargs.pop("byzantine_first", 0)
    strategy = BCSFL(ledger=ledger, key_dir=str(key_dir), enrolment_key=authority, **kwargs)
    strategy.committee.byzantine, strategy.committee.byzantine_first = dict(byzantine), first  # test hooks
    strategy.bootstrap(g)  # installs the charter
    keys = {}
    for c in clients:
        keys[c] = SigningKey.load_or_create(key_path(key_dir, c))
        strategy.ledger.register_identity(make_enrolment(authority, c, keys[c].public_hex))
    return strategy, keys, authority
