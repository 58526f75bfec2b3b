"""``ledger up``/``ledger serve`` quota flags: one per :class:`Quotas` field, handed to every node.

The flag table's defaults must be :class:`Quotas`'s own (``--help`` shows them without
importing FastAPI); a flag beats its ``BCSFL_LEDGER_*`` variable; and a flag given to
``ledger up`` really changes what a node process enforces (a small ``--max-json-body``
gives 413, a small ``--page-size`` shorter pages).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bcsfl_flower.ledger.cluster import add_serve_args
from bcsfl_flower.ledger.quota_flags import QUOTA_FLAGS, node_quotas, quota_args
from bcsfl_flower.ledger.service import Quotas

from conftest import REPO_ROOT

from .test_cluster_cli import _free_block


def test_every_quota_has_a_flag_with_the_real_default() -> None:
    fields = {f.name: f.default for f in dataclasses.fields(Quotas)}
    assert set(QUOTA_FLAGS) == set(fields)
    for name, (flag, kind, default, _text) in QUOTA_FLAGS.items():
        assert default == fields[name] and isinstance(fields[name], kind), name
        assert flag.startswith("--")


def test_a_flag_beats_the_environment_and_up_forwards_only_what_was_given(monkeypatch: pytest.MonkeyPatch) -> None:
    p = argparse.ArgumentParser()
    add_serve_args(p)
    base = ["--id", "0", "--peers", "127.0.0.1:1", "--dir", "x"]
    monkeypatch.setenv("BCSFL_LEDGER_PAGE", "7")
    monkeypatch.setenv("BCSFL_LEDGER_WRITE_RATE", "3")
    args = p.parse_args([*base, "--page-size", "5", "--max-json-body", "2048", "--anon-rate", "0.5"])
    q = node_quotas(args)
    assert (q.page, q.max_json_body, q.anon_rate, q.write_rate) == (5, 2048, 0.5, 3.0)
    assert q.max_page == Quotas().max_page
    assert quota_args(args) == ["--max-json-body", "2048", "--page-size", "5", "--anon-rate", "0.5"]
    assert p.parse_args([*base, *quota_args(args)]) == args  # what up hands on parses back the same
    assert quota_args(p.parse_args(base)) == []
    with pytest.raises(ValueError):  # page above max_page
        node_quotas(p.parse_args([*base, "--page-size", "50", "--max-page", "10"]))


def test_ledger_up_flags_change_what_the_nodes_enforce(tmp_path: Path) -> None:
    nodes = 4
    base = _free_block(2 * nodes)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p))
    env.pop("BCSFL_LEDGER_MAX_JSON_BODY", None)
    log = open(tmp_path / "up.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "bcsfl_flower.cli", "ledger", "up", "--nodes", str(nodes),
         "--base-port", str(base), "--dir", str(tmp_path / "cluster"),
         "--max-json-body", "1024", "--page-size", "1", "--max-page", "2"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        urls = [f"http://127.0.0.1:{base + j}" for j in range(nodes)]
        deadline = time.monotonic() + 90
        while True:
            try:
                if all(not httpx.get(f"{u}/health", timeout=2).json()["recovering"] for u in urls):
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            assert proc.poll() is None, (tmp_path / "up.log").read_text()
            assert time.monotonic() < deadline, "cluster not ready"
            time.sleep(0.2)
        for url in urls:  # every node, not only the first, got the flags
            body = json.dumps({"transactions": ["z" * 2000]})
            resp = httpx.post(f"{url}/postModelUpdate", content=body, timeout=10,
                              headers={"content-type": "application/json"})
            assert resp.status_code == 413 and "max_json_body" in resp.json()["detail"], resp.text
            small = httpx.post(f"{url}/postModelUpdate", content="{}", timeout=10,
                               headers={"content-type": "application/json"})
            assert small.status_code != 413  # under the bound: refused for what it is, not its size
            page = httpx.get(f"{url}/getBlockchain", timeout=10).json()
            assert len(page["chain"]) == 1 and page["next"] == 1  # genesis, then the charter
            assert httpx.get(f"{url}/getBlockchain", params={"limit": 3}, timeout=10).status_code == 422
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
