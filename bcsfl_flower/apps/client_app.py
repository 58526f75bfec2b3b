"""BCS-FL ClientApp (Sec. IV-A, the local device layer): a factory's training, with the signing mod around it.

Each node trains on its Dirichlet partition, optionally with Opacus DP-SGD and
magnitude pruning; nodes drawn as malicious (``malicious-fraction``) run the
configured attack. With ``compression="topk"`` the reply carries the update's top-k
encoding instead of the dense model (error feedback in ``context.state``;
:mod:`bcsfl_flower.compression`). ``bcsfl_mod`` then signs the reply as a model package.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ..client.attacks import DATA_ATTACKS, NEEDS_REFERENCE, flip_labels, poison_update
from ..mod import BcsflMod
from ..training.train import evaluate, get_weights, set_weights, torch_threads, train
from ..models import build_model
from ..package import arrays_to_numpy, numpy_to_arrays
from ..settings import RunSettings
from .task import client_data, make_root_set, malicious_ids

__all__ = ["app", "make_client_app"]

_STATE_KEY = "bcsfl.privacy"
_RESIDUAL_KEY = "bcsfl.residual"  # error feedback: what top-k compression has not sent yet
_REFERENCE_SHARDS = 4


def _flat(tensors: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([t.astype(np.float64).ravel() for t in tensors.values()])


def _unflat(flat: np.ndarray, like: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out, offset = {}, 0
    for name, t in like.items():
        out[name] = flat[offset : offset + t.size].reshape(t.shape).astype(t.dtype)
        offset += t.size
    return out


def _honest_estimates(s: RunSettings, global_w, x, y, seed: int) -> np.ndarray:
    """Updates a colluding attacker can compute on its own data: one per shard.

    ALIE, IPM and min-max need the mean/spread of honest updates; the attacker
    estimates them from shards of its own partition (no knowledge of other clients).
    """
    rows = []
    for k, idx in enumerate(np.array_split(np.random.default_rng(seed).permutation(len(y)), _REFERENCE_SHARDS)):
        model = build_model(s.dataset, variant=s.model_variant())
        set_weights(model, global_w)
        train(model, x[idx], y[idx], epochs=s.local_epochs, lr=s.learning_rate,
              batch_size=s.batch_size, momentum=s.momentum, seed=seed + k, device=s.device)
        rows.append(_flat(get_weights(model)) - _flat(global_w))
    return np.stack(rows)


def local_train(s: RunSettings, global_w: dict[str, np.ndarray], context: Context, server_round: int):
    """Train one node's update; returns (tensors to upload, metrics)."""
    pid = int(context.node_config["partition-id"])
    n = int(context.node_config["num-partitions"])
    x, y = client_data(s, pid, n)
    malicious = pid in malicious_ids(s, n)
    if malicious and s.attack in DATA_ATTACKS:
        y = flip_labels(torch.from_numpy(y), 10).numpy()
    seed = s.seed * 1_000_003 + pid * 1009 + server_round
    model = build_model(s.dataset, variant=s.model_variant())
    set_weights(model, global_w)
    privacy = context.state.config_records.get(_STATE_KEY)
    dp_noise = s.dp_noise
    if dp_noise == 0 and s.dp_enabled:  # --target-epsilon: this client's own noise for the whole run
        from ..training.privacy import client_noise

        dp_noise = client_noise(s.target_epsilon, len(y), s.batch_size, s.local_epochs, s.num_server_rounds,
                                accountant=s.dp_accountant)
    result = train(
        model, x, y, epochs=s.local_epochs, lr=s.round_lr(server_round), batch_size=s.batch_size, momentum=s.momentum,
        seed=seed,
        dp_noise=dp_noise, dp_max_grad_norm=s.dp_max_grad_norm, dp_accountant=s.dp_accountant,
        privacy_record=dict(privacy) if privacy else None, device=s.device,
    )
    metrics: dict[str, Any] = {"num-examples": result.num_examples, "train_loss": result.train_loss}
    if result.privacy_record is not None:
        from flwr.app import ConfigRecord

        context.state[_STATE_KEY] = ConfigRecord(result.privacy_record)
        metrics["epsilon"] = float(result.epsilon)
    if s.prune > 0:
        from ..training.pruning import magnitude_prune

        report = magnitude_prune(model, s.prune)
        metrics["prune-bytes-saved"] = report.bytes_saved
    local_w = get_weights(model)
    if malicious and s.attack not in DATA_ATTACKS and s.attack != "none":
        update = _flat(local_w) - _flat(global_w)
        reference = _honest_estimates(s, global_w, x, y, seed) if s.attack in NEEDS_REFERENCE else None
        poisoned = poison_update(
            s.attack, update, rng=np.random.default_rng(seed), scale=s.attack_scale, reference=reference,
            num_clients=n, num_malicious=len(malicious_ids(s, n)),
        )
        local_w = _unflat(_flat(global_w) + poisoned, global_w)
    return local_w, metrics


