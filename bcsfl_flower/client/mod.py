"""``bcsfl_mod``: the client-side piece of BCS-FL (Sec. IV-A, the local device layer), as a Flower mod.

Wrap any ClientApp with ``ClientApp(mods=[bcsfl_mod])``. The user's ``train`` and
``evaluate`` functions stay untouched; after ``train`` returns, the mod packages its
reply: it hashes the parameters (in the order of the global model it received),
binds the hash to a fresh packet id, timestamp, client id, round, example count and
metrics, signs that with the node's Ed25519 key, and adds the header as a
ConfigRecord under ``bcsfl.package`` (BCS-FL, Sec. IV-A: the model package). Before
its first signature it makes sure its key is enrolled (:mod:`.enrolment`). With the
committee on client nodes it also plays the coordinator role when drawn, and refuses
to train on a global model the chain does not certify (see :mod:`.coordinator_role`,
:mod:`.acceptance`).

Configuration (node-config first, then run-config, then the mod's defaults):

* ``bcsfl-key-dir``: where the node keeps its key (default ``./.bcsfl/keys``).
* ``bcsfl-client-id``: the identity on the ledger (default ``client-<partition-id>``
  in simulation, else ``node-<node id>``).
* ``bcsfl-ledger``: the ledger the node enrols with and reads the certified state from
  (default ``sqlite:///bcsfl-ledger.db`` in the working directory). A ``memory``
  ledger is private to each process: the node then neither enrols (the strategy
  enrols on first use) nor checks the global model.
* ``bcsfl-enrolment-key``: the enrolment authority's key file, when this machine has
  it (default ``<key-dir>/enrolment.key``; see :mod:`.enrolment`).
* ``bcsfl-require-certificate``: refuse global models the chain does not certify
  (default false; :mod:`.acceptance`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ArrayRecord, Context, Error, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable

from ..keys import ENROLMENT_KEY
from ..committee.rootset import RootSet
from ..crypto import SigningKey
from ..package import PACKAGE_KEY, ModelPackage, arrays_to_numpy
from .acceptance import acceptance_problem
from .coordinator_role import is_role_message, play_role
from .enrolment import enrolment_problem

__all__ = ["BcsflMod", "bcsfl_mod", "client_identity", "config_value", "make_bcsfl_mod"]

DEFAULT_KEY_DIR = ".bcsfl/keys"
DEFAULT_LEDGER = "sqlite:///bcsfl-ledger.db"
#: Error code of a reply that refuses an uncertified global model.
REFUSED = 4201
#: Error code of a reply from a node that is not enrolled (and could not enrol itself).
NOT_ENROLLED = 4202
_enrolled: set[tuple[str, str, str]] = set()
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


def _private(url: str) -> bool:
    """A ``memory`` ledger: each process has its own, so the node cannot reach the federation's."""
    return url == "memory" or url.startswith("memory://")


def _enrolment(ledger_url: str, client_id: str, key: SigningKey, key_dir: Path, authority: str) -> str | None:
    """Enrol once per process (see :mod:`.enrolment`); why the node is not enrolled, or None."""
    marker = (ledger_url, client_id, key.public_hex)
    with _lock:
        if marker in _enrolled or _private(ledger_url):
            return None
        with _open(ledger_url) as ledger:
            problem = enrolment_problem(ledger, client_id, key, key_dir, authority)
        if problem is None:
            _enrolled.add(marker)
        return problem


@dataclass
class BcsflMod:
    """A configurable ``bcsfl_mod`` (Flower calls it as ``mod(msg, context, call_next)``).

    Parameters
    ----------
    ledger : str | None (default: None, i.e. ``$BCSFL_LEDGER`` or ``sqlite:///bcsfl-ledger.db``)
        Default for ``bcsfl-ledger``.
    key_dir : str | None (default: None, i.e. ``.bcsfl/keys``)
        Default for ``bcsfl-key-dir``.
    client_id : str | None (default: None, i.e. from the node's partition or node id)
        Default for ``bcsfl-client-id``.
    committee_size : int (default: 4)
        Kept for configuration compatibility; the committee's size is the charter's.
    require_certificate : bool (default: False)
        Default for ``bcsfl-require-certificate``.
    root_set : Callable[[Context], RootSet | None] | None (default: None)
        The root data this node uses when it coordinates (None: median reference).
    enrolment_key : str | None (default: None, i.e. ``<key_dir>/enrolment.key``)
        Default for ``bcsfl-enrolment-key``.
    enrol : bool (default: True)
        Make sure the key is enrolled before signing. False: sign only (baseline runs,
        where the package header just names the client and no ledger is kept).
    """

    ledger: str | None = None
    key_dir: str | None = None
    client_id: str | None = None
    committee_size: int = 4
    require_certificate: bool = False
    root_set: Callable[[Context], RootSet | None] | None = None
    enrolment_key: str | None = None
    enrol: bool = True

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        """Play the coordinator role, or check, enrol, train and sign (see the module docstring)."""
        if msg.metadata.message_type.split(".")[0] != MessageType.TRAIN:
            return call_next(msg, context)
        client_id = client_identity(context, self.client_id)
        key_dir = Path(config_value(context, "bcsfl-key-dir", self.key_dir or DEFAULT_KEY_DIR)).expanduser()
        key = SigningKey.load_or_create(key_dir / f"{client_id}.key")
        ledger_url = config_value(context, "bcsfl-ledger", self.ledger or os.environ.get("BCSFL_LEDGER", DEFAULT_LEDGER))
        if is_role_message(msg):
            with _open(ledger_url) as ledger:
                return play_role(msg, context, client_id=client_id, key=key, ledger=ledger, root_set=self.root_set)
        required = config_value(context, "bcsfl-require-certificate", str(self.require_certificate))
        if required.lower() in ("1", "true", "yes") and not _private(ledger_url):
            incoming = next(iter(msg.content.array_records.values()))
            with _open(ledger_url) as ledger:
                problem = acceptance_problem(arrays_to_numpy(incoming), ledger, context.state)
            if problem:
                return Message(Error(code=REFUSED, reason=f"refused global model: {problem}"), reply_to=msg)
        authority = config_value(context, "bcsfl-enrolment-key", self.enrolment_key or str(key_dir / ENROLMENT_KEY))
        problem = _enrolment(ledger_url, client_id, key, key_dir, authority) if self.enrol else None
        if problem:
            return Message(Error(code=NOT_ENROLLED, reason=problem), reply_to=msg)
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
    enrolment_key: str | None = None,
) -> BcsflMod:
    """A ``bcsfl_mod`` with its own defaults (node-config and run-config still win)."""
    return BcsflMod(ledger, key_dir, client_id, committee_size, require_certificate, root_set, enrolment_key)


_DEFAULT_MOD = BcsflMod()


def bcsfl_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Sign TRAIN replies as BCS-FL model packages (the mod with built-in defaults).

    Use it as ``ClientApp(mods=[bcsfl_mod])``; see the module docstring for what it
    adds and how to configure it, and :func:`make_bcsfl_mod` for other defaults.
    """
    return _DEFAULT_MOD(msg, context, call_next)
