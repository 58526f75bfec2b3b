"""pytorchexample: A Flower / PyTorch app."""

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    """Model (simple CNN adapted from 'PyTorch: A 60 Minute Blitz')"""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 16 * 4 * 4)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def _read_idx(path: Path) -> np.ndarray:
    data = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    magic, count = struct.unpack(">II", data[:8])
    if magic == 2051:
        rows, cols = struct.unpack(">II", data[8:16])
        return np.frombuffer(data, np.uint8, offset=16).reshape(count, 1, rows, cols)
    return np.frombuffer(data, np.uint8, offset=8)


def _data_root(data_dir: str) -> Path:
    """run-config data-dir; else $BCSFL_DATA_DIR/mnist; else ~/.cache/bcsfl/datasets/mnist (bcsfl's download)."""
    if data_dir:
        return Path(data_dir).expanduser()
    return Path(os.environ.get("BCSFL_DATA_DIR") or "~/.cache/bcsfl/datasets").expanduser() / "mnist"


def _find(root: Path, stem: str) -> Path:
    for folder in (root, root / "MNIST" / "raw"):  # flat, or torchvision's layout
        for name in (stem, stem + ".gz"):
            if (folder / name).exists():
                return folder / name
    raise FileNotFoundError(f"{stem}[.gz] not in {root} (nor {root / 'MNIST' / 'raw'}): set run-config data-dir "
                            "to a folder holding MNIST's IDX files, or BCSFL_DATA_DIR to a folder holding mnist/")


def load_data(partition_id: int, num_partitions: int, data_dir: str, batch_size: int):
    """IID partition of a local MNIST-format data set; 80/20 train/test split per partition."""
    root = _data_root(data_dir)
    images = _read_idx(_find(root, "train-images-idx3-ubyte"))
    labels = _read_idx(_find(root, "train-labels-idx1-ubyte"))
    order = np.random.default_rng(42).permutation(len(labels))
    part = np.array_split(order, num_partitions)[partition_id][:2000]  # keep the quickstart quick
    x = torch.from_numpy((images[part].astype(np.float32) / 255.0 - 0.5) / 0.5)
    y = torch.from_numpy(labels[part].astype(np.int64))
    cut = int(0.8 * len(part))
    trainloader = DataLoader(TensorDataset(x[:cut], y[:cut]), batch_size=batch_size, shuffle=True)
    testloader = DataLoader(TensorDataset(x[cut:], y[cut:]), batch_size=batch_size)
    return trainloader, testloader


def train(net, trainloader, epochs, lr, device):
    """Train the model on the training set."""
    net.to(device)
    criterion = torch.nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    net.train()
    running_loss = 0.0
    for _ in range(epochs):
        for images, labels in trainloader:
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = criterion(net(images), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
    return running_loss / (epochs * len(trainloader))


def test(net, testloader, device):
    """Validate the model on the test set."""
    net.to(device)
    criterion = torch.nn.CrossEntropyLoss()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for images, labels in testloader:
            images, labels = images.to(device), labels.to(device)
            outputs = net(images)
            loss += criterion(outputs, labels).item()
            correct += (torch.max(outputs.data, 1)[1] == labels).sum().item()
    accuracy = correct / len(testloader.dataset)
    loss = loss / len(testloader)
    return loss, accuracy