def _compress(s: RunSettings, global_w, local_w, context: Context, metrics: dict[str, Any]) -> ArrayRecord:
    """The top-k encoding of this round's update (:mod:`bcsfl_flower.compression`); the residual stays in
    ``context.state`` for the next round. ``metrics`` gains the upload's and the dense model's payload bytes."""
    from ..compression import compress, payload_bytes, to_record

    kept = context.state.array_records.get(_RESIDUAL_KEY)
    residual = kept["residual"].numpy() if kept is not None else None
    blob, residual = compress(_flat(local_w) - _flat(global_w), residual, fraction=s.topk_fraction,
                              bits=s.quantize_bits)
    context.state[_RESIDUAL_KEY] = ArrayRecord({"residual": Array(residual)})
    record = to_record(blob)
    metrics["upload-bytes"] = payload_bytes(record)
    metrics["dense-bytes"] = payload_bytes(numpy_to_arrays(local_w))
    return record


def _settings_mod(overrides: Mapping[str, Any] | None):
    """``bcsfl_mod`` configured from this app's run settings (ledger, keys, enrolment key, committee, root set)."""

    def mod(msg: Message, context: Context, call_next):
        s = RunSettings.from_context(context, overrides)
        num_clients = int(context.node_config.get("num-partitions", s.num_clients or 1))
        return BcsflMod(
            ledger=s.bcsfl_ledger, key_dir=s.bcsfl_key_dir, committee_size=s.committee_size,
            require_certificate=s.committee == "nodes",
            root_set=lambda ctx: _cached_root_set(s, num_clients), enrolment_key=s.enrolment_key_path(),
            filter_config=s.filter_config(),
            enrol=s.strategy == "bcsfl",  # baselines keep no ledger: the header only names the client
            pool_packages=s.committee == "nodes" and s.strategy == "bcsfl",
        )(msg, context, call_next)

    return mod


@lru_cache(maxsize=2)
def _cached_root_set(s: RunSettings, num_clients: int):
    return make_root_set(s, num_clients)


def make_client_app(overrides: Mapping[str, Any] | None = None) -> ClientApp:
    """A ClientApp whose settings are run-config with ``overrides`` on top."""
    app = ClientApp(mods=[_settings_mod(overrides)])

    @app.train()
    def train_fn(msg: Message, context: Context) -> Message:
        torch.set_num_threads(torch_threads())  # one core per simulated client unless --threads
        s = RunSettings.from_context(context, overrides)
        arrays: ArrayRecord = msg.content["arrays"]
        server_round = int(msg.content["config"].get("server-round", 0))
        global_w = arrays_to_numpy(arrays)
        local_w, metrics = local_train(s, global_w, context, server_round)
        upload = numpy_to_arrays(local_w)
        if s.compression == "topk":
            upload = _compress(s, global_w, local_w, context, metrics)
        content = RecordDict({"arrays": upload, "metrics": MetricRecord(metrics)})
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate_fn(msg: Message, context: Context) -> Message:
        torch.set_num_threads(torch_threads())
        s = RunSettings.from_context(context, overrides)
        pid = int(context.node_config["partition-id"])
        x, y = client_data(s, pid, int(context.node_config["num-partitions"]))
        model = build_model(s.dataset, variant=s.model_variant())
        set_weights(model, arrays_to_numpy(msg.content["arrays"]))
        loss, acc = evaluate(model, x, y, device=s.device)
        metrics = MetricRecord({"num-examples": len(y), "eval_loss": loss, "eval_acc": acc})
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    return app


app = make_client_app()
