"""BCS-FL for Flower: a committee-governed, ledger-backed federated strategy.

Server side: ``strategy = BCSFL(...)`` where a FedAvg was. Client side:
``ClientApp(mods=[bcsfl_mod])`` signs every train reply as a model package.

The names are imported on first use, so tools that need only the ledger (``bcsfl
ledger ...``, ledger node processes) start without loading torch and Flower.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["BCSFL", "bcsfl_mod", "make_bcsfl_mod"]
__version__ = "0.1.0"

_EXPORTS = {"BCSFL": ".strategy", "bcsfl_mod": ".mod", "make_bcsfl_mod": ".mod"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
