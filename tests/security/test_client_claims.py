"""A client's own claims against the committee's bounds: example counts and tensor sizes.

A package is signed by its client, so whatever it declares is authentic, not true: a
client may declare 10^9 examples to outweigh everyone, or ship a tensor far larger than
the model. The committee bounds the first (a cap at a multiple of the round's median
declared count) and refuses the second from the arrays' metadata, before decoding.
"""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
from flwr.app import Array, ArrayRecord

from bcsfl_flower.committee.filter import FilterConfig
from bcsfl_flower.committee.verify import PackageVerifier
from bcsfl_flower.crypto import SigningKey
from bcsfl_flower.package import arrays_to_numpy, numpy_to_arrays

from message_kit import chartered_strategy, global_model, reply, signed_content
from core.test_strategy import honest_replies, run_round

CLIENTS = [f"client-{i}" for i in range(6)]


def _flat(tensors) -> np.ndarray:
    return np.concatenate([np.asarray(t, np.float64).ravel() for t in tensors.values()])


def _round(tmp_path, name: str, example_cap: float):
    """One round of six honest clients and an enrolled attacker declaring 10^9 examples."""
    g = global_model()
    strategy, keys, _ = chartered_strategy(tmp_path / name, CLIENTS + ["attacker"], g,
                                           filter_config=FilterConfig(example_cap=example_cap))
    honest = honest_replies({c: keys[c] for c in CLIENTS}, g, 1)
    mean = np.mean([_flat(arrays_to_numpy(m.content["arrays"])) - _flat(g) for m in honest], axis=0)
    # Aligned with the crowd (so it is kept) but 1.8x as long: within the 2x norm bound, not clipped.
    target = {k: (g[k] + 1.8 * d.reshape(g[k].shape)).astype(np.float32)
              for k, d in zip(g, np.split(mean, np.cumsum([v.size for v in g.values()])[:-1]))}
    attacker = reply(signed_content(keys["attacker"], target, client_id="attacker", server_round=1,
                                    num_examples=10**9, metrics={"train_loss": 1.0}), node_id=99)
    arrays, _ = run_round(strategy, g, 1, honest + [attacker])
    assert arrays is not None and "attacker" in strategy.rounds[-1]["accepted"]
    return _flat(arrays_to_numpy(arrays)) - _flat(g), _flat(target) - _flat(g), mean, strategy


def test_inflated_num_examples_moves_the_aggregate_by_at_most_the_cap(tmp_path):
    capped, attack, honest, strategy = _round(tmp_path, "capped", 3.0)
    uncapped, _, _, _ = _round(tmp_path, "uncapped", 0.0)
    # Share of the aggregate that moved from the honest mean toward the attacker's update.
    share = lambda agg: float(np.dot(agg - honest, attack - honest) / np.dot(attack - honest, attack - honest))
    assert share(uncapped) > 0.99  # without a bound the aggregate is the attacker's update
    # With the cap it counts as 3x the median claim (100 each), times its cosine, like every kept update.
    decisions = {d["client_id"]: d for d in strategy.ledger.latest().data["decisions"]}
    assert "examples capped at 300" in decisions["attacker"]["reason"]
    weight = {c: min(100 if c != "attacker" else 10**9, 300) * d["cosine"] for c, d in decisions.items()}
    bound = weight["attacker"] / sum(weight.values())
    assert bound < 0.45 and share(capped) <= bound + 0.02, (share(capped), bound)


def test_oversize_tensor_is_refused_before_decoding():
    """A 191 MiB tensor (a valid signature over it) is refused from its metadata; peak memory stays small."""
    g = global_model()
    key = SigningKey.generate()
    verifier = PackageVerifier(registry=lambda cid: key.public_hex)
    big = 191 << 20
    cases = {
        "wrong shape": Array(dtype="float32", shape=(big // 4,), stype="numpy.ndarray", data=bytes(big)),
        "oversized w": Array(dtype="float32", shape=tuple(g["w"].shape), stype="numpy.ndarray", data=bytes(big)),
    }
    for reason, array in cases.items():
        content = signed_content(key, g, client_id="c", server_round=1)
        content["arrays"] = ArrayRecord({"w": array, "b": numpy_to_arrays({"b": g["b"]})["b"]})
        tracemalloc.start()
        out = verifier.verify(content, server_round=1, reference=g, now=time.time())
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert reason in out.reason, out
        assert peak < 1 << 20, f"verifying the refused package allocated {peak} bytes"
    # What decoding it would have cost, for comparison: the whole tensor again.
    tracemalloc.start()
    decoded = np.frombuffer(cases["wrong shape"].data, np.float32).copy()
    assert tracemalloc.get_traced_memory()[1] >= big and decoded.nbytes == big
    tracemalloc.stop()
