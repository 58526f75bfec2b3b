"""Robust-aggregation baselines that Flower does not ship (FLTrust), or ships otherwise (Bulyan), and
the honest-only FedAvg reference of the experiments."""

from .bulyan import BulyanPaper
from .fltrust import FLTrust
from .honest_only import HonestOnlyFedAvg

__all__ = ["BulyanPaper", "FLTrust", "HonestOnlyFedAvg"]
