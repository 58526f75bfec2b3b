"""The filter keeps honest updates, drops sign-flipped ones, and aggregates deterministically."""

import dataclasses

import numpy as np
import pytest

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


def test_trust_weights_are_examples_times_cosine_capped_at_the_median_cosine():
    g, updates = make_updates(num_honest=5, num_flipped=0, seed=5)
    result = filter_and_aggregate(g, updates, server_round=1, config=FilterConfig(norm_bound=0, trust_weighted=True))
    cos = {d.client_id: d.cosine for d in result.decisions}
    assert all(d.kept for d in result.decisions)
    cap = float(np.median(list(cos.values())))
    assert sum(c > cap for c in cos.values()) == 2  # the two above the median count as the median
    weights = np.array([u.package.num_examples * min(cos[u.client_id], cap) for u in updates], float)
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

    def losses(self, tensors):  # each coordinate's squared error stands for one root example
        return np.concatenate([((tensors[k].astype(np.float64) - self.target[k]) ** 2).ravel() for k in tensors])


def test_noise_floor_rejects_random_directions_that_happen_to_score_above_zero():
    g, updates = make_updates(num_honest=12, num_flipped=0, seed=9, sizes=(50, 40))
    d = sum(t.size for t in g.values())
    mean_step = {k: np.mean([u.tensors[k] - g[k] for u in updates], axis=0) for k in g}
    root = _QuadraticRoot({k: g[k] + mean_step[k] for k in g})
    rng = np.random.default_rng(0)
    base = updates[0]
    noisy = []
    for i in range(40):  # pure noise updates of honest size: about half score above 0
        tensors = {k: (g[k] + rng.normal(scale=0.1, size=g[k].shape)).astype(g[k].dtype) for k in g}
        package = dataclasses.replace(base.package, client_id=f"noise-{i:02d}")
        noisy.append(dataclasses.replace(base, package=package, tensors=tensors))
    for z in (2.0, 3.0):
        floor = z / np.sqrt(d)
        config = FilterConfig() if z == FilterConfig().noise_z else FilterConfig(noise_z=z)
        result = filter_and_aggregate(g, updates + noisy, server_round=1, root=root, config=config)
        noise = [dec for dec in result.decisions if dec.client_id.startswith("noise")]
        assert sum(dec.cosine > 0 for dec in noise) >= 10  # the old rule (cos > 0) would keep these
        assert all(dec.kept == (dec.cosine > floor) for dec in noise)
        # a random direction clears z/sqrt(d) with probability 1 - Phi(z) (2.3% at 2, 0.13% at 3);
        # scored by the larger of two cosines (root, root + crowd), about twice that
        assert sum(dec.kept for dec in noise) <= (4 if z == 2.0 else 0)
        assert all(dec.kept for dec in result.decisions if not dec.client_id.startswith("noise"))
        assert "<= %.4f" % floor in next(dec.reason for dec in noise if not dec.kept)


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


def _with_update(base, cid, g, step):
    package = dataclasses.replace(base.package, client_id=cid)
    return dataclasses.replace(base, package=package, tensors={k: (g[k] + step[k]).astype(g[k].dtype) for k in g})


def test_crowd_reference_keeps_honest_updates_when_the_root_update_is_off():
    """Late in training a small root set's update can be nearly orthogonal to the honest ones.

    Alone it puts half the honest updates under the noise floor; the ones it accepts
    (anchors) give the median direction that keeps the rest, and a sign-flipped update
    is still rejected.
    """
    g, updates = make_updates(num_honest=12, num_flipped=0, seed=4, sizes=(60, 50))
    mean_step = {k: np.mean([u.tensors[k] - g[k] for u in updates], axis=0) for k in g}
    rng = np.random.default_rng(1)
    off = {}  # a root target mostly orthogonal to the honest mean step, a little along it
    for k in g:
        r = rng.normal(size=g[k].shape)
        off[k] = r - (r * mean_step[k]).sum() / (mean_step[k] ** 2).sum() * mean_step[k] + 0.35 * mean_step[k]
    root = _QuadraticRoot({k: g[k] + off[k] for k in g})
    flipped = _with_update(updates[0], "flipped", g, {k: -4 * mean_step[k] for k in g})
    # this root's loss rises for any step off its target: leave the loss check out
    alone = filter_and_aggregate(g, updates + [flipped], server_round=1, root=root,
                                 config=FilterConfig(crowd_reference=False, max_loss_drops=0))
    both = filter_and_aggregate(g, updates + [flipped], server_round=1, root=root,
                                config=FilterConfig(max_loss_drops=0))
    honest = lambda result: [d for d in result.decisions if d.client_id != "flipped"]  # noqa: E731
    assert 3 <= sum(d.kept for d in honest(alone)) <= 6
    assert all(d.kept for d in honest(both))
    assert both.reference == "root-update|root+median-of-anchors"
    assert not next(d for d in both.decisions if d.client_id == "flipped").kept


