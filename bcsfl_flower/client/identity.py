"""Who a client node is: its configured id, its key folder and its key (BCS-FL, Sec. IV-A).

Every setting is looked up in node-config first, then run-config, then a default
(:func:`config_value`). A node's key is ``<key_dir>/<client id>.key``
(:mod:`bcsfl_flower.keys`), created on first use.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context

from ..crypto import SigningKey
from ..keys import key_path

__all__ = ["DEFAULT_KEY_DIR", "client_identity", "config_value", "key_folder", "node_key"]

DEFAULT_KEY_DIR = ".bcsfl/keys"


def config_value(context: Context, key: str, default: str) -> str:
    """Look ``key`` up in node-config, then run-config; fall back to ``default``."""
    for source in (context.node_config, context.run_config):
        value = source.get(key)
        if value not in (None, ""):
            return str(value)
    return default


def client_identity(context: Context, default: str | None = None) -> str:
    """The client id this node signs as: ``bcsfl-client-id``, else ``default``.

    Without a ``default``: ``client-<partition-id>`` in simulation, else ``node-<node id>``.
    """
    if not default:
        if "partition-id" in context.node_config:
            default = f"client-{int(context.node_config['partition-id'])}"
        else:
            default = f"node-{context.node_id}"
    return config_value(context, "bcsfl-client-id", default)


def key_folder(context: Context, default: str | None = None) -> Path:
    """The node's key folder: ``bcsfl-key-dir``, else ``default``, else :data:`DEFAULT_KEY_DIR`."""
    return Path(config_value(context, "bcsfl-key-dir", default or DEFAULT_KEY_DIR)).expanduser()


def node_key(folder: Path, client_id: str) -> SigningKey:
    """The node's key ``<folder>/<client_id>.key``, created (mode 0600) when missing."""
    return SigningKey.load_or_create(key_path(folder, client_id))
