"""``bcsfl_mod``: BCS-FL on a client node (Sec. IV-A, the local device layer), as a Flower mod.

Wrap any ClientApp with ``ClientApp(mods=[bcsfl_mod])``. The user's ``train`` and
``evaluate`` functions stay untouched; after ``train`` returns, the mod signs its reply
as a model package (:func:`bcsfl_flower.client.signing.sign_reply`; BCS-FL, Sec. IV-A).
Before its first signature it makes sure its key is enrolled
(:func:`bcsfl_flower.committee.enrolment.enrolment_problem`). With the committee on
client nodes it also plays the coordinator role when drawn
(:mod:`bcsfl_flower.committee.coordinator_role`), and refuses to train on a global
model the chain does not certify (:mod:`bcsfl_flower.committee.acceptance`).

This module is where the client layer, the committee's node side and the ledger meet,
as :mod:`bcsfl_flower.strategy` is on the server: ``client/`` imports neither of the
others.

Configuration (node-config first, then run-config, then the mod's defaults):

* ``bcsfl-key-dir``: where the node keeps its key (default ``./.bcsfl/keys``).
* ``bcsfl-client-id``: the identity on the ledger (default ``client-<partition-id>``
  in simulation, else ``node-<node id>``).
* ``bcsfl-ledger``: the ledger the node enrols with and reads the certified state from
  (default ``sqlite:///bcsfl-ledger.db`` in the working directory). A ``memory``
  ledger is private to each process: the node then neither enrols (the strategy
  enrols on first use) nor checks the global model.
* ``bcsfl-enrolment-key``: the enrolment authority's key file, when this machine has
  it (default ``<key-dir>/enrolment.key``; see :mod:`bcsfl_flower.committee.enrolment`).
* ``bcsfl-require-certificate``: refuse global models the chain does not certify
  (default false; :mod:`bcsfl_flower.committee.acceptance`).
* ``bcsfl-pool-packages``: also pool the signed package on the ledger itself (its
  parameters into the model store, its header into the round pool,
  :mod:`bcsfl_flower.federation.pool`), so a relay that withholds it cannot keep it
  from the committee (default false; the apps turn it on with ``committee="nodes"``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flwr.app import Context, Error, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable

from .client.identity import client_identity, config_value, key_folder, node_key
from .client.signing import reply_tensors, sign_reply
from .committee.acceptance import acceptance_problem
from .committee.coordinator_role import is_role_message, play_role
from .committee.filter import FilterConfig
from .committee.enrolment import enrolment_problem
from .committee.rootset import RootSet
from .crypto import SigningKey
from .keys import ENROLMENT_KEY
from .package import PACKAGE_KEY, ModelPackage, arrays_to_numpy, canonical_bytes
from .protocol import NOT_ENROLLED, REFUSED

__all__ = ["BcsflMod", "bcsfl_mod", "make_bcsfl_mod"]

DEFAULT_LEDGER = "sqlite:///bcsfl-ledger.db"
_enrolled: set[tuple[str, str, str]] = set()
_lock = threading.Lock()


def _open(url: str):
    from .ledger import open_ledger

    return open_ledger(url)


def _private(url: str) -> bool:
    """A ``memory`` ledger: each process has its own, so the node cannot reach the federation's."""
    return url == "memory" or url.startswith("memory://")


def _enrolment(ledger_url: str, client_id: str, key: SigningKey, folder: Path, authority: str) -> str | None:
    """Enrol once per process (see :func:`enrolment_problem`); why the node is not enrolled, or None."""
    marker = (ledger_url, client_id, key.public_hex)
    with _lock:
        if marker in _enrolled or _private(ledger_url):
            return None
        with _open(ledger_url) as ledger:
            problem = enrolment_problem(ledger, client_id, key, folder, authority)
        if problem is None:
            _enrolled.add(marker)
        return problem


def _pool_own_package(ledger_url: str, msg: Message, reply: Message, client_id: str, key: SigningKey) -> None:
    """Put the reply's parameters in the ledger's store and its package in the round pool."""
    from .ledger import open_ledger

    package = ModelPackage.from_record(reply.content.config_records[PACKAGE_KEY])
    metrics = {name: dict(rec) for name, rec in reply.content.metric_records.items()}
    with open_ledger(ledger_url, uploader=(client_id, key)) as ledger:
        ledger.put_model(canonical_bytes(reply_tensors(msg, reply)))
        ledger.post_pool([package.pooled(metrics)], key)


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
    filter_config : FilterConfig | None (default: None, i.e. ``FilterConfig()``)
        The filter this node runs when it coordinates; it must be the relay's, or this
        node's statement differs from the others'.
    pool_packages : bool (default: False)
        Default for ``bcsfl-pool-packages``.
    """

    ledger: str | None = None
    key_dir: str | None = None
    client_id: str | None = None
    committee_size: int = 4
    require_certificate: bool = False
    root_set: Callable[[Context], RootSet | None] | None = None
    enrolment_key: str | None = None
    enrol: bool = True
    filter_config: FilterConfig | None = None
    pool_packages: bool = False

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        """Play the coordinator role, or check, enrol, train and sign (see the module docstring)."""
        if msg.metadata.message_type.split(".")[0] != MessageType.TRAIN:
            return call_next(msg, context)
        client_id = client_identity(context, self.client_id)
        folder = key_folder(context, self.key_dir)
        key = node_key(folder, client_id)
        ledger_url = config_value(context, "bcsfl-ledger", self.ledger or os.environ.get("BCSFL_LEDGER", DEFAULT_LEDGER))
        if is_role_message(msg):
            with _open(ledger_url) as ledger:
                return play_role(msg, context, client_id=client_id, key=key, ledger=ledger, root_set=self.root_set,
                                 filter_config=self.filter_config)
        required = config_value(context, "bcsfl-require-certificate", str(self.require_certificate))
        if required.lower() in ("1", "true", "yes") and not _private(ledger_url):
            incoming = next(iter(msg.content.array_records.values()))
            with _open(ledger_url) as ledger:
                problem = acceptance_problem(arrays_to_numpy(incoming), ledger, context.state)
            if problem:
                return Message(Error(code=REFUSED, reason=f"refused global model: {problem}"), reply_to=msg)
        authority = config_value(context, "bcsfl-enrolment-key", self.enrolment_key or str(folder / ENROLMENT_KEY))
        problem = _enrolment(ledger_url, client_id, key, folder, authority) if self.enrol else None
        if problem:
            return Message(Error(code=NOT_ENROLLED, reason=problem), reply_to=msg)
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        signed = sign_reply(msg, reply, key, client_id)
        pool = config_value(context, "bcsfl-pool-packages", str(self.pool_packages))
        if pool.lower() in ("1", "true", "yes") and not _private(ledger_url):
            _pool_own_package(ledger_url, msg, signed, client_id, key)
        return signed


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