def test_a_rare_class_update_the_root_data_backs_is_kept_though_the_crowd_points_elsewhere():
    """Label skew: most clients hold the common classes (direction A), two hold a rare one (B).

    The root data holds both (its target is along A + B). A rare-class update improves B
    and costs a little A, so its cosine to root + median (which is A) is negative while
    its cosine to the root update is clearly positive: it is kept. An IPM-style update
    against the crowd's mean points against both and is still rejected.
    """
    g, updates = make_updates(num_honest=10, num_flipped=0, seed=5, sizes=(60, 50))
    a = {k: np.mean([u.tensors[k] - g[k] for u in updates], axis=0) for k in g}
    rng = np.random.default_rng(2)
    b = {}
    for k in g:  # a unit of B per unit of A, orthogonal to A
        r = rng.normal(size=g[k].shape)
        r -= (r * a[k]).sum() / (a[k] ** 2).sum() * a[k]
        b[k] = r * np.sqrt((a[k] ** 2).sum() / (r ** 2).sum())
    root = _QuadraticRoot({k: g[k] + a[k] + b[k] for k in g})
    rare = [_with_update(updates[i], f"rare{i}", g, {k: b[k] - 0.6 * a[k] + 0.05 * rng.normal(size=g[k].shape) for k in g})
            for i in range(2)]
    ipm = _with_update(updates[0], "ipm", g, {k: -0.5 * a[k] for k in g})
    crowd_only = filter_and_aggregate(g, updates + rare + [ipm], server_round=1, root=root,
                                      config=FilterConfig(max_loss_drops=0))
    by_id = {d.client_id: d for d in crowd_only.decisions}
    assert by_id["rare0"].kept and by_id["rare1"].kept
    assert not by_id["ipm"].kept
    assert all(by_id[u.client_id].kept for u in updates)
    # the crowd reference alone (root + median of anchors) scores them below zero
    anchors = np.flatnonzero([by_id[u.client_id].kept for u in updates])
    names = list(g)
    flat = lambda t: np.concatenate([np.asarray(t[n], np.float64).ravel() for n in names])  # noqa: E731
    deltas = np.stack([flat(u.tensors) - flat(g) for u in updates + rare])
    from bcsfl_flower.committee.crowd import crowd_cosines, unit
    crowd = crowd_cosines(deltas, unit(flat(root.update(g, 1))), anchors)
    assert crowd[-1] < 0 and crowd[-2] < 0


def test_an_update_crafted_next_to_the_median_weighs_no_more_than_a_typical_honest_one():
    g, updates = make_updates(num_honest=9, num_flipped=0, seed=6)
    median_step = {k: np.median([u.tensors[k] - g[k] for u in updates], axis=0) for k in g}
    crafted = _with_update(updates[0], "crafted", g, median_step)
    result = filter_and_aggregate(g, updates + [crafted], server_round=1,
                                  config=FilterConfig(norm_bound=0, trust_weighted=True))
    by_id = {d.client_id: d for d in result.decisions}
    assert by_id["crafted"].cosine > max(by_id[u.client_id].cosine for u in updates)
    cap = float(np.median([d.cosine for d in result.decisions]))
    weights = {u.client_id: u.package.num_examples * min(by_id[u.client_id].cosine, cap) for u in updates + [crafted]}
    expected = sum(weights[u.client_id] * (u.tensors["w"].astype(float) - g["w"]) for u in updates + [crafted])
    np.testing.assert_allclose(result.candidate["w"], g["w"] + expected / sum(weights.values()), rtol=1e-5, atol=1e-6)


def test_root_loss_check_drops_only_on_a_rise_beyond_the_root_sets_noise():
    """A candidate that moves the root loss within its noise keeps every update; a clear rise drops the worst."""
    from bcsfl_flower.committee.filter import _raises_loss

    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 0.3, size=100)
    assert _raises_loss(noise - noise.mean() + 0.01, 2.0) is False  # +0.01 mean, SE 0.03: noise
    assert _raises_loss(noise - noise.mean() + 0.2, 2.0) is True
    assert _raises_loss(noise - noise.mean() + 0.01, 0.0) is True  # z = 0: any rise, the old rule
    assert _raises_loss(noise - noise.mean() - 0.05, 2.0) is False


def test_server_momentum_adds_beta_times_the_last_certified_step_and_only_that():
    g, updates = make_updates(seed=5)
    previous = {k: (v - 0.01 * (np.arange(v.size).reshape(v.shape) % 3)).astype(v.dtype) for k, v in g.items()}
    plain = filter_and_aggregate(g, updates, server_round=2, config=FilterConfig())
    moved = filter_and_aggregate(g, updates, server_round=2, config=FilterConfig(server_momentum=0.5),
                                 previous=previous)
    assert moved.kept == plain.kept and moved.clip_norm == plain.clip_norm  # the filter's decisions are its own
    for k in g:
        np.testing.assert_allclose(moved.candidate[k], plain.candidate[k] + 0.5 * (g[k] - previous[k]), atol=1e-6)
    # no previous model certified yet (the chain's first rounds): no momentum
    first = filter_and_aggregate(g, updates, server_round=2, config=FilterConfig(server_momentum=0.5))
    assert all(np.array_equal(first.candidate[k], plain.candidate[k]) for k in g)


def test_a_round_that_keeps_nothing_does_not_move_even_with_momentum():
    g, updates = make_updates(num_honest=0, num_flipped=0)
    previous = {k: (v - 1.0).astype(v.dtype) for k, v in g.items()}
    result = filter_and_aggregate(g, updates, server_round=3, config=FilterConfig(server_momentum=0.9),
                                  previous=previous)
    assert all(np.array_equal(result.candidate[k], g[k]) for k in g)
    g, updates = make_updates(num_honest=3, num_flipped=0)
    all_out = filter_and_aggregate(g, updates, server_round=3, previous=previous,
                                   config=FilterConfig(server_momentum=0.9, cosine_threshold=0.999))
    assert all_out.kept == [] and all(np.array_equal(all_out.candidate[k], g[k]) for k in g)


def test_a_previous_model_of_another_shape_is_refused():
    g, updates = make_updates(seed=6)
    other = {k: np.zeros((v.size + 1,), v.dtype) for k, v in g.items()}
    with pytest.raises(ValueError, match="previous model"):
        filter_and_aggregate(g, updates, server_round=2, config=FilterConfig(server_momentum=0.5), previous=other)
