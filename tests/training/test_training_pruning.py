"""Magnitude pruning zeroes the requested fraction of weights and leaves biases."""

from __future__ import annotations

import pytest
import torch

from bcsfl_flower.training.pruning import PruneReport, magnitude_prune


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc1 = torch.nn.Linear(4 * 6 * 6, 32)
        self.fc2 = torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x)).relu().flatten(1)
        return self.fc2(self.fc1(x).relu())


def _net() -> _Net:
    torch.manual_seed(0)
    return _Net()


def _weights(net: _Net) -> list[torch.Tensor]:
    return [net.conv.weight, net.fc1.weight, net.fc2.weight]


def _zeros(t: torch.Tensor) -> int:
    return int((t == 0).sum())


def test_global_prune_fraction_and_biases() -> None:
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    params_before = [id(p) for p in net.parameters()]
    report = magnitude_prune(net, 0.3)

    n_w = sum(w.numel() for w in _weights(net))
    assert sum(_zeros(w) for w in _weights(net)) == round(0.3 * n_w)
    # the smallest magnitudes went: every survivor is >= every pruned original
    orig = torch.cat([before[k].flatten() for k in ("conv.weight", "fc1.weight", "fc2.weight")])
    kept = torch.cat([w.detach().flatten() for w in _weights(net)]) != 0
    assert orig[kept].abs().min() >= orig[~kept].abs().max()
    for name in ("conv.bias", "fc1.bias", "fc2.bias", "bn.weight", "bn.bias"):
        assert torch.equal(net.state_dict()[name], before[name])
    # plain module again, same Parameter objects in the same order (optimizers and
    # ndarray lists built from state_dict() stay aligned)
    assert [id(p) for p in net.parameters()] == params_before
    assert list(net.state_dict()) == list(before)
    assert all(not hasattr(m, "weight_orig") for m in net.modules())
    assert all(not m._forward_pre_hooks for m in net.modules())

    params = sum(p.numel() for p in net.parameters())
    assert report == PruneReport(
        amount=0.3,
        params=params,
        zeros=round(0.3 * n_w) + 4,  # + BatchNorm's zero-initialised bias
        dense_bytes=4 * params,
        sparse_bytes=8 * (n_w - round(0.3 * n_w)) + 4 * (params - n_w),
        bytes_saved=0,  # 70 % density: COO costs more than dense
    )


def test_per_layer_prune() -> None:
    net = _net()
    keys = list(net.state_dict())
    magnitude_prune(net, 0.5, global_pruning=False)
    assert list(net.state_dict()) == keys
    for w in _weights(net):
        assert _zeros(w) == round(0.5 * w.numel())


def test_high_sparsity_saves_bytes() -> None:
    net = _net()
    report = magnitude_prune(net, 0.9)
    assert report.bytes_saved == report.dense_bytes - report.sparse_bytes > 0
    assert report.zeros >= round(0.9 * sum(w.numel() for w in _weights(net)))
    net(torch.randn(2, 1, 8, 8))  # still runs


def test_zero_amount_is_noop() -> None:
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    report = magnitude_prune(net, 0.0)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])
    assert report.zeros == sum(int((p == 0).sum()) for p in net.parameters()) == 4  # bn.bias
    assert report.bytes_saved == 0
    assert report.params == sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("amount", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_amount(amount: float) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        magnitude_prune(_net(), amount)
