"""Robust-aggregation baselines that Flower does not ship (FLTrust), or ships otherwise (Bulyan)."""

from .bulyan import BulyanPaper
from .fltrust import FLTrust

__all__ = ["BulyanPaper", "FLTrust"]
