"""A second run on a ledger that already certified rounds: refused, or (resume) continued from the head."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bcsfl_flower import BCSFL
from bcsfl_flower.inprocess import run_inprocess
from bcsfl_flower.ledger import open_ledger, verify_chain
from bcsfl_flower.package import arrays_to_numpy, model_hash, parse_canonical_bytes
from bcsfl_flower.settings import RunSettings
from bcsfl_flower.simulate import simulate
from bcsfl_flower.strategy import ResumeError

from message_kit import chartered_strategy, global_model, reply, signed_content

REPO = Path(__file__).resolve().parents[2]
CLIENTS = [f"client-{i}" for i in range(5)]


def _settings(out: Path, **kw) -> RunSettings:
    return RunSettings(dataset="digits", num_clients=4, num_server_rounds=2, root_size=50,
                       bcsfl_ledger=f"sqlite:///{out / 'ledger.db'}", bcsfl_key_dir=str(out / "keys"), out=str(out),
                       **kw)


def _resumed(s: RunSettings) -> RunSettings:
    if "resume" not in {f.name for f in dataclasses.fields(RunSettings)}:
        pytest.skip("RunSettings has no resume field yet")
    return dataclasses.replace(s, resume=True)


def _chain(out: Path) -> tuple[list[int], list[str]]:
    with open_ledger(out / "ledger.db", create=False) as ledger:
        assert verify_chain(ledger).ok
        blocks = [b for b in ledger.blocks(1) if "round" in b.data]
        return [b.data["round"] for b in blocks], [b.data["model-params"] for b in blocks]


def test_a_rerun_is_refused_and_a_resumed_run_continues_from_the_head(tmp_path, monkeypatch):
    out = tmp_path / "out"
    s = _settings(out)
    first = simulate(s, "inprocess", quiet=True)
    assert first["failed_rounds"] == 0 and first["resumed_from_round"] == 0
    rounds, models = _chain(out)
    assert rounds == [1, 2] and models == [r["model_hash"] for r in first["rounds"]]
    saved = (out / "metrics.json").read_bytes()

    # Without resume: refused before anything runs, by bcsfl simulate's checks or by the ServerApp itself
    # (what `flwr run` goes through), with one line; metrics.json and the chain stay as they were.
    with pytest.raises((ValueError, ResumeError), match="already holds"):
        simulate(s, "inprocess", quiet=True)
    with pytest.raises(ResumeError) as refused:
        run_inprocess(s, quiet=True)
    message = str(refused.value)
    assert "\n" not in message and "already holds certified rounds (up to round 2)" in message
    assert "resume=true" in message and "--resume" in message and "new ledger" in message
    assert str(out / "ledger.db") in message
    assert (out / "metrics.json").read_bytes() == saved and _chain(out)[0] == [1, 2]

    # With resume: the first round trains from the head's certified model; the chain's count goes on.
    sent = []
    configure = BCSFL.configure_train

    def spy(self, server_round, arrays, config, grid):
        sent.append((server_round, model_hash(arrays_to_numpy(arrays))))
        return configure(self, server_round, arrays, config, grid)

    monkeypatch.setattr(BCSFL, "configure_train", spy)
    again = simulate(_resumed(s), "inprocess", quiet=True)
    assert sent[0] == (1, models[-1])
    rounds, models2 = _chain(out)
    assert rounds == [1, 2, 3, 4] and models2[:2] == models
    # metrics.json counts this run's rounds as Flower does (1, 2) and names the chain's round of each.
    assert [r["round"] for r in again["rounds"]] == [1, 2]
    assert [r["chain_round"] for r in again["rounds"]] == [3, 4] and again["resumed_from_round"] == 2
    assert [r["model_hash"] for r in again["rounds"]] == models2[2:] and again["failed_rounds"] == 0


def _one_round(strategy, keys, g):
    """A round of small honest steps around one direction: every update is kept."""
    rng = np.random.default_rng(0)
    direction = {k: rng.normal(size=v.shape) for k, v in g.items()}
    replies = [reply(signed_content(keys[c], {k: (g[k] + 0.05 * (direction[k] + 0.3 * rng.normal(size=v.shape)))
                                              .astype(np.float32) for k, v in g.items()},
                                    client_id=c, server_round=1, metrics={"train_loss": 1.0}), node_id=i + 1)
               for i, c in enumerate(sorted(keys))]
    strategy.bootstrap(g)
    return strategy.aggregate_train(1, replies)


def test_resume_refuses_a_head_that_is_another_model(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    g = global_model()
    first, keys, authority = chartered_strategy(tmp_path, CLIENTS, g, ledger=url)
    assert _one_round(first, keys, g)[0] is not None
    head = first.ledger.state().model
    first.ledger.close()

    other = global_model(sizes=(5, 4))
    strategy = BCSFL(ledger=url, key_dir=str(tmp_path / "keys"), enrolment_key=authority, resume=True)
    with pytest.raises(ResumeError, match=r"certifies a different model \(round 1: w\[6, 4\] where the model has "
                                          r"w\[5, 4\]\)") as err:
        strategy.start(None, arrays(other), num_rounds=1)  # refused before Flower's loop needs the grid
    assert "\n" not in str(err.value)
    # Another model without resume: the rerun refusal comes first.
    plain = BCSFL(ledger=url, key_dir=str(tmp_path / "keys"), enrolment_key=authority)
    with pytest.raises(ResumeError, match="already holds certified rounds"):
        plain.start(None, arrays(other), num_rounds=1)
    with pytest.raises(ResumeError, match="already holds certified rounds"):
        plain.bootstrap(other)  # the same for a caller that drives the rounds itself
    # With resume, a driver that bootstraps a fresh model of the right shape gets the head's.
    resumed = BCSFL(ledger=url, key_dir=str(tmp_path / "keys"), enrolment_key=authority, resume=True)
    resumed.bootstrap(global_model(seed=3))
    assert model_hash(resumed._global) == head and resumed.round_base == 1
    tensors = parse_canonical_bytes(resumed.ledger.get_model(head))
    assert resumed.head_model(g).keys() == tensors.keys()


def arrays(tensors):
    from bcsfl_flower.package import numpy_to_arrays

    return numpy_to_arrays(tensors)


INTERRUPTED = """
import signal
import sys
# Ctrl-C as a terminal delivers it: a shell without job control starts background jobs with
# SIGINT ignored, and Python then keeps ignoring it (the test would wait out 40 rounds).
signal.signal(signal.SIGINT, signal.default_int_handler)
from bcsfl_flower.settings import RunSettings
from bcsfl_flower.simulate import simulate
out = sys.argv[1]
s = RunSettings(dataset="digits", num_clients=4, num_server_rounds=40, root_size=50, out=out,
                bcsfl_ledger=f"sqlite:///{out}/ledger.db", bcsfl_key_dir=f"{out}/keys")
