"""torchvision imports through the guard on this CPU torch, and its datasets work."""

import subprocess
import sys

GUARDED = """
from bcsfl_flower.torchvision_guard import import_torchvision
tv = import_torchvision()
from torchvision.datasets import CIFAR10, MNIST
from torchvision import transforms
import torch
x = transforms.Normalize((0.5,), (0.5,))(torch.ones(1, 2, 2))
assert float(x.sum()) == 4.0
print(tv.__version__)
"""


def test_guarded_import_gives_working_torchvision():
    out = subprocess.run([sys.executable, "-c", GUARDED], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().startswith("0.")


def test_guard_is_idempotent_in_one_process():
    from bcsfl_flower.torchvision_guard import import_torchvision

    assert import_torchvision() is import_torchvision()
