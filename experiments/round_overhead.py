"""One BCS-FL round on the server, against FedAvg on the same replies: seconds, encodings, hashes.

    python -m experiments.round_overhead                        # digits MLP, 20 and 100 clients, 3 rounds
    python -m experiments.round_overhead --quick                # 20 and 100 clients, 1 round (acceptance check)
    python -m experiments.round_overhead --clients 20,100 --rounds 5 --dataset mnist

No Flower loop and no training: the script builds the round's signed replies itself (each
client's update is the global model plus a shared direction plus noise, float32, signed
with its enrolled key), *before* any clock or profiler starts, since signing is client-side
work. Then, per round, it times with ``time.perf_counter``:

- ``bcsfl_flower.BCSFL.aggregate_train`` on a memory ledger with the committee in process
  (admit and verify the replies, store and pool them on the ledger, the committee's verify
  of the pool, the filter, PBFT agreement, the certificate check and the commit), and
- ``flwr.serverapp.strategy.FedAvg.aggregate_train`` on the very same reply messages,

after one untimed warm-up round of each, with a ``gc.collect()`` before each timed call
(without it the previous round's garbage lands in whichever call comes next, and FedAvg's
100-client time swung between 0.02 and 0.1 s). ``ratio`` is BCS-FL's mean seconds per round over
FedAvg's, both measured in this run. The next round's global model is the one BCS-FL
committed. BCS-FL's own stage timings (``strategy.rounds[-1]["stages"]``) are printed too.

Then one more BCS-FL round runs under ``cProfile`` (not timed) to count, per update
(count / number of clients):

- encodings: calls of ``canonical_bytes`` and ``numpy_to_arrays`` in
  ``bcsfl_flower/package.py`` (tensors serialised to bytes / to an ArrayRecord);
- decodings (reported, not in the acceptance line): ``arrays_to_numpy`` and
  ``parse_canonical_bytes`` in the same module;
- hashes of an update: every loaded ``bcsfl_flower`` module that imported ``hashlib``
  gets a counting shim in its place for that round (restored afterwards); a
  ``sha256(data)`` call counts when ``len(data)`` is at least half the model's canonical
  size and ``data`` is binary (canonical model bytes, or any bytes that are not ASCII).
  Update-sized ASCII text (the JSON of round statements, certificates and block bodies,
  which with 100 clients outgrows half of the digits model's 19 kB) is listed apart and
  not counted: it grows with the number of clients, not with the model. The shim covers
  ``crypto.sha256_hex`` (through which ``package.model_hash``, ``committee/verify.py``,
  ``committee/coordinator.py`` and the ledgers' ``put_model`` in ``ledger/memory.py``,
  ``ledger/sqlite.py`` and ``ledger/remote.py`` hash model bytes) and
  ``crypto.check_signature``, plus the direct ``hashlib.sha256`` calls in
  ``consensus/messages.py``, ``federation/certificate.py``, ``federation/stake.py`` and
  ``ledger/upload.py``. No ``bcsfl_flower`` module imports ``sha256`` from ``hashlib`` by
  name. Incremental ``sha256().update(big)`` is not counted (only ``consensus/simnet.py``
  does that, and it is not on this path).

The counts include the round's own candidate, spread over the N clients: per round, not
per client, the coordinator encodes and hashes it once (the commit stores those bytes under
that hash), and ``aggregate_train`` turns it into the returned ArrayRecord
(``numpy_to_arrays``). So at N clients a count is the per-client cost plus (per-round
cost) / N. Calls made by this script itself (decoding the returned model for the next
round) are left out. The breakdown by calling function is printed so that a count above
the target can be traced.

The last line is ``clients=N ratio=R encodings_per_update=E hashes_per_update=H`` for the
last (largest) client count; ``/work/shared/acceptance/round-pipeline.sh`` reads it.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import logging
import math
import os
import pstats
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from statistics import mean

import numpy as np

from . import common

ENCODERS = ("canonical_bytes", "numpy_to_arrays")
DECODERS = ("arrays_to_numpy", "parse_canonical_bytes")
PACKAGE_FILE = os.path.join("bcsfl_flower", "package.py")


# ----------------------------------------------------------------------------- the round

def model_tensors(dataset: str, seed: int = 0) -> dict[str, np.ndarray]:
    """The dataset's model (:func:`bcsfl_flower.models.build_model`) as named float32 numpy arrays."""
    from bcsfl_flower.models import build_model

    state = build_model(dataset, seed=seed).state_dict()
    return {k: v.detach().numpy().astype(np.float32).copy() for k, v in state.items()}


