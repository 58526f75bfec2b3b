"""Shared by every test folder: the repository and the test kits are importable.

The package may not be installed in the environment that runs the tests, and kits that
several folders share (``ledger_kit``: federations on a ledger; ``message_kit``: hand-made
Flower messages and signed packages) sit here at the top of ``tests/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
for _path in (REPO_ROOT, TESTS):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
