"""An in-process engine: the real ServerApp and ClientApp in one process, no Ray.

``LocalGrid`` is a Flower ``Grid`` that delivers each message to a real ClientApp (its
mods, ``bcsfl_mod`` included) at once, one node after another. It is a transport, not a
mock: only the network is a loop. Each node gets the Context Flower's simulation engine
gives it (``node_config`` with ``partition-id`` and ``num-partitions``, its own
persistent ``state``, an empty ``run_config`` since the settings travel as the apps'
overrides), and a client that raises becomes an error reply, as under Ray.

``run_inprocess(settings)`` runs one whole federation that way. It imports neither
``ray`` nor ``flwr.simulation``, so it works where only Flower's pure-Python parts are
installed, and a machine with many cores can run many such runs side by side.
"""

from __future__ import annotations

import copy
import logging
import traceback
from collections.abc import Iterable, Mapping
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from .settings import RunSettings

__all__ = ["FIRST_NODE_ID", "LocalGrid", "run_inprocess"]

FIRST_NODE_ID = 100
_RUN_ID = 1
_log = logging.getLogger("flwr")


class LocalGrid(Grid):
    """Nodes ``100 .. 100+num_nodes-1``, node ``100+i`` being partition ``i``, each running ``app``.

    Parameters
    ----------
    app : ClientApp
        The ClientApp every node runs (with its mods).
    num_nodes : int
        How many nodes (SuperNodes) the federation has; also ``num-partitions``.
    run_config : dict, optional
        Each node Context's ``run_config``. Flower's simulation engine gives an empty one
        (the apps read their settings from the overrides they were built with).
    catch_errors : bool
        ``True`` (default), as Flower's simulation engine: a ClientApp that raises an
        ``Exception`` is logged ("An exception was raised when processing a message
        ...") and replies with an error Message, and the round goes on. ``False``: the
        exception propagates to the caller (useful in tests). ``KeyboardInterrupt`` and
        ``SystemExit`` always propagate: Ctrl-C stops the run, not one client.

    Attributes
    ----------
    contexts : dict[int, Context]
        Each node's Context, kept across rounds (so per-node state persists).
    delivered : list[tuple[Message, Message]]
        Every (message as the server sent it, reply) pair, in delivery order.
    """

    def __init__(self, app: ClientApp, num_nodes: int, run_config: Mapping[str, Any] | None = None,
                 *, catch_errors: bool = True) -> None:
        if num_nodes < 1:
            raise ValueError("num_nodes must be at least 1")
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = _RUN_ID, 0, 1
        self.app = app
        self.catch_errors = catch_errors
        self.contexts = {
            FIRST_NODE_ID + i: Context(run_id=_RUN_ID, node_id=FIRST_NODE_ID + i,
                                       node_config={"partition-id": i, "num-partitions": num_nodes},
                                       state=RecordDict(), run_config=dict(run_config or {}))
            for i in range(num_nodes)
        }
        self.delivered: list[tuple[Message, Message]] = []
        self._run = Run.create_empty(run_id=_RUN_ID)

    def set_run(self, run_id: int) -> None:  # noqa: D102
        self._run = Run.create_empty(run_id=run_id)

    @property
    def run(self) -> Run:  # noqa: D102
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # noqa: D102
        return Message(content=content, message_type=message_type, dst_node_id=dst_node_id, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return list(self.contexts)

    def get_nodes(self):  # noqa: D102
        return []

    def push_messages(self, messages):  # noqa: D102
        raise NotImplementedError("use send_and_receive")

    def pull_messages(self, message_ids):  # noqa: D102
        raise NotImplementedError("use send_and_receive")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Deliver each message to its node in turn, in node order; return the replies in that order.

        Flower's strategies sample nodes in a random order and Ray returns replies as
        they finish; FedAvg's float32 sum depends on that order (by about 1e-7), so a
        Ray run is not bit-reproducible. Here the order is the nodes' (partition ids'),
        so the same settings give the same models every time.

        Each node receives a copy, as it would over the network (a client changing
        what it received cannot change what the server or another node holds).
        ``timeout`` is accepted for the Grid interface and ignored: delivery is
        synchronous.
        """
        replies = []
        for msg in sorted(messages, key=lambda m: m.metadata.dst_node_id):
            msg.metadata.__dict__["_message_id"] = str(uuid4())  # as InMemoryGrid.push_messages
            reply = self._deliver(copy.deepcopy(msg), self.contexts[msg.metadata.dst_node_id])
            reply.metadata.__dict__["_message_id"] = str(uuid4())
            self.delivered.append((msg, reply))
            replies.append(reply)
        return replies

    def _deliver(self, msg: Message, context: Context) -> Message:
        if not self.catch_errors:
            return self.app(msg, context)
        try:
            return self.app(msg, context)
        except Exception as ex:  # noqa: BLE001 - as Flower's simulation engine: an error reply
            _log.error("An exception was raised when processing a message by %s (node %s)",
                       type(self).__name__, context.node_id)
            _log.error(traceback.format_exc())
            reason = str(type(ex)) + ":<'" + str(ex) + "'>"
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)


def run_inprocess(settings: RunSettings, *, quiet: bool = False) -> dict[str, Any]:
    """Run ``settings`` with ``settings.num_clients`` in-process nodes; return the metrics.

    The ServerApp's ``run_server`` and the ClientApp from ``make_client_app`` are the
    components ``bcsfl simulate --engine ray`` runs, built from the same overrides
    (``settings.to_mapping()``); clients train one after another in this process.
    ``metrics.json`` is written to ``settings.out`` when it is set. ``quiet``: no
    ``[bcsfl] round r/R ...`` lines (:func:`~bcsfl_flower.apps.server_app.run_server`).
    """
    from .apps.client_app import make_client_app
    from .apps.server_app import run_server

    if settings.num_clients < 1:
        raise ValueError("num_clients must be at least 1")
    grid = LocalGrid(make_client_app(settings.to_mapping()), settings.num_clients)
    return run_server(grid, settings, quiet=quiet)
