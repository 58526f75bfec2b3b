"""Robust-aggregation baselines that Flower does not ship (FLTrust)."""

from .fltrust import FLTrust

__all__ = ["FLTrust"]
