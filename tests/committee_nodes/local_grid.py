"""The in-process Grid now lives in the package (``bcsfl_flower.inprocess``); kept for old imports."""

from bcsfl_flower.inprocess import LocalGrid

__all__ = ["LocalGrid"]