class Federation:
    """A BCSFL on a memory ledger with a charter and ``clients`` enrolled, their keys in ``workdir/keys``."""

    def __init__(self, workdir: Path, num_clients: int, global_tensors: dict[str, np.ndarray]) -> None:
        from bcsfl_flower import BCSFL
        from bcsfl_flower.crypto import SigningKey
        from bcsfl_flower.keys import key_path
        from bcsfl_flower.ledger.replay import make_enrolment

        key_dir = workdir / "keys"
        authority = SigningKey.from_seed(b"enrolment-authority")
        self.strategy = BCSFL(ledger="memory", key_dir=str(key_dir), enrolment_key=authority, fraction_evaluate=0.0)
        self.strategy.bootstrap(global_tensors)  # installs the charter
        self.clients = [f"client-{i}" for i in range(num_clients)]
        self.keys = {}
        for cid in self.clients:
            self.keys[cid] = SigningKey.load_or_create(key_path(key_dir, cid))
            self.strategy.ledger.register_identity(make_enrolment(authority, cid, self.keys[cid].public_hex))

    def replies(self, global_tensors: dict[str, np.ndarray], server_round: int, seed: int) -> list:
        """Each client's signed train reply for ``server_round`` (client-side work: not timed)."""
        from flwr.app import Message, Metadata, MetricRecord, RecordDict

        from bcsfl_flower.package import PACKAGE_KEY, ModelPackage, numpy_to_arrays

        rng = np.random.default_rng([seed, server_round])
        direction = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in global_tensors.items()}
        out = []
        for i, cid in enumerate(self.clients):
            local = {k: (v + 0.01 * (direction[k] + 0.5 * rng.normal(size=v.shape))).astype(np.float32)
                     for k, v in global_tensors.items()}
            metric_record = MetricRecord({"num-examples": 100, "train_loss": 1.0})
            package = ModelPackage.create(self.keys[cid], local, client_id=cid, server_round=server_round,
                                          num_examples=100, metrics={"metrics": dict(metric_record)})
            content = RecordDict({"arrays": numpy_to_arrays(local), "metrics": metric_record,
                                  PACKAGE_KEY: package.to_record()})
            meta = Metadata(run_id=1, message_id=f"m{i}", src_node_id=i + 1, dst_node_id=0,
                            reply_to_message_id="instr", group_id=str(server_round), created_at=time.time(),
                            ttl=3600.0, message_type="train")
            out.append(Message(metadata=meta, content=content))
        return out

    def round(self, global_tensors: dict[str, np.ndarray], server_round: int, replies: list):
        """One BCS-FL round; returns (seconds of aggregate_train, the committed model, the round's record)."""
        from bcsfl_flower.package import arrays_to_numpy

        self.strategy.bootstrap(global_tensors)
        gc.collect()  # no collection of the previous round's garbage inside the clock
        t0 = time.perf_counter()
        arrays, _ = self.strategy.aggregate_train(server_round, replies)
        seconds = time.perf_counter() - t0
        record = self.strategy.rounds[-1]
        if arrays is None or not record.get("committed"):
            raise RuntimeError(f"BCS-FL round {server_round} not committed: {record.get('reason')}")
        if len(record["accepted"]) != len(self.clients):
            raise RuntimeError(f"BCS-FL round {server_round} kept {len(record['accepted'])} of {len(self.clients)} "
                               f"honest updates: {record['rejections']}")
        return seconds, arrays_to_numpy(arrays), record


def fedavg_round(strategy, server_round: int, replies: list) -> float:
    """Seconds of Flower's ``FedAvg.aggregate_train`` on ``replies``."""
    gc.collect()
    t0 = time.perf_counter()
    arrays, _ = strategy.aggregate_train(server_round, replies)
    seconds = time.perf_counter() - t0
    if arrays is None:
        raise RuntimeError(f"FedAvg round {server_round} returned no model")
    return seconds


# ---------------------------------------------------------------------------- counting

