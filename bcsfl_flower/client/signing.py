"""A client's signature on its train reply: the model package (BCS-FL, Sec. IV-A).

:func:`sign_reply` hashes the reply's parameters (in the order of the global model the
node received), binds the hash to a fresh packet id, timestamp, client id, round,
example count and metrics, signs that with the node's Ed25519 key, and adds the header
to the reply as a ConfigRecord under :data:`~bcsfl_flower.protocol.PACKAGE_KEY`.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, Message

from ..crypto import SigningKey
from ..package import ModelPackage, arrays_to_numpy
from ..protocol import PACKAGE_KEY

__all__ = ["reply_tensors", "sign_reply"]


def reply_tensors(msg: Message, reply: Message) -> dict[str, np.ndarray]:
    """The reply's parameters in the order the package hashes them (the global model's).

    The reply must carry exactly one ArrayRecord; ``ValueError`` otherwise.
    """
    if len(reply.content.array_records) != 1:
        raise ValueError("bcsfl_mod: the train reply must carry exactly one ArrayRecord")
    arrays: ArrayRecord = next(iter(reply.content.array_records.values()))
    tensors = arrays_to_numpy(arrays)
    incoming = next(iter(msg.content.array_records.values()), None)
    if incoming is not None and set(incoming) == set(tensors):
        tensors = {name: tensors[name] for name in incoming}  # hash in the global order
    return tensors


def sign_reply(msg: Message, reply: Message, key: SigningKey, client_id: str) -> Message:
    """Add the package header for ``reply`` (the answer to the TRAIN ``msg``), signed by ``key``.

    The reply must carry exactly one ArrayRecord; ``ValueError`` otherwise. Returns
    ``reply`` itself, its content extended.
    """
    content = reply.content
    tensors = reply_tensors(msg, reply)
    metrics = {name: dict(rec) for name, rec in content.metric_records.items()}
    num_examples = next(
        (int(rec["num-examples"]) for rec in content.metric_records.values() if "num-examples" in rec), 0
    )
    config = next(iter(msg.content.config_records.values()), {})
    package = ModelPackage.create(
        key, tensors, client_id=client_id, server_round=int(config.get("server-round", 0)),
        num_examples=num_examples, metrics=metrics,
    )
    content[PACKAGE_KEY] = package.to_record()
    return reply
