"""The package's layers import only what their walls allow (issue 14: a border that holds).

Every import statement in ``bcsfl_flower/`` (also those inside functions) is read with
``ast`` and resolved to an absolute module name. Each layer may import, of the package,
only the modules listed for it in :data:`MAY_IMPORT`, and none of the outside modules in
:data:`MUST_NOT_IMPORT`:

* ``client/`` (a node's identity, key and signed reply; attacks): nothing of the
  committee or the ledger; the record names it shares with them are ``protocol.py``'s.
* ``committee/``: nothing of ``client/``; the upload codec (``compression.py``) it shares with the apps.
* ``training/``: torch only, nothing else of the package.
* ``consensus/`` (the sans-IO PBFT replica): no Flower, torch, asyncio, sockets or HTTP.
* ``federation/`` (the rules every party re-runs): the standard library and ``crypto``.
* ``ledger/``: nothing of the strategy, clients, committee, apps or training, and
  neither torch nor Flower (ledger nodes start without them).
* the sans-IO cores inside the ledger (:data:`PURE_CORES`: the batcher, its actions,
  the recovery watch) import no event loop, no clock and not the node that drives them:
  time comes in as an argument, actions go out as values.

The compositions (``mod.py`` on a client node, ``strategy.py`` on the server, ``apps/``,
``simulate``, ``inprocess``, ``cli``) may import any layer; no layer imports them.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "bcsfl_flower"
ROOT = "bcsfl_flower"

#: Of the package, what each layer (folder or shared module) may import besides itself.
MAY_IMPORT: dict[str, set[str]] = {
    "client": {"crypto", "keys", "package", "protocol", "training"},
    "committee": {"compression", "consensus", "crypto", "federation", "keys", "ledger", "package", "protocol",
                  "training"},
    "training": set(),
    "consensus": {"crypto"},
    "federation": {"crypto"},
    "ledger": {"consensus", "crypto", "federation"},
    "protocol": set(),
    "crypto": set(),
    "keys": {"crypto"},
    "package": {"crypto", "federation", "protocol"},
    "compression": {"crypto", "package"},  # the upload codec clients and coordinators share
}
#: Outside modules (and their submodules) a layer must not import.
MUST_NOT_IMPORT: dict[str, set[str]] = {
    "committee": {"flwr.client"},  # Flower's client API: the committee is no client either
    "consensus": {"flwr", "torch", "asyncio", "socket", "httpx", "fastapi", "starlette", "uvicorn"},
    "ledger": {"torch", "flwr", "opacus"},
}
#: Layers that may import nothing outside the package but the standard library.
STDLIB_ONLY = {"federation", "protocol"}
#: Sans-IO cores (paths under the package) and what they must not import: their driver does I/O.
PURE_CORES: dict[str, set[str]] = {
    core: {"asyncio", "time", "socket", "threading", f"{ROOT}.ledger.node", f"{ROOT}.ledger.batch_driver"}
    for core in ("ledger/batcher.py", "ledger/batch_actions.py", "ledger/recovery.py", "ledger/transfer_plan.py")
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[str]:
    """Absolute names of the modules ``path`` imports (``from a import b`` counts ``a``, or ``a.b`` for ``from .``)."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if node.module is None:  # from . import x: x may be a module
                out += [f"{base}.{alias.name}" for alias in node.names]
            elif base != "__future__":
                out.append(base)
    return out


def layer_of(module: str) -> str | None:
    """The layer a ``bcsfl_flower`` module belongs to: its folder, or the shared module itself."""
    parts = module.split(".")
    return parts[1] if parts[0] == ROOT and len(parts) > 1 else None


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def crossings(layer: str) -> list[str]:
    """Every import of ``layer`` its walls forbid, as ``file: module (why)``."""
    folder = PACKAGE / layer
    files = sorted(folder.rglob("*.py")) if folder.is_dir() else [PACKAGE / f"{layer}.py"]
    assert files and all(f.is_file() for f in files), f"no module for layer {layer}"
    bad = []
    for path in files:
        where = path.relative_to(REPO_ROOT)
        for module in imports_of(path):
            target = layer_of(module)
            if module == ROOT or target is not None:
                if target != layer and target not in MAY_IMPORT[layer]:
                    bad.append(f"{where}: {module} (not among {layer}'s allowed {sorted(MAY_IMPORT[layer])})")
            elif any(within(module, w) for w in MUST_NOT_IMPORT.get(layer, ())):
                bad.append(f"{where}: {module} (outside the {layer} wall)")
            elif layer in STDLIB_ONLY and module.split(".")[0] not in sys.stdlib_module_names:
                bad.append(f"{where}: {module} (not the standard library)")
    return bad


@pytest.mark.parametrize("layer", sorted(MAY_IMPORT))
def test_layer_imports_stay_within_its_walls(layer):
    assert crossings(layer) == []


@pytest.mark.parametrize("core", sorted(PURE_CORES))
def test_sans_io_cores_import_no_event_loop_clock_or_driver(core):
    bad = [m for m in imports_of(PACKAGE / core) if any(within(m, w) for w in PURE_CORES[core])]
    assert bad == []


def test_the_walk_sees_relative_absolute_and_function_level_imports():
    """The resolver is not vacuous: it finds imports of each kind where they are."""
    relay = imports_of(PACKAGE / "committee" / "relay.py")
    assert "bcsfl_flower.protocol" in relay and "bcsfl_flower.committee.outcome" in relay
    assert "flwr.serverapp" in relay
    assert "bcsfl_flower.ledger" in imports_of(PACKAGE / "mod.py")  # imported inside _open
    assert "bcsfl_flower.training.privacy" in imports_of(PACKAGE / "training" / "train.py")  # inside train()


def test_every_folder_of_the_package_is_a_layer_or_a_composition():
    compositions = {"apps", "baselines"}
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders <= set(MAY_IMPORT) | compositions, folders - set(MAY_IMPORT) - compositions


def test_the_client_layer_loads_no_committee_ledger_or_training_module():
    """At run time too: importing the client's modules pulls in nothing behind its wall."""
    code = ("import sys, bcsfl_flower.client.identity, bcsfl_flower.client.signing, bcsfl_flower.protocol\n"
            "print('\\n'.join(sorted(sys.modules)))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env=env, cwd=REPO_ROOT).stdout.split()
    behind = [m for m in loaded if any(within(m, f"{ROOT}.{w}") for w in ("committee", "ledger", "training", "mod"))]
    assert behind == []
    assert "torch" not in loaded


def test_the_public_names_keep_their_import_paths():
    from bcsfl_flower import BCSFL, bcsfl_mod, make_bcsfl_mod
    from bcsfl_flower.mod import BcsflMod
    from bcsfl_flower.package import PACKAGE_KEY
    from bcsfl_flower.protocol import PACKAGE_KEY as VOCABULARY_KEY

    assert PACKAGE_KEY is VOCABULARY_KEY
    assert isinstance(make_bcsfl_mod(client_id="x"), BcsflMod) and callable(bcsfl_mod) and BCSFL.__name__ == "BCSFL"