class HashCounter:
    """Stands in for ``hashlib`` in bcsfl_flower's modules; counts ``sha256`` of update-sized data by caller."""

    def __init__(self, min_bytes: int) -> None:
        from bcsfl_flower.package import canonical_bytes

        self.min_bytes = min_bytes
        self.magic = canonical_bytes({})[:8]  # how canonical model bytes start
        self.by_caller: Counter[str] = Counter()  # binary data: model bytes
        self.text_by_caller: Counter[str] = Counter()  # ASCII text (JSON statements, blocks): not an update

    def sha256(self, data=b"", **kwargs):  # noqa: D102
        if len(data) >= self.min_bytes:
            raw = bytes(data)
            if raw.startswith(self.magic) or not raw.isascii():
                self.by_caller[_caller()] += 1
            else:
                self.text_by_caller[_caller()] += 1
        return hashlib.sha256(data, **kwargs)

    def __getattr__(self, name):
        return getattr(hashlib, name)


def _caller() -> str:
    """``module.function`` of the first frame outside crypto.py's hash helpers and this file."""
    frame = sys._getframe(2)
    here = os.path.abspath(__file__)
    while frame is not None:
        path = frame.f_code.co_filename
        if os.path.abspath(path) != here and not (path.endswith(os.path.join("bcsfl_flower", "crypto.py"))
                                                  and frame.f_code.co_name == "sha256_hex"):
            return f"{_short(path)}:{frame.f_code.co_name}"
        frame = frame.f_back
    return "?"


def _short(path: str) -> str:
    i = path.rfind("bcsfl_flower")
    return path[i:] if i >= 0 else os.path.basename(path)


def _shim_hashlib(shim: HashCounter) -> list:
    """Put ``shim`` in place of ``hashlib`` in every loaded bcsfl_flower module; returns what to restore."""
    swapped = []
    for name, module in list(sys.modules.items()):
        if (name == "bcsfl_flower" or name.startswith("bcsfl_flower.")) and getattr(module, "hashlib", None) is hashlib:
            module.hashlib = shim
            swapped.append(module)
    return swapped


