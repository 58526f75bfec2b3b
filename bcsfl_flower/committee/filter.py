"""Cosine + loss scoring of client updates, and the deterministic aggregate.

One pure function, :func:`filter_and_aggregate`: the same global model, updates and
root set give the same decisions and the same candidate bytes on every coordinator.

1. Reference direction: the root-set update when the coordinators hold a root set,
   otherwise the coordinate-wise median of the updates. With a root set and
   ``crowd_reference``, the updates the root update alone accepts (2.) are anchors,
   and every update is scored again against the sum of two unit vectors: the root
   update's direction and that of the coordinate-wise median of the anchors (for an
   anchor, of the *other* anchors: it is not scored against a median it is part of);
   its cosine is the larger of that one and its cosine to the root update alone.
   The median is robust to a minority; taking it over anchors only keeps out what
   points against the root data (sign-flip, IPM), which colluding with identical
   updates would otherwise pull the median towards. Alone,
   a root update of a hundred examples is noisy late in training (measured, MNIST,
   alpha 0.5: in round 9 the honest updates' median cosine to it was 0.008 and 65% of
   them fell under the noise floor, while their cosine to the median update was 0.22
   to 0.35, with or without 30% attackers). Under strong label skew the median is the
   common classes' direction, and an honest client holding rare ones points away from
   it while its cosine to the root update (all classes) stays clearly positive: scored
   against the crowd alone, 17 of 200 honest client-rounds were rejected at alpha 0.1
   (MNIST, seed 7, no attack), 5 with the larger of the two cosines. Sign-flip and IPM
   point against both and stay out.
2. Cosine: an update whose cosine to the reference is not clearly positive is
   rejected: at most ``cosine_threshold``, or within the noise floor
   ``noise_z / sqrt(d)`` (a random direction in ``d`` dimensions has a cosine of about
   N(0, 1/d) to any fixed vector, so noise passes with probability 1 - Phi(noise_z)).
   With DP-SGD clients (``dp``) an honest update is mostly the clients' own Gaussian
   noise: alone it is barely distinguishable from a random direction, yet the mean of
   many of them carries the signal. Late in training its cosine is about N(mu, 1/d)
   with mu well under 1/sqrt(d), so any floor at or above 0 rejects a third to a half
   of the honest clients (measured, MNIST eps 3 with server momentum: 11 of 20 in
   rounds 7-10 at the former floor 1/sqrt(d), and fewer kept noisy updates average out
   less noise). With ``dp`` the floor is ``-dp_noise_z / sqrt(d)`` (default z = 2): an
   update is rejected when it points clearly *against* the reference, which an honest
   one does with probability at most Phi(-z) (2.3%), while a noise-free flipped or
   IPM update (|cosine| far above 1/sqrt(d)) stays out. What is let through is
   clipped (3.); an attacker hiding inside the noise band can push against the
   reference by at most z/sqrt(d) of the clip norm, and the loss checks below judge
   the sum. A DP update's norm is set by its own noise, so honest ones lie close
   together (measured, MNIST eps 3: 0.95-1.11 x the round's median in every round; a
   client's budget fixes noise x sqrt(steps) to 0.82-1.15 x the median for partitions
   of 14 to 8,135 examples, alpha 0.05 to 0.5), while the seven attacks' kept updates
   sat at 3.8x (scaling) to 10^26x (ALIE and IPM estimated from a diverging model) and
   were only clipped: with ``dp`` an update whose norm is outside
   [1/``dp_norm_band``, ``dp_norm_band``] x the median of all updates is rejected.
   Crafted updates (ALIE, min-max) are noise-free, so next to noisy honest ones their
   cosine no longer stands out; their own root-loss change does (measured: +4 to +7
   against -1 to +1.8 for honest DP updates, MNIST eps 3). With ``dp``, a kept update
   whose root-loss change is above both 0 and median + ``dp_loss_mad_factor`` x MAD of
   the kept updates' changes is rejected before the loss-difference step (5.). Since
   the norm band, that rule catches only label-flip attackers; at 3 MADs it also
   dropped 13% of honest DP client-rounds (their changes reach 10 MADs), at 6 2.5%,
   with 54 of 60 label-flip client-rounds still rejected (57 at 3; MNIST, eps 3).
3. Norm bound: kept updates are clipped to ``norm_bound`` times the median norm of
   the kept updates, which stops scaling attacks without shrinking honest steps (a
   bound of 1x, tried, slowed learning at alpha 0.1: 0.7815 against 0.8833 in round 4,
   MNIST: the larger honest updates there carry the rarer classes).
4. Weights: kept updates count in proportion to their examples. With
   ``trust_weighted``, times their cosine capped at the kept updates' median cosine
   (FLTrust's trust score; the cap means an update crafted to sit nearer the median
   than honest ones do, as ALIE and min-max are, gains nothing by it). It is off by
   default: under strong non-IID data the rarer classes' honest updates score lower
   and were under-weighted (measured, MNIST alpha 0.1, one seed on a GPU: no attack
   0.9544 against 0.9238 with trust weights, the worst of six attacks at 30% 0.9234
   against 0.8988), and never with ``dp``, where an honest update's cosine is mostly
   its own noise while a crafted noise-free one would score, and weigh, more. A client's
   example count is its own claim, so the committee caps it at ``example_cap`` times
   the round's median claim: one client declaring 10^9 examples weighs at most that
   cap, not the whole aggregate.
5. Loss difference: while the candidate raises the root-set loss, the kept update
   whose own loss change is worst is dropped and the rest aggregated again. The root
   set is small and its loss noisy near convergence, so "raises" means a paired test
   over the root examples: the mean change is above ``loss_z`` standard errors.
   Without a root set, clients whose *reported* training loss is far above the
   others' (above both median + ``loss_mad_factor`` x MAD and twice the median, with at
   least five reports) are dropped instead.
6. Server momentum (FedAvgM; Hsu et al., "Measuring the Effects of Non-Identical Data
   Distribution for Federated Visual Classification", 2019): with ``server_momentum``
   beta > 0 and the model certified before the global one (``previous``), the candidate
   adds beta x (global - previous). With a server learning rate of 1 the momentum
   buffer is exactly the last step, so the chain's last two models are all it needs and
   anyone can recompute it. It helps most with DP-SGD clients: the rounds' independent
   noise averages out while the common direction adds up. The root-loss check (5.)
   judges the updates without it (it is the same for any subset), and a round that
   keeps nothing does not move (its successor's momentum is then zero).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .crowd import crowd_cosines, unit
from .rootset import RootSet
from .verify import VerifiedUpdate

__all__ = ["Decision", "FilterConfig", "FilterResult", "filter_and_aggregate", "finite_or_none"]


def finite_or_none(value: float | None, digits: int | None = None) -> float | None:
    """``value`` (optionally rounded) when finite, else None: the ledger's JSON has no NaN."""
    if value is None or not np.isfinite(value):
        return None
    return float(value) if digits is None else round(float(value), digits)


