"""``bcsfl_mod``: the client-side piece of BCS-FL, as a Flower mod.

Wrap any ClientApp with ``ClientApp(mods=[bcsfl_mod])``. The user's ``train`` and
``evaluate`` functions stay untouched; after ``train`` returns, the mod packages its
reply: it hashes the parameters (in the order of the global model it received),
binds the hash to a fresh packet id, timestamp, client id, round, example count and
metrics, signs that with the node's Ed25519 key, and adds the header as a
ConfigRecord under ``bcsfl.package``. With the committee on client nodes it also
plays the coordinator role when drawn, and refuses to train on a global model that
lacks a valid quorum certificate (see :mod:`.coordinator_role`, :mod:`.acceptance`).

Configuration (node-config first, then run-config, then the mod's defaults):

* ``bcsfl-key-dir``: where the node keeps its key (default ``./.bcsfl/keys``).
* ``bcsfl-client-id``: the identity on the ledger (default ``client-<partition-id>``
  in simulation, else ``node-<node id>``).
* ``bcsfl-ledger``: the ledger where the public key is registered on first use
  (default ``sqlite:///bcsfl-ledger.db`` in the working directory).
* ``bcsfl-committee-size``: committee size, to recompute the draw (default 4).
* ``bcsfl-require-certificate``: refuse uncertified global models (default false).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ArrayRecord, Context, Error, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable

from ..committee.rootset import RootSet
from ..crypto import SigningKey
from ..package import PACKAGE_KEY, ModelPackage, arrays_to_numpy
from .acceptance import CERT_KEY, certificate_problem
from .coordinator_role import is_role_message, play_role

__all__ = ["BcsflMod", "bcsfl_mod", "client_identity", "config_value", "make_bcsfl_mod"]

DEFAULT_KEY_DIR = ".bcsfl/keys"
DEFAULT_LEDGER = "sqlite:///bcsfl-ledger.db"
#: Error code of a reply that refuses an uncertified global model.
REFUSED = 4201
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


def _open(url: str):
    from ..ledger import open_ledger

    return open_ledger(url)


def _ensure_registered(ledger_url: str, client_id: str, public_key: str) -> None:
    """Register the key with the ledger once per process (the ledger is idempotent)."""
    marker = (ledger_url, client_id, public_key)
    with _lock:
        if marker in _registered:
            return
        with _open(ledger_url) as ledger:
            ledger.register_identity(client_id, public_key, role="client")
        _registered.add(marker)


@dataclass
class BcsflMod:
    """A configurable ``bcsfl_mod`` (Flower calls it as ``mod(msg, context, call_next)``).

    Parameters
    ----------
    ledger, key_dir, client_id : str | None
        Defaults for the config keys of the module docstring.
    committee_size : int
        Default committee size for recomputing the draw.
    require_certificate : bool
        Default for refusing global models without a quorum certificate.
    root_set : Callable[[Context], RootSet | None] | None
        The root data this node uses when it coordinates (None: median reference).
    """

    ledger: str | None = None
    key_dir: str | None = None
    client_id: str | None = None
    committee_size: int = 4
    require_certificate: bool = False
    root_set: Callable[[Context], RootSet | None] | None = None

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        """Play the coordinator role, or check, train and sign (see the module docstring)."""
        if msg.metadata.message_type.split(".")[0] != MessageType.TRAIN:
            return call_next(msg, context)
        client_id = client_identity(context, self.client_id)
        key_dir = Path(config_value(context, "bcsfl-key-dir", self.key_dir or DEFAULT_KEY_DIR)).expanduser()
        key = SigningKey.load_or_create(key_dir / f"{client_id}.key")
        ledger_url = config_value(context, "bcsfl-ledger", self.ledger or os.environ.get("BCSFL_LEDGER", DEFAULT_LEDGER))
        _ensure_registered(ledger_url, client_id, key.public_hex)
        size = int(config_value(context, "bcsfl-committee-size", str(self.committee_size)))
        if is_role_message(msg):
            with _open(ledger_url) as ledger:
                return play_role(msg, context, client_id=client_id, key=key, ledger=ledger,
                                 committee_size=size, root_set=self.root_set)
        required = config_value(context, "bcsfl-require-certificate", str(self.require_certificate))
        if required.lower() in ("1", "true", "yes"):
            incoming = next(iter(msg.content.array_records.values()))
            cert = msg.content.config_records.get(CERT_KEY)
            with _open(ledger_url) as ledger:
                problem = certificate_problem(arrays_to_numpy(incoming), cert, ledger, committee_size=size)
            if problem:
                return Message(Error(code=REFUSED, reason=f"refused global model: {problem}"), reply_to=msg)
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        return _sign(msg, reply, key, client_id)


def _sign(msg: Message, reply: Message, key: SigningKey, client_id: str) -> Message:
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
    package = ModelPackage.create(
        key, tensors, client_id=client_id, server_round=int(config.get("server-round", 0)),
        num_examples=num_examples, metrics=metrics,
    )
    content[PACKAGE_KEY] = package.to_record()
    return reply


def make_bcsfl_mod(
    *,
    ledger: str | None = None,
    key_dir: str | None = None,
    client_id: str | None = None,
    committee_size: int = 4,
    require_certificate: bool = False,
    root_set: Callable[[Context], RootSet | None] | None = None,
) -> BcsflMod:
    """A ``bcsfl_mod`` with its own defaults (node-config and run-config still win)."""
    return BcsflMod(ledger, key_dir, client_id, committee_size, require_certificate, root_set)


_DEFAULT_MOD = BcsflMod()


def bcsfl_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Sign TRAIN replies as BCS-FL model packages (the mod with built-in defaults).

    Use it as ``ClientApp(mods=[bcsfl_mod])``; see the module docstring for what it
    adds and how to configure it, and :func:`make_bcsfl_mod` for other defaults.
    """
    return _DEFAULT_MOD(msg, context, call_next)
