"""Bulyan as the paper defines it (iterated Krum), against a hand-checked example and Flower's one-pass Bulyan."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import Bulyan

from bcsfl_flower.baselines.bulyan import BulyanPaper, bulyan_aggregate, bulyan_select, krum_scores
from bcsfl_flower.package import arrays_to_numpy, numpy_to_arrays

from message_kit import reply

# n = 7, f = 1: theta = 5 picked, beta = 3 averaged per coordinate.
POINTS = np.array([-4.0, -2.0, 0.0, 2.0, 3.0, 5.0, 9.0])


def test_krum_scores_hand_checked():
    # f = 1, n = 7: each point sums its 4 smallest squared distances
    # -4: 4+16+36+49; -2: 4+4+16+25; 0: 4+4+9+16; 2: 1+4+9+16; 3: 1+4+9+25; 5: 4+9+16+25; 9: 16+36+49+81
    np.testing.assert_array_equal(krum_scores(POINTS[:, None], 1), [105, 49, 33, 30, 39, 54, 182])


def test_selection_is_krum_again_on_what_is_left():
    # 1. all 7 (k=4): 2 scores 30, the least.
    # 2. {-4,-2,0,3,5,9} (k=3): -4 69, -2 33, 0 29, 3 38, 5 45, 9 133 -> 0.
    # 3. {-4,-2,3,5,9} (k=2): 53, 29, 29, 20, 52 -> 5.
    # 4. {-4,-2,3,9} (k=1): 4, 4, 25, 36 -> -4 (a tie goes to the lower index).
    # 5. {-2,3,9} (k=1): 25, 25, 36 -> -2.
    assert POINTS[bulyan_select(POINTS[:, None], 1)].tolist() == [2.0, 0.0, 5.0, -4.0, -2.0]
    # one Multi-Krum pass (Flower) keeps the 5 best first-round scores instead: -2, 0, 2, 3, 5
    assert sorted(POINTS[np.argsort(krum_scores(POINTS[:, None], 1))[:5]].tolist()) == [-2, 0, 2, 3, 5]


def test_aggregate_hand_checked():
    # selection {-4,-2,0,2,5}: median 0, the 3 nearest are 0, -2, 2 -> mean 0
    agg, selected = bulyan_aggregate(POINTS[:, None], 1)
    assert agg.tolist() == [0.0] and sorted(selected) == [0, 1, 2, 3, 5]
    with pytest.raises(ValueError, match="4f"):
        bulyan_aggregate(POINTS[:6, None], 1)


def _replies(values):
    return [reply(RecordDict({"arrays": numpy_to_arrays({"w": np.array([v], np.float32),
                                                           "b": np.array([-v, 10 * v], np.float32)}),
                              "metrics": MetricRecord({"num-examples": 10})}), node_id=i + 1)
            for i, v in enumerate(values)]


def test_differs_from_flowers_bulyan_where_the_selections_differ():
    ours, _ = BulyanPaper(num_malicious_nodes=1).aggregate_train(1, _replies(POINTS))
    flowers, _ = Bulyan(num_malicious_nodes=1).aggregate_train(1, _replies(POINTS))
    ours, flowers = arrays_to_numpy(ours), arrays_to_numpy(flowers)
    # Flower: selection {-2,0,2,3,5}, median 2, nearest 2, 3, 0 -> 5/3 (coordinate b: -5/3, 50/3)
    np.testing.assert_allclose(flowers["w"], [5 / 3], rtol=1e-6)
    np.testing.assert_allclose(flowers["b"], [-5 / 3, 50 / 3], rtol=1e-6)
    np.testing.assert_allclose(ours["w"], [0.0], atol=1e-7)
    np.testing.assert_allclose(ours["b"], [0.0, 0.0], atol=1e-6)
    assert ours["w"].dtype == np.float32


def test_outliers_left_out_and_recorded():
    rng = np.random.default_rng(0)
    honest = rng.normal(1.0, 0.1, 9)
    strategy = BulyanPaper(num_malicious_nodes=2)
    arrays, metrics = strategy.aggregate_train(3, _replies(list(honest) + [50.0, -40.0]))
    agg = arrays_to_numpy(arrays)["w"][0]
    assert honest.min() <= agg <= honest.max() and metrics is not None
    record = strategy.rounds[-1]
    assert record["round"] == 3 and {"node-10", "node-11"} <= set(record["rejected"])
    assert len(record["accepted"]) == 11 - 2 * 2
    assert strategy.aggregate_train(4, _replies(honest)) == (None, None)  # 9 replies < 4f + 3 = 11
