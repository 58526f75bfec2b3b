"""The filter keeps honest updates, drops sign-flipped ones, and aggregates deterministically."""

import dataclasses

import numpy as np

from bcsfl_flower.committee.coordinator import coordinate
from bcsfl_flower.committee.filter import FilterConfig, filter_and_aggregate
from bcsfl_flower.committee.verify import PackageVerifier, VerifiedUpdate
from bcsfl_flower.crypto import SigningKey

from message_kit import global_model, signed_content


def make_updates(num_honest=7, num_flipped=3, seed=0, flip_scale=4.0, sizes=(6, 4)):
    """Honest updates share a direction (non-IID noise around it); attackers flip it."""
    rng = np.random.default_rng(seed)
    g = global_model(sizes=sizes)
    direction = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in g.items()}
    keys, registry, updates = {}, {}, []
    for i in range(num_honest + num_flipped):
        cid = f"c{i}"
        keys[cid] = SigningKey.from_seed(cid.encode())
        registry[cid] = keys[cid].public_hex
        noise = {k: rng.normal(scale=0.8, size=v.shape).astype(np.float32) for k, v in g.items()}
        step = {k: 0.1 * (direction[k] + noise[k]) for k in g}
        if i >= num_honest:
            step = {k: -flip_scale * v for k, v in step.items()}
        local = {k: (g[k] + step[k]).astype(np.float32) for k in g}
        content = signed_content(keys[cid], local, client_id=cid, server_round=1, num_examples=50 + 10 * i)
        updates.append(content)
    verifier = PackageVerifier(registry=registry.get)
    verified = [verifier.verify(c, server_round=1, reference=g, now=__import__("time").time()) for c in updates]
    assert all(isinstance(v, VerifiedUpdate) for v in verified)
    return g, verified


def test_keeps_honest_and_drops_sign_flipped_without_root_set():
    g, updates = make_updates()
    result = filter_and_aggregate(g, updates, server_round=1, root=None, config=FilterConfig())
    assert sorted(result.rejected) == ["c7", "c8", "c9"]
    assert sorted(result.kept) == [f"c{i}" for i in range(7)]
    by_id = {d.client_id: d for d in result.decisions}
    assert all(by_id[f"c{i}"].cosine < 0 for i in (7, 8, 9))
    assert all("cosine" in by_id[f"c{i}"].reason for i in (7, 8, 9))


def test_norm_bound_clips_a_scaled_update_that_passes_cosine():
    g, updates = make_updates(num_honest=7, num_flipped=0)
    boosted = updates[0]
    boosted.tensors.update({k: (g[k] + 50 * (v - g[k])).astype(np.float32) for k, v in boosted.tensors.items()})
    result = filter_and_aggregate(g, updates, server_round=1, config=FilterConfig(norm_bound=2.0))
    decision = next(d for d in result.decisions if d.client_id == boosted.client_id)
    assert decision.kept and "clipped" in decision.reason
    step = np.concatenate([(result.candidate[k] - g[k]).ravel() for k in g])
    assert np.linalg.norm(step) <= result.clip_norm + 1e-5


def test_aggregation_bytes_identical_across_runs_and_input_order():
    g, updates = make_updates(seed=3)
    first = coordinate(g, updates, server_round=1, root=None, config=FilterConfig())
    again = coordinate(g, list(reversed(updates)), server_round=1, root=None, config=FilterConfig())
    assert first.candidate_bytes == again.candidate_bytes
    assert first.candidate_hash == again.candidate_hash


def test_weighted_mean_of_kept_updates():
    g, updates = make_updates(num_honest=4, num_flipped=0, seed=5)
    result = filter_and_aggregate(g, updates, server_round=1, config=FilterConfig(norm_bound=0, trust_weighted=False))
    weights = np.array([u.package.num_examples for u in updates], float)
    expected = sum(w * (u.tensors["w"].astype(float) - g["w"]) for w, u in zip(weights, updates)) / weights.sum()
    np.testing.assert_allclose(result.candidate["w"], g["w"] + expected, rtol=1e-5, atol=1e-6)