@dataclass(frozen=True)
class FilterConfig:
    """Thresholds of the filter.

    Parameters
    ----------
    cosine_threshold : float
        Updates with cosine to the reference at or below this are rejected.
    norm_bound : float (default: 2.0)
        Clip kept updates to this multiple of their median norm (0 disables).
    max_loss_drops : int
        At most this many updates are dropped by the root-loss check per round.
    loss_z : float (default: 2.0)
        The root-loss check drops updates while the candidate raises the root-set loss
        by more than ``loss_z`` standard errors of the per-example change (0: any rise).
    loss_mad_factor : float
        Without a root set: reported losses above median + factor x MAD are rejected.
    noise_z : float (default: 2.0)
        Also reject cosines at or below ``noise_z / sqrt(d)`` (``d`` parameters): the
        cosine a random update reaches with probability 1 - Phi(noise_z) (2.3% at 2).
        0 disables. At 3 the floor rejected 3.5% of honest client-rounds with no attack
        (Fashion-MNIST, alpha 0.1, 3 seeds), a third of them with cosines between 2 and 3
        over sqrt(d); at 2, 2.8% (MNIST 2.0 -> 1.7%), while 1 and 2 of 60 Gaussian
        attackers' client-rounds got through (MNIST, Fashion-MNIST, 30%), clipped (3.).
    trust_weighted : bool (default: False)
        Weight kept updates by examples x cosine, capped at the kept median cosine
        (True), or by examples alone (False; always when ``dp``).
    example_cap : float (default: 3.0)
        A client's declared example count counts at most this multiple of the round's
        median declared count (0 disables the cap).
    crowd_reference : bool (default: True)
        With a root set and three anchors or more, each update's reference is the root
        update's direction plus that of the median anchor update (see the module
        docstring); False: the root update alone.
    dp : bool (default: False)
        The clients train with DP-SGD: the cosine floor is ``-dp_noise_z / sqrt(d)``,
        norms outside ``dp_norm_band`` and root-loss outliers are rejected (see the
        module docstring).
    dp_norm_band : float (default: 2.0)
        When ``dp``, updates whose norm is above this multiple of the median norm, or
        below its inverse, are rejected (see the module docstring); 0 disables.
    dp_loss_mad_factor : float (default: 6.0)
        When ``dp``, kept updates whose root-loss change is above median + this many
        MADs of the kept updates' changes (and above 0) are rejected.
    dp_noise_z : float (default: 2.0)
        When ``dp``, updates with cosine at or below ``-dp_noise_z / sqrt(d)`` are
        rejected, and ``cosine_threshold`` and ``noise_z`` do not apply (see the module
        docstring).
    server_momentum : float (default: 0.0)
        Beta of the server momentum (6.); 0 disables it.
    """

    cosine_threshold: float = 0.0
    norm_bound: float = 2.0
    max_loss_drops: int = 3
    loss_z: float = 2.0
    crowd_reference: bool = True
    loss_mad_factor: float = 3.0
    noise_z: float = 2.0
    trust_weighted: bool = False
    example_cap: float = 3.0
    dp: bool = False
    dp_noise_z: float = 2.0
    dp_norm_band: float = 2.0
    dp_loss_mad_factor: float = 6.0
    server_momentum: float = 0.0


