"""Full-knowledge attacks in simulation: a server-side *evaluation device*, not a client feature.

The omniscient attacks of the robust-FL literature (ALIE, Baruch et al., NeurIPS
2019; IPM, Xie et al., UAI 2020; Min-Max, Shejwalkar & Houmansadr, NDSS 2021; and
boosting to the largest norm BCS-FL's filter keeps, after Bhagoji et al., ICML 2019)
assume colluding attackers who know the honest updates of the very round. No client
can learn those, so no ClientApp code path computes them. Instead, in simulation:

1. every client, attackers included, trains honestly (``poison_update`` passes a
   :data:`~bcsfl_flower.client.attacks.FULL_KNOWLEDGE` attack through unchanged on the
   client, see :mod:`bcsfl_flower.client.attacks`) and ``bcsfl_mod`` signs the reply;
2. the device, wrapped around the strategy's ``aggregate_train``, sees every reply of
   the round, computes the attack vector from the honest ones
   (:func:`~bcsfl_flower.client.attacks.full_knowledge_update`), puts it into each
   attacker's reply and signs that again *with the attacker's own key* (the key file
   ``<key dir>/<client id>.key`` the attacker's node created; in simulation the whole
   federation shares one key folder, as the in-process committee's members already do);
3. the strategy then gets the replies as if the attackers had sent those vectors.

Why server-side rather than a side channel between clients (honest clients writing
their updates to a folder, attackers waiting for them): the in-process engine trains
clients one after another in node order, so an attacker with a low partition id would
wait forever for honest clients that run after it, and under Ray the order is not
known at all. The server holds every reply at once on both engines, needs no timeout,
and leaves the clients' code untouched. What it cannot do: attack a federation whose
clients pool their own packages on the ledger (``committee="nodes"``: the pool keeps
the first package of each client, the honest one), nor read compressed uploads, so it
refuses both settings.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from .client.attacks import FULL_KNOWLEDGE, full_knowledge_update
from .committee.filter import FilterConfig
from .keys import key_path, load_key
from .package import PACKAGE_KEY, ModelPackage, arrays_to_numpy, numpy_to_arrays, reply_client_id
from .settings import RunSettings

__all__ = ["attach_full_knowledge", "poison_replies"]

_log = logging.getLogger("flwr")


def _float_names(global_tensors: Mapping[str, np.ndarray]) -> list[str]:
    return [n for n, t in global_tensors.items() if np.issubdtype(np.asarray(t).dtype, np.floating)]


def _flat(tensors: Mapping[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    return np.concatenate([np.asarray(tensors[n], np.float64).ravel() for n in names])


def poison_replies(
    replies: Sequence[Message],
    global_tensors: Mapping[str, np.ndarray],
    attack: str,
    attackers: Iterable[str],
    *,
    key_dir: str,
    num_clients: int,
    norm_bound: float = FilterConfig().norm_bound,
) -> list[str]:
    """Put the full-knowledge ``attack`` into the replies of ``attackers``, re-signed; return whose.

    Parameters
    ----------
    replies : Sequence[Message]
        The round's train replies as the Grid returned them; attackers' replies are
        changed in place (their single ArrayRecord and their package header).
    global_tensors : Mapping[str, np.ndarray]
        The global model the clients trained from (its order is the package's).
    attack : str
        One of :data:`~bcsfl_flower.client.attacks.FULL_KNOWLEDGE`.
    attackers : Iterable[str]
        Client ids (the packages' ``client-id``) of the colluding attackers.
    key_dir : str
        Folder of the clients' keys (``<key_dir>/<client id>.key``).
    num_clients : int
        ``n`` of the federation (ALIE's ``z``).
    norm_bound : float, optional
        The BCS-FL filter's clip multiple, for scaling-max; default
        ``FilterConfig().norm_bound`` (2.0).

    Returns
    -------
    list[str]
        The client ids whose replies were replaced (an attacker whose reply is an
        error or carries no package is left out). Nothing is replaced, with a warning,
        when fewer than two honest updates arrived (no spread to hide in).
    """
    if attack not in FULL_KNOWLEDGE:
        raise ValueError(f"{attack!r} is not a full-knowledge attack")
    bad = set(attackers)
    names = _float_names(global_tensors)
    base = _flat(global_tensors, names)
    honest, mine = [], []
    for msg in replies:
        cid = reply_client_id(msg)
        if cid is not None:
            (mine if cid in bad else honest).append((cid, msg))
    if not mine:
        return []
    if len(honest) < 2:
        _log.warning("full-knowledge %s: %d honest update(s) this round, attackers left as they are",
                     attack, len(honest))
        return []
    honest_updates = np.stack([_flat(_tensors(m), names) - base for _, m in honest])
    shared = None if attack == "scaling-max" else full_knowledge_update(
        attack, honest_updates, num_clients=num_clients, num_malicious=len(bad))
    done = []
    for cid, msg in mine:
        own = _tensors(msg)
        vector = shared if shared is not None else full_knowledge_update(
            attack, honest_updates, own=_flat(own, names) - base, num_clients=num_clients,
            num_malicious=len(bad), norm_bound=norm_bound)
        _replace(msg, cid, own, global_tensors, names, base + vector, key_dir)
        done.append(cid)
    return done


def _tensors(msg: Message) -> dict[str, np.ndarray]:
    return arrays_to_numpy(next(iter(msg.content.array_records.values())))


def _replace(msg: Message, cid: str, own: Mapping[str, np.ndarray], global_tensors: Mapping[str, np.ndarray],
             names: Sequence[str], flat: np.ndarray, key_dir: str) -> None:
    """Write ``flat`` (global + attack) into ``msg`` in the global model's order and sign it as ``cid``."""
    old = ModelPackage.from_record(msg.content.config_records[PACKAGE_KEY])
    key = load_key(key_path(key_dir, cid))
    if key is None or key.public_hex != old.public_key:
        raise RuntimeError(f"full-knowledge attack: no key of {cid} in {key_dir} that signed its reply; "
                           "the device must share the clients' key folder (simulation only)")
    tensors, offset = {}, 0
    for name, ref in global_tensors.items():
        if name in names:  # float tensors carry the attack; integer buffers stay the attacker's own
            size = np.asarray(ref).size
            tensors[name] = flat[offset: offset + size].reshape(np.shape(ref)).astype(np.asarray(ref).dtype)
            offset += size
        else:
            tensors[name] = np.asarray(own[name])
    metrics = {n: dict(rec) for n, rec in msg.content.metric_records.items()}  # as sign_reply signs them
    package = ModelPackage.create(key, tensors, client_id=cid, server_round=old.server_round,
                                  num_examples=old.num_examples, metrics=metrics)
    record_key = next(iter(msg.content.array_records))
    msg.content[record_key] = numpy_to_arrays(tensors)
    msg.content[PACKAGE_KEY] = package.to_record()


def attach_full_knowledge(strategy: Strategy, s: RunSettings, num_clients: int) -> Strategy:
    """Wrap ``strategy`` (in place, and return it) with the device for ``s.attack``.

    ``configure_train`` remembers the global model the clients receive (from the
    messages it returns, so a strategy that swaps the model, such as BCS-FL resuming
    from its chain, is measured right); ``aggregate_train`` calls
    :func:`poison_replies` first. The attackers are the run's
    (:func:`bcsfl_flower.apps.task.malicious_ids`, as ``client-<partition>``).
    ``strategy.full_knowledge`` records, per round, whose replies were replaced.

    Parameters
    ----------
    strategy : Strategy
        The strategy the ServerApp runs (BCS-FL or a baseline).
    s : RunSettings
        The run's settings; ``s.attack`` must be a full-knowledge attack and
        ``s.committee`` must be ``"server"``.
    num_clients : int
        Number of clients of the federation.
    """
    from .apps.task import client_ids, malicious_ids

    if s.attack not in FULL_KNOWLEDGE:
        raise ValueError(f"{s.attack!r} is not a full-knowledge attack")
    if s.strategy == "bcsfl" and s.committee != "server":
        raise ValueError(f"--attack {s.attack} is a server-side evaluation device: it needs --committee server "
                         "(with the committee on the nodes, clients pool their own honest packages)")
    if getattr(s, "compression", "none") != "none":  # replies would carry encodings, not models
        raise ValueError(f"--attack {s.attack} needs dense uploads (--compression none)")
    attackers = client_ids(malicious_ids(s, num_clients))
    norm_bound = FilterConfig(example_cap=s.example_cap).norm_bound
    seen: dict[int, dict[str, np.ndarray]] = {}
    replaced: dict[int, list[str]] = {}
    inner_configure, inner_aggregate = strategy.configure_train, strategy.aggregate_train

    def configure_train(server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        messages = list(inner_configure(server_round, arrays, config, grid))
        sent = next((m for m in messages if m.content.array_records), None)
        seen[server_round] = _tensors(sent) if sent is not None else arrays_to_numpy(arrays)
        return messages

    def aggregate_train(server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        if server_round in seen:
            replaced[server_round] = poison_replies(
                replies, seen.pop(server_round), s.attack, attackers, key_dir=s.bcsfl_key_dir,
                num_clients=num_clients, norm_bound=norm_bound)
        return inner_aggregate(server_round, replies)

    strategy.configure_train = configure_train  # type: ignore[method-assign]
    strategy.aggregate_train = aggregate_train  # type: ignore[method-assign]
    strategy.full_knowledge = replaced  # type: ignore[attr-defined]
    return strategy