def test_trust_weights_are_examples_times_cosine():
    g, updates = make_updates(num_honest=4, num_flipped=0, seed=5)
    result = filter_and_aggregate(g, updates, server_round=1, config=FilterConfig(norm_bound=0))
    cos = {d.client_id: d.cosine for d in result.decisions}
    assert all(d.kept for d in result.decisions)
    weights = np.array([u.package.num_examples * cos[u.client_id] for u in updates], float)
    expected = sum(w * (u.tensors["w"].astype(float) - g["w"]) for w, u in zip(weights, updates)) / weights.sum()
    np.testing.assert_allclose(result.candidate["w"], g["w"] + expected, rtol=1e-5, atol=1e-6)


class _QuadraticRoot:
    """A root set whose data says "go towards ``target``": update = target - w, loss = |w - target|^2."""

    def __init__(self, target):
        self.target = target

    def update(self, global_tensors, server_round):
        return {k: self.target[k].astype(np.float64) - global_tensors[k] for k in global_tensors}

    def loss(self, tensors):
        return float(sum(np.sum((tensors[k].astype(np.float64) - self.target[k]) ** 2) for k in tensors))


def test_noise_floor_rejects_random_directions_that_happen_to_score_above_zero():
    g, updates = make_updates(num_honest=12, num_flipped=0, seed=9, sizes=(50, 40))
    d = sum(t.size for t in g.values())
    mean_step = {k: np.mean([u.tensors[k] - g[k] for u in updates], axis=0) for k in g}
    root = _QuadraticRoot({k: g[k] + mean_step[k] for k in g})
    rng = np.random.default_rng(0)
    base = updates[0]
    noisy = []
    for i in range(20):  # pure noise updates of honest size: about half score above 0
        tensors = {k: (g[k] + rng.normal(scale=0.1, size=g[k].shape)).astype(g[k].dtype) for k in g}
        package = dataclasses.replace(base.package, client_id=f"noise-{i:02d}")
        noisy.append(dataclasses.replace(base, package=package, tensors=tensors))
    result = filter_and_aggregate(g, updates + noisy, server_round=1, root=root, config=FilterConfig())
    noise = [dec for dec in result.decisions if dec.client_id.startswith("noise")]
    assert sum(dec.cosine > 0 for dec in noise) >= 5  # the old rule (cos > 0) would keep these
    assert not any(dec.kept for dec in noise)
    assert all(dec.kept for dec in result.decisions if not dec.client_id.startswith("noise"))
    assert "<= %.4f" % (3 / np.sqrt(d)) in noise[0].reason


def test_reported_loss_rule_needs_several_reports_and_a_clear_outlier():
    import time

    g = global_model()
    rng = np.random.default_rng(11)
    direction = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in g.items()}

    def batch(losses):
        registry, contents = {}, []
        for i, loss in enumerate(losses):
            key = SigningKey.from_seed(f"l{i}".encode())
            registry[f"l{i}"] = key.public_hex
            local = {k: (g[k] + 0.1 * direction[k] + 0.01 * rng.normal(size=v.shape)).astype(np.float32)
                     for k, v in g.items()}
            contents.append(signed_content(key, local, client_id=f"l{i}", server_round=1, metrics={"train_loss": loss}))
        verifier = PackageVerifier(registry=registry.get)
        return [verifier.verify(c, server_round=1, reference=g, now=time.time()) for c in contents]

    # Three honest clients with ordinary spread: nobody is dropped for a loss report.
    few = filter_and_aggregate(g, batch([0.70, 0.72, 0.80]), server_round=1)
    assert few.rejected == []
    many = filter_and_aggregate(g, batch([0.70, 0.72, 0.80, 0.75, 0.71, 3.5]), server_round=1)
    assert many.rejected == ["l5"] and "reported loss" in next(d.reason for d in many.decisions if not d.kept)
