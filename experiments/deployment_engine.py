"""BCS-FL on Flower's Deployment Engine: a real SuperLink, real SuperNodes, ``flwr run``.

    python -m experiments.deployment_engine    # MNIST: --data-dir, $BCSFL_DATA_DIR/mnist or the cache

Starts ``flower-superlink`` and ``--nodes`` ``flower-supernode`` processes on 127.0.0.1
(insecure mode, free ports), runs ``examples/quickstart-pytorch`` (the BCS-FL switched app)
through ``flwr run`` against them, then checks that every round committed a block and the
final model verifies on the ledger. All processes are stopped at the end. The SuperNodes
get the ledger's absolute path through node-config (``bcsfl-ledger``); past one machine
that is the URL of the ledger cluster.

Trust as in a real federation: the copy of the app runs its committee on the SuperNodes
(``BCSFL(..., committee="nodes")``, the one line changed in the copy; the ServerApp holds
no client key, so it could not sign for an in-process committee) and each SuperNode
refuses a global model the chain does not certify (``bcsfl-require-certificate``).
Admission as in a real federation: the operator's enrolment key lives only in the
ServerApp's folder (``.bcsfl/keys/enrolment.key``, which the strategy uses to install
the charter); each SuperNode has its own key and an enrolment ticket the operator
signed for it (``bcsfl ledger enrol --out`` does the same), which ``bcsfl_mod`` submits
before its first package. BCS-FL needs at least 4 nodes (a committee of 3f+1, f >= 1).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import data_dir

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, timeout: float) -> None:
    """Block until something accepts connections on 127.0.0.1:port (the SuperLink is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def _wait_for_nodes(env: dict, cwd: Path, nodes: int, timeout: float) -> None:
    """Block until ``nodes`` SuperNodes are online: a round with fewer cannot seat a committee of 4."""
    import json

    deadline = time.monotonic() + timeout
    online = 0
    while time.monotonic() < deadline:
        res = subprocess.run([_bin("flwr"), "supernode", "list", "deploy", "--format", "json"], cwd=cwd, env=env,
                             capture_output=True, text=True, timeout=60)
        try:
            online = sum(n.get("status") == "online" for n in json.loads(res.stdout).get("nodes", []))
        except ValueError:
            online = 0
        if online >= nodes:
            return
        time.sleep(1)
    raise RuntimeError(f"only {online} of {nodes} SuperNodes online after {timeout}s")


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _enrol_nodes(work: Path, nodes: int) -> None:
    """The operator's key for the ServerApp, and per node its own key and a signed enrolment ticket."""
    import json

    from bcsfl_flower.keys import ENROLMENT_KEY, enrolment_ticket_path, key_path
    from bcsfl_flower.crypto import SigningKey
    from bcsfl_flower.ledger.replay import make_enrolment

    operator = SigningKey.load_or_create(work / ".bcsfl" / "keys" / ENROLMENT_KEY)
    for i in range(nodes):
        keys = work / f"node-{i}" / ".bcsfl" / "keys"
        node_key = SigningKey.load_or_create(key_path(keys, f"client-{i}"))
        ticket = make_enrolment(operator, f"client-{i}", node_key.public_hex)
        enrolment_ticket_path(keys, f"client-{i}").write_text(json.dumps(ticket.to_json()))


def run(data_dir: str, nodes: int = 4, rounds: int = 2, workdir: Path | None = None, timeout: float = 420) -> dict:
    """Run the deployment; return a summary dict (raises RuntimeError on failure)."""
    from bcsfl_flower.ledger import open_ledger, verify_chain

    work = Path(workdir or tempfile.mkdtemp(prefix="bcsfl-deploy-"))
    app = work / "app"
    shutil.copytree(ROOT / "examples" / "quickstart-pytorch", app,
                    ignore=shutil.ignore_patterns("__pycache__", "*.db*", ".bcsfl", "final_model.pt"))
    server_app = app / "pytorchexample" / "server_app.py"
    code = server_app.read_text()
    if "BCSFL(fraction_train=fraction_train)" not in code:
        raise RuntimeError(f"{server_app} no longer builds BCSFL(fraction_train=fraction_train)")
    server_app.write_text(code.replace("BCSFL(fraction_train=fraction_train)",
                                       'BCSFL(fraction_train=fraction_train, committee="nodes")'))
    ledger_path = work / "bcsfl-ledger.db"
    link = _free_port()  # Flower 1.42 serves the Fleet, Control and Runtime APIs on one HTTP port
    env = {**os.environ, "FLWR_HOME": str(work / "flwr-home"), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    (work / "flwr-home").mkdir(parents=True, exist_ok=True)
    (work / "flwr-home" / "config.toml").write_text(
        f'[superlink]\ndefault = "deploy"\n\n[superlink.deploy]\naddress = "127.0.0.1:{link}"\ninsecure = true\n'
    )
    procs: list[subprocess.Popen] = []
    logs = []

    def start(cmd: list[str], name: str, cwd: Path) -> None:
        log = open(work / f"{name}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT))

    try:
        # The ServerApp runs in the SuperLink's working directory: BCSFL's default ledger
        # (sqlite:///bcsfl-ledger.db) lands in `work`.
        start([_bin("flower-superlink"), "--insecure", "--isolation", "subprocess",
               "--host", "127.0.0.1", "--port", str(link), "--database", str(work / "state.db")],
              "superlink", work)
        _enrol_nodes(work, nodes)
        for i in range(nodes):
            node_dir = work / f"node-{i}"
            config = (f'partition-id={i} num-partitions={nodes} bcsfl-ledger="sqlite:///{ledger_path}" '
                      'bcsfl-require-certificate="true"')
            start([_bin("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link}",
                   "--port", str(_free_port()), "--node-config", config], f"supernode-{i}", node_dir)
        _wait_for_port(link, timeout=90)
        _wait_for_nodes(env, app, nodes, timeout=120)
        started = time.perf_counter()
        res = subprocess.run(
            [_bin("flwr"), "run", ".", "deploy", "--stream",
             "--run-config", f'data-dir="{Path(data_dir).resolve()}" num-server-rounds={rounds}'],
            cwd=app, env=env, capture_output=True, text=True, timeout=timeout,
        )
        seconds = time.perf_counter() - started
        log = res.stdout + res.stderr + (work / "superlink.log").read_text()
        if not ledger_path.exists():
            raise RuntimeError(f"no ledger written; flwr run said:\n{log[-3000:]}")
        with open_ledger(ledger_path, create=False) as ledger:
            report = verify_chain(ledger)
            state = ledger.state()
            round_blocks = [b for b in ledger.blocks(1) if "round" in b.data]
            model_ok = state.model is not None and ledger.has_model(state.model)
            accepted = [sum(d["kept"] for d in b.data["decisions"]) for b in round_blocks]
            enrolled = sorted(c for c, i in state.identities.items() if i.role == "client")
        if len(round_blocks) != rounds or not report.ok or not model_ok:
            raise RuntimeError(f"{len(round_blocks)} round blocks (want {rounds}), verify: {report.summary()}\n"
                               f"{log[-3000:]}")
        return {"nodes": nodes, "rounds": rounds, "blocks": len(round_blocks), "verify": report.summary(),
                "accepted_per_round": accepted, "enrolled": enrolled, "latest_model": state.model,
                "seconds": round(seconds, 1), "workdir": str(work)}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in logs:
            log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="",
                        help="dataset folder (default $BCSFL_DATA_DIR/mnist, "
                             "else ~/.cache/bcsfl/datasets/mnist, downloaded when online)")
    parser.add_argument("--nodes", type=int, default=4, help="SuperNodes (at least 4: a committee of 3f+1)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    data = data_dir("mnist", args.data_dir)  # first: without the data, one line and exit 2
    summary = run(data, args.nodes, args.rounds)
    for k, v in summary.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
