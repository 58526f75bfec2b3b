"""``bcsfl_mod``: the client-side piece of BCS-FL, as a Flower mod.

Wrap any ClientApp with ``ClientApp(mods=[bcsfl_mod])``. The user's ``train`` and
``evaluate`` functions stay untouched; after ``train`` returns, the mod packages its
reply: it hashes the parameters (in the order of the global model it received),
binds the hash to a fresh packet id, timestamp, client id, round, example count and
metrics, signs that with the node's Ed25519 key, and adds the header as a
ConfigRecord under ``bcsfl.package``.

Configuration (node-config first, then run-config, then the default):

* ``bcsfl-key-dir``: where the node keeps its key (default ``./.bcsfl/keys``).
* ``bcsfl-client-id``: the identity on the ledger (default ``client-<partition-id>``
  in simulation, else ``node-<node id>``).
* ``bcsfl-ledger``: the ledger where the public key is registered on first use
  (default ``sqlite:///bcsfl-ledger.db`` in the working directory).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from flwr.app import ArrayRecord, Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable

from ..crypto import SigningKey
from ..package import PACKAGE_KEY, ModelPackage, arrays_to_numpy

__all__ = ["bcsfl_mod", "client_identity", "config_value", "make_bcsfl_mod"]

DEFAULT_KEY_DIR = ".bcsfl/keys"
DEFAULT_LEDGER = "sqlite:///bcsfl-ledger.db"
_registered: set[tuple[str, str, str]] = set()
_lock = threading.Lock()


def config_value(context: Context, key: str, default: str) -> str:
    """Look ``key`` up in node-config, then run-config; fall back to ``default``."""
    for source in (context.node_config, context.run_config):
        value = source.get(key)
        if value not in (None, ""):
            return str(value)
    return default


def client_identity(context: Context, default: str | None = None) -> str:
    """The client id this node signs as (see the module docstring)."""
    if not default:
        if "partition-id" in context.node_config:
            default = f"client-{int(context.node_config['partition-id'])}"
        else:
            default = f"node-{context.node_id}"
    return config_value(context, "bcsfl-client-id", default)


def _ensure_registered(ledger_url: str, client_id: str, public_key: str) -> None:
    """Register the key with the ledger once per process (the ledger is idempotent)."""
    marker = (ledger_url, client_id, public_key)
    with _lock:
        if marker in _registered:
            return
        from ..ledger import open_ledger

        with open_ledger(ledger_url) as ledger:
            ledger.register_identity(client_id, public_key, role="client")
        _registered.add(marker)


def make_bcsfl_mod(
    *, ledger: str | None = None, key_dir: str | None = None, client_id: str | None = None
) -> Callable[[Message, Context, ClientAppCallable], Message]:
    """A ``bcsfl_mod`` with its own defaults for ledger URL, key folder and client id.

    Node-config and run-config keys (``bcsfl-ledger``, ``bcsfl-key-dir``,
    ``bcsfl-client-id``) still take precedence; these replace the built-in defaults.
    """
    ledger_default = ledger or os.environ.get("BCSFL_LEDGER", DEFAULT_LEDGER)
    key_dir_default = key_dir or DEFAULT_KEY_DIR

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        return _sign_reply(msg, context, call_next, ledger_default, key_dir_default, client_id)

    mod.__doc__ = bcsfl_mod.__doc__
    return mod


def bcsfl_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Sign the reply of a TRAIN message as a BCS-FL model package.

    Non-train messages and error replies pass through unchanged. The package needs
    exactly one ArrayRecord in the reply and a ``num-examples`` metric (the key
    FedAvg weights by), as any FedAvg-compatible ClientApp already sends.
    """
    return _sign_reply(msg, context, call_next, os.environ.get("BCSFL_LEDGER", DEFAULT_LEDGER), DEFAULT_KEY_DIR, None)


def _sign_reply(
    msg: Message,
    context: Context,
    call_next: ClientAppCallable,
    ledger_default: str,
    key_dir_default: str,
    client_id_default: str | None,
) -> Message:
    reply = call_next(msg, context)
    if msg.metadata.message_type.split(".")[0] != MessageType.TRAIN or reply.has_error():
        return reply
    content = reply.content
    if len(content.array_records) != 1:
        raise ValueError("bcsfl_mod: the train reply must carry exactly one ArrayRecord")
    arrays: ArrayRecord = next(iter(content.array_records.values()))
    tensors = arrays_to_numpy(arrays)
    incoming = next(iter(msg.content.array_records.values()), None)
    if incoming is not None and set(incoming) == set(tensors):
        tensors = {name: tensors[name] for name in incoming}  # hash in the global order
    metrics = {name: dict(rec) for name, rec in content.metric_records.items()}
    num_examples = next(
        (int(rec["num-examples"]) for rec in content.metric_records.values() if "num-examples" in rec), 0
    )
    config = next(iter(msg.content.config_records.values()), {})
    server_round = int(config.get("server-round", 0))

    client_id = client_identity(context, client_id_default)
    key_dir = Path(config_value(context, "bcsfl-key-dir", key_dir_default)).expanduser()
    key = SigningKey.load_or_create(key_dir / f"{client_id}.key")
    ledger_url = config_value(context, "bcsfl-ledger", ledger_default)
    _ensure_registered(ledger_url, client_id, key.public_hex)
    package = ModelPackage.create(
        key, tensors, client_id=client_id, server_round=server_round,
        num_examples=num_examples, metrics=metrics,
    )
    content[PACKAGE_KEY] = package.to_record()
    return reply