def count_round(fed: Federation, global_tensors, server_round: int, replies: list) -> dict:
    """Run one BCS-FL round under cProfile and the hash shim; calls of the codec functions and update-sized hashes."""
    from bcsfl_flower.package import canonical_bytes

    shim = HashCounter(len(canonical_bytes(global_tensors)) // 2)
    profile = cProfile.Profile()
    swapped = _shim_hashlib(shim)
    try:
        profile.enable()
        try:
            fed.round(global_tensors, server_round, replies)
        finally:
            profile.disable()
    finally:
        for module in swapped:
            module.hashlib = hashlib
    calls: Counter[str] = Counter()
    callers: dict[str, Counter[str]] = {}
    here = os.path.abspath(__file__)
    for (path, _line, func), (_cc, _nc, _tt, _ct, by) in pstats.Stats(profile).stats.items():
        if path.endswith(PACKAGE_FILE) and func in ENCODERS + DECODERS:
            c = callers.setdefault(func, Counter())
            for (cpath, _cline, cfunc), stat in by.items():
                if os.path.abspath(cpath) == here:  # this script decoding the returned model: not server work
                    continue
                n = stat[0] if isinstance(stat, tuple) else stat
                c[f"{_short(cpath)}:{cfunc}"] += n
                calls[func] += n
    return {"calls": calls, "callers": callers, "hashes": shim.by_caller, "text_hashes": shim.text_by_caller,
            "hashed_modules": sorted(m.__name__ for m in swapped)}


# ------------------------------------------------------------------------------ driver

def measure(num_clients: int, rounds: int, dataset: str = "digits", seed: int = 7, warmup: int = 1) -> dict:
    """Time ``rounds`` BCS-FL and FedAvg rounds at ``num_clients`` (after ``warmup``), then count one more."""
    from flwr.serverapp.strategy import FedAvg

    g = model_tensors(dataset)
    with tempfile.TemporaryDirectory(prefix="bcsfl-round-overhead-") as tmp:
        t0 = time.perf_counter()
        fed = Federation(Path(tmp), num_clients, g)
        fedavg = FedAvg(fraction_evaluate=0.0)
        setup = time.perf_counter() - t0
        bcsfl_s, fedavg_s, stages = [], [], []
        r = 0
        for i in range(warmup + rounds):
            r += 1
            replies = fed.replies(g, r, seed)
            fa = fedavg_round(fedavg, r, replies)
            bs, g, record = fed.round(g, r, replies)
            if i >= warmup:
                bcsfl_s.append(bs)
                fedavg_s.append(fa)
                stages.append(dict(record["stages"]))
        r += 1
        counted = count_round(fed, g, r, fed.replies(g, r, seed))
    calls, hashes = counted["calls"], counted["hashes"]
    out = {
        "clients": num_clients,
        "params": int(sum(v.size for v in g.values())),
        "setup_s": setup,
        "bcsfl_s": mean(bcsfl_s),
        "fedavg_s": mean(fedavg_s),
        "stages": {k: mean(s.get(k, 0.0) for s in stages) for k in stages[0]} if stages else {},
        "encodings": sum(calls[f] for f in ENCODERS) / num_clients,
        "decodings": sum(calls[f] for f in DECODERS) / num_clients,
        "hashes": sum(hashes.values()) / num_clients,
        "calls": calls,
        "callers": counted["callers"],
        "hash_callers": hashes,
        "text_hash_callers": counted["text_hashes"],
        "hashed_modules": counted["hashed_modules"],
    }
    out["ratio"] = out["bcsfl_s"] / max(out["fedavg_s"], 1e-12)
    return out


def report(m: dict) -> None:
    """Print one client count's figures and the per-function breakdown."""
    n = m["clients"]
    stages = "  ".join(f"{k} {v * 1000:.1f}ms" for k, v in m["stages"].items())
    print(f"  {n} clients: BCS-FL stages (mean): {stages}")
    for func in ENCODERS + DECODERS:
        total = m["calls"].get(func, 0)
        by = ", ".join(f"{c} {k / n:.2f}" for c, k in m["callers"].get(func, Counter()).most_common())
        print(f"  {n} clients: {func:22s} {total:4d} calls = {total / n:.2f}/update  (by caller: {by or '-'})")
    total = sum(m["hash_callers"].values())
    by = ", ".join(f"{c} {k / n:.2f}" for c, k in m["hash_callers"].most_common())
    print(f"  {n} clients: {'sha256 (update-sized)':22s} {total:4d} calls = {total / n:.2f}/update  "
          f"(by caller: {by or '-'})")
    total = sum(m["text_hash_callers"].values())
    by = ", ".join(f"{c} {k / n:.2f}" for c, k in m["text_hash_callers"].most_common())
    print(f"  {n} clients: {'sha256 (text, apart)':22s} {total:4d} calls = {total / n:.2f}/update  "
          f"(by caller: {by or '-'}; JSON as large as an update, not counted)")


def _finite(x: float) -> str:
    return f"{x:.2f}" if math.isfinite(x) else "nan"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", default="20,100", help="client counts; the last line is for the last one")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per client count (after the warm-up)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--dataset", default="digits", help="whose model (bcsfl_flower.models.build_model)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="20 and 100 clients, 1 timed round")
    a = p.parse_args(argv)
    if a.quick:
        a.clients, a.rounds = "20,100", 1
    if a.rounds < 1 or a.warmup < 0:
        p.error("--rounds must be at least 1 and --warmup at least 0")
    sizes = [int(c) for c in common.words(a.clients)]
    import flwr.serverapp.strategy  # noqa: F401 - flwr sets its logger to DEBUG on import: import first
    from bcsfl_flower.package import canonical_bytes

    logging.getLogger("flwr").setLevel(logging.ERROR)  # both log every round (and FedAvg's set-up) below it
    g = model_tensors(a.dataset)

    print(f"{a.dataset} model: {sum(v.size for v in g.values())} parameters, {len(canonical_bytes(g))} canonical "
          f"bytes; {a.warmup} warm-up + {a.rounds} timed round(s) per size; {common.machine()}")
    results = []
    for n in sizes:
        m = measure(n, a.rounds, a.dataset, a.seed, a.warmup)
        results.append(m)
        print(f"{n} clients: enrolment {m['setup_s']:.1f}s; hash shim in {', '.join(m['hashed_modules'])}")
        report(m)
    print()
    print(f"{'clients':>7} {'bcsfl s/round':>14} {'fedavg s/round':>15} {'ratio':>8} {'enc/update':>11} "
          f"{'dec/update':>11} {'hash/update':>12}")
    for m in results:
        print(f"{m['clients']:>7} {m['bcsfl_s']:>14.4f} {m['fedavg_s']:>15.4f} {m['ratio']:>8.1f} "
              f"{m['encodings']:>11.2f} {m['decodings']:>11.2f} {m['hashes']:>12.2f}")
    last = results[-1]
    print(f"clients={last['clients']} ratio={_finite(last['ratio'])} encodings_per_update={_finite(last['encodings'])} "
          f"hashes_per_update={_finite(last['hashes'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