@dataclass(frozen=True)
class Decision:
    """Why one client's update was kept or rejected."""

    client_id: str
    kept: bool
    cosine: float
    norm: float
    loss_change: float | None
    reason: str

    def to_json(self) -> dict:
        """JSON-safe dict (floats rounded; NaN/Inf become None)."""
        return {k: (finite_or_none(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class FilterResult:
    """Decisions, the kept clients and the candidate global model."""

    decisions: list[Decision]
    candidate: dict[str, np.ndarray]
    reference: str
    clip_norm: float
    root_loss_before: float | None
    root_loss_after: float | None

    @property
    def kept(self) -> list[str]:  # noqa: D102
        return [d.client_id for d in self.decisions if d.kept]

    @property
    def rejected(self) -> list[str]:  # noqa: D102
        return [d.client_id for d in self.decisions if not d.kept]


def _flatten(tensors: Mapping[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    return np.concatenate([np.asarray(tensors[n], np.float64).ravel() for n in names])


def _aggregate(
    global_tensors: Mapping[str, np.ndarray],
    names: Sequence[str],
    updates: np.ndarray,
    weights: np.ndarray,
    momentum: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """global + weighted mean of ``updates`` (+ ``momentum``; float64, fixed order), cast back."""
    mean = (weights / weights.sum()) @ updates if len(weights) else np.zeros(updates.shape[1])
    if momentum is not None:
        mean = mean + momentum
    out, offset = {}, 0
    for name, tensor in global_tensors.items():
        if name in names:
            size = tensor.size
            out[name] = (tensor.astype(np.float64) + mean[offset : offset + size].reshape(tensor.shape)).astype(tensor.dtype)
            offset += size
        else:  # integer buffers (e.g. counters) keep the global value
            out[name] = tensor.copy()
    return out


def filter_and_aggregate(
    global_tensors: Mapping[str, np.ndarray],
    updates: Sequence[VerifiedUpdate],
    *,
    server_round: int,
    root: RootSet | None = None,
    config: FilterConfig = FilterConfig(),
    previous: Mapping[str, np.ndarray] | None = None,
) -> FilterResult:
    """Score, split and aggregate ``updates`` (see the module docstring).

    ``previous`` is the model certified before ``global_tensors`` (None: there is none
    yet); only the server momentum (6.) reads it.
    """
    updates = sorted(updates, key=lambda u: u.client_id)
    names = [n for n, t in global_tensors.items() if np.issubdtype(t.dtype, np.floating)]
    global_flat = _flatten(global_tensors, names)
    if not updates:
        return FilterResult([], dict(global_tensors), "none", 0.0, None, None)
    momentum = _momentum(global_tensors, global_flat, names, previous, config.server_momentum)
    deltas = np.stack([_flatten(u.tensors, names) for u in updates]) - global_flat
    declared = np.array([u.package.num_examples for u in updates], np.float64)
    cap = config.example_cap * float(np.median(declared)) if config.example_cap > 0 else np.inf
    weights = np.minimum(declared, cap)
    norms = np.linalg.norm(deltas, axis=1)

    root_d = np.sqrt(max(1, deltas.shape[1]))
    threshold = -config.dp_noise_z / root_d if config.dp else max(config.cosine_threshold, config.noise_z / root_d)
    if root is not None:
        reference = _flatten(root.update(global_tensors, server_round), names)
        ref_name = "root-update"
    else:
        reference = np.median(deltas, axis=0)
        ref_name = "coordinate-median"
    cosines = deltas @ reference / np.maximum(norms * np.linalg.norm(reference), 1e-12)
    median_norm, band = float(np.median(norms)), config.dp_norm_band
    in_band = _dp_norm_band(norms, median_norm, band) if config.dp else np.ones(len(norms), bool)
    anchors = np.flatnonzero((cosines > threshold) & in_band)
    if root is not None and config.crowd_reference and len(anchors) >= 3:
        # the better of the two: an update that the root data or the crowd clearly backs
        cosines = np.maximum(cosines, crowd_cosines(deltas, unit(reference), anchors))
        ref_name = "root-update|root+median-of-anchors"
    kept = (cosines > threshold) & in_band
    reasons = ["" if k else f"cosine {c:.4f} <= {threshold:.4f}" if b else
               f"norm {n:.4g} outside [1/{band:g}, {band:g}] x the median {median_norm:.4g} (DP mode)"
               for k, b, c, n in zip(kept, in_band, cosines, norms)]
    if config.trust_weighted and not config.dp:  # DP: cosines are mostly the clients' noise
        # capped at the kept updates' median cosine: looking more central than the typical
        # honest update (what ALIE and min-max craft) earns no extra weight
        cap_cos = float(np.median(cosines[kept])) if kept.any() else 0.0
        weights = weights * np.clip(cosines, 0.0, cap_cos)
    clip = float(np.median(norms[kept]) * config.norm_bound) if kept.any() and config.norm_bound > 0 else np.inf
    scale = np.minimum(1.0, clip / np.maximum(norms, 1e-12))
    clipped = deltas * scale[:, None]

    loss_changes: list[float | None] = [None] * len(updates)
    before = after = None
    if root is not None and kept.any():
        base = root.losses(global_tensors)
        before = float(base.mean())
        for i in np.flatnonzero(kept):
            single = _aggregate(global_tensors, names, clipped[i : i + 1], np.ones(1))
            loss_changes[i] = float(root.losses(single).mean()) - before
        if config.dp:
            _drop_loss_outliers(kept, loss_changes, reasons, config.dp_loss_mad_factor)
        rise = root.losses(_aggregate(global_tensors, names, clipped[kept], weights[kept])) - base
        drops = 0
        while _raises_loss(rise, config.loss_z) and kept.sum() > 1 and drops < config.max_loss_drops:
            worst = max(np.flatnonzero(kept), key=lambda i: (loss_changes[i], -i))
            kept[worst] = False
            reasons[worst] = (f"worst root-loss change {loss_changes[worst]:+.4f} while the candidate raised the "
                              f"root loss by {rise.mean():+.4f}")
            drops += 1
            rise = root.losses(_aggregate(global_tensors, names, clipped[kept], weights[kept])) - base
        after = before + float(rise.mean())
    elif root is None and kept.any():
        reported = np.array([u.metrics.get("train_loss", np.nan) for u in updates])
        valid = kept & np.isfinite(reported)
        if valid.sum() >= 5:  # a spread needs a few reports; honest non-IID losses differ a lot
            med = np.median(reported[valid])
            mad = np.median(np.abs(reported[valid] - med))
            # Far above the others by both measures: k MADs and at least twice the median.
            limit = max(med + config.loss_mad_factor * mad, 2 * med)
            for i in np.flatnonzero(valid):
                loss_changes[i] = float(reported[i] - med)
                if reported[i] > limit:
                    kept[i] = False
                    reasons[i] = f"reported loss {reported[i]:.3f} > {limit:.3f} (median {med:.3f})"

    candidate = (_aggregate(global_tensors, names, clipped[kept], weights[kept], momentum) if kept.any()
                 else dict(global_tensors))
    decisions = [
        Decision(
            client_id=u.client_id,
            kept=bool(kept[i]),
            cosine=float(cosines[i]),
            norm=float(norms[i]),
            loss_change=None if loss_changes[i] is None else float(loss_changes[i]),
            reason=reasons[i] or _kept_reason(scale[i] < 1, clip, declared[i] > cap, cap),
        )
        for i, u in enumerate(updates)
    ]
    return FilterResult(decisions, candidate, ref_name, float(clip), before, after)


def _dp_norm_band(norms: np.ndarray, median: float, band: float) -> np.ndarray:
    """Which updates' norms lie within [1/band, band] x ``median`` (all of them when band <= 0)."""
    if not band > 0:
        return np.ones(len(norms), bool)
    return (norms <= band * median) & (norms >= median / band)


def _momentum(global_tensors: Mapping[str, np.ndarray], global_flat: np.ndarray, names: Sequence[str],
              previous: Mapping[str, np.ndarray] | None, beta: float) -> np.ndarray | None:
    """``beta`` x (global - previous), flat over ``names`` (None: no momentum this round)."""
    if not beta > 0 or previous is None:
        return None
    shapes = [(n, np.shape(t)) for n, t in global_tensors.items()]
    if [(n, np.shape(t)) for n, t in previous.items()] != shapes:
        raise ValueError("the previous model's tensors (names, order, shapes) are not the global model's")
    return beta * (global_flat - _flatten(previous, names))


def _raises_loss(rise: np.ndarray, z: float) -> bool:
    """Whether per-example root-loss changes ``rise`` show a rise beyond noise (paired z-test).

    The root set is small, so its mean loss moves by chance: a candidate counts as
    raising it only when the mean change exceeds ``z`` standard errors of the mean
    (``z`` = 0: any rise).
    """
    mean = float(rise.mean())
    if len(rise) < 2:
        return mean > 0
    return bool(mean > max(0.0, z * float(rise.std(ddof=1)) / np.sqrt(len(rise))))


def _drop_loss_outliers(kept: np.ndarray, changes: list, reasons: list[str], factor: float) -> None:
    """Reject (in place) kept updates whose root-loss change is far above the kept ones' (DP mode).

    Needs five changes for a spread; the majority of the kept set is honest, so the
    median and the MAD are theirs.
    """
    idx = np.flatnonzero(kept)
    if len(idx) < 5:
        return
    values = np.array([changes[i] for i in idx], np.float64)
    med = float(np.median(values))
    limit = max(0.0, med + factor * float(np.median(np.abs(values - med))))
    for i, v in zip(idx, values):
        if v > limit:
            kept[i] = False
            reasons[i] = f"root-loss change {v:+.4f} > {limit:.4f} (median {med:+.4f}, DP mode)"


def _kept_reason(clipped: bool, clip: float, capped: bool, cap: float) -> str:
    parts = ["kept"] + ([f"clipped to {clip:.3f}"] if clipped else []) + ([f"examples capped at {cap:g}"] if capped else [])
    return ", ".join(parts)