try:
    simulate(s, "inprocess")
except KeyboardInterrupt:
    print("[test] KeyboardInterrupt reached the caller", flush=True)
    sys.exit(130)
print("[test] the run was not interrupted", flush=True)
"""


def test_ctrl_c_reaches_the_caller_and_leaves_a_ledger_that_verifies(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "FLWR_TELEMETRY_ENABLED": "0"}
    proc = subprocess.Popen([sys.executable, "-c", INTERRUPTED, str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    lines = []
    try:
        for line in proc.stdout:  # interrupt mid-run, once a round has committed
            lines.append(line)
            if line.startswith("[bcsfl] round 2/"):
                time.sleep(0.3)
                proc.send_signal(signal.SIGINT)
                break
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = "".join(lines) + rest
    assert proc.returncode == 130 and "KeyboardInterrupt reached the caller" in log, log[-3000:]
    assert not (out / "metrics.json").exists()  # no partial metrics
    rounds, _ = _chain(out)  # verifies
    assert rounds[:2] == [1, 2]
    # and the chain resumes from where it stopped
    again = simulate(_resumed(dataclasses.replace(_settings(out), num_server_rounds=1)), "inprocess", quiet=True)
    assert again["rounds"][0]["chain_round"] == rounds[-1] + 1 and again["failed_rounds"] == 0
