"""FedAvg over the honest clients only: an evaluation reference (an oracle), not a defence.

Under strong label skew an attacker's partition may hold most of a class's examples.
A filter that rejects every poisoned update also loses that data, so "clean FedAvg"
(every client honest, all data used) is a bar no defence can be sure to reach at a
malicious fraction above zero. This strategy shows the best any filter can do in a run:
it knows who the attackers are (the simulation's own list, which no real server has)
and averages the other replies exactly as FedAvg would. BCS-FL's accuracy under an
attack against this one's, same seed and split, separates what the filter lost from
what the attackers' missing data cost.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from ..package import reply_client_id

__all__ = ["HonestOnlyFedAvg"]


class HonestOnlyFedAvg(FedAvg):
    """FedAvg that leaves out the replies of ``excluded`` clients.

    Parameters
    ----------
    excluded : Iterable[str]
        Client ids (as the model package names them) whose replies are dropped: in the
        experiments, the run's attackers.
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg`.
    """

    def __init__(self, *, excluded: Iterable[str], **kwargs) -> None:
        super().__init__(**kwargs)
        self.excluded = frozenset(excluded)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedAvg's aggregate of the replies from clients not in ``excluded``."""
        kept = [m for m in replies if reply_client_id(m) not in self.excluded]
        return super().aggregate_train(server_round, kept)
