"""BCS-FL for Flower: a committee-governed, ledger-backed federated strategy.

Server side: ``strategy = BCSFL(...)`` where a FedAvg was. Client side:
``ClientApp(mods=[bcsfl_mod])`` signs every train reply as a model package.
"""

from .client.mod import bcsfl_mod, make_bcsfl_mod
from .strategy import BCSFL

__all__ = ["BCSFL", "bcsfl_mod", "make_bcsfl_mod"]
__version__ = "0.1.0"
