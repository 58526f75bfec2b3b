"""An in-process Grid: delivers each message to a real ClientApp (with its mods) at once.

It is a transport, not a mock: the ServerApp side is the real BCSFL strategy and the
client side the real ClientApp, ``bcsfl_mod`` included; only the network is a loop.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity


class LocalGrid(Grid):
    """Nodes ``100..100+n-1`` each run ``app`` with their own persistent Context."""

    def __init__(self, app: ClientApp, num_nodes: int, run_config: dict | None = None) -> None:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        self.app = app
        self.contexts = {
            100 + i: Context(run_id=1, node_id=100 + i,
                             node_config={"partition-id": i, "num-partitions": num_nodes},
                             state=RecordDict(), run_config=dict(run_config or {}))
            for i in range(num_nodes)
        }
        self.delivered: list[tuple[Message, Message]] = []
        self._run = None

    def set_run(self, run_id: int) -> None:  # noqa: D102
        self._run = run_id

    @property
    def run(self):  # noqa: D102
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
        replies = []
        for msg in messages:
            reply = self.app(msg, self.contexts[msg.metadata.dst_node_id])
            self.delivered.append((msg, reply))
            replies.append(reply)
        return replies
