#!/usr/bin/env bash
# The project's own end-to-end check (run from the repository root, with the project installed).
# Holds when: BCSFL is a Flower Message-API Strategy; on MNIST (20 clients, Dirichlet 0.5, 30%
# sign-flipping, 10 rounds) BCS-FL ends within 3 points of clean FedAvg and at least 10 points
# above attacked FedAvg; the ledger verifies, and fails once tampered. All three runs go to a
# temporary folder: nothing in the checkout changes. About 15-20 minutes on two cores.
#
# MNIST comes from $BCSFL_DATA_DIR/mnist (a folder holding mnist/ with the four IDX files), else
# ~/.cache/bcsfl/datasets/mnist, downloaded there when online; without it: one line, exit 2.
set -u
cd "$(dirname "$0")/.."
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_TELEMETRY_ENABLED=0
python -c "
from flwr.serverapp.strategy import Strategy
from bcsfl_flower import BCSFL
assert issubclass(BCSFL, Strategy), 'BCSFL is not a flwr.serverapp.strategy.Strategy'
" || { echo "BCSFL missing or not a Message-API Strategy"; exit 1; }
MNIST=$(python -c "
import sys
from bcsfl_flower.data import dataset_dir
try: print(dataset_dir('mnist'))
except ValueError as err: sys.exit(f'check-end-to-end: {err}')
") || exit 2
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
common="--dataset mnist --data-dir $MNIST --num-clients 20 --rounds 10 --dirichlet-alpha 0.5 --seed 7"
bcsfl simulate --strategy bcsfl  $common --malicious-fraction 0.3 --attack sign-flip --ledger sqlite:///$W/l.db --out $W/b >$W/b.log 2>&1 || { echo "bcsfl run failed: $(tail -1 $W/b.log)"; exit 1; }
bcsfl simulate --strategy fedavg $common --malicious-fraction 0.3 --attack sign-flip --out $W/fa >$W/fa.log 2>&1 || { echo "fedavg attacked run failed"; exit 1; }
bcsfl simulate --strategy fedavg $common --malicious-fraction 0   --attack none      --out $W/fc >$W/fc.log 2>&1 || { echo "fedavg clean run failed"; exit 1; }
bcsfl ledger verify $W/l.db >/dev/null 2>&1 || { echo "ledger verify failed on an untouched ledger"; exit 1; }
fig=$(python - "$W" <<'PY'
import json, sqlite3, sys
w = sys.argv[1]
b, fa, fc = (json.load(open(f"{w}/{d}/metrics.json")) for d in ("b", "fa", "fc"))
bad = set(b["malicious_clients"]); r = b["rounds"]
caught = sum(len(bad & set(x["rejected"])) for x in r) / max(1, len(bad) * len(r))
honest_rej = sum(len(set(x["rejected"]) - bad) for x in r) / max(1, len(r))
print(f"bcsfl={b['final_accuracy']:.3f} fedavg_attacked={fa['final_accuracy']:.3f} fedavg_clean={fc['final_accuracy']:.3f} caught={caught:.2f} honest_rejected_per_round={honest_rej:.1f}")
ok = b["final_accuracy"] >= fc["final_accuracy"] - 0.03 and b["final_accuracy"] >= fa["final_accuracy"] + 0.10 and caught >= 0.8
sys.exit(0 if ok else 1)
PY
); ok=$?
# tamper: flip one byte of the newest block's stored text and expect verify to fail
python - "$W/l.db" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1]); done = False
tables = [t for (t,) in c.execute("select name from sqlite_master where type='table'")]
for t in sorted(tables, key=lambda t: "block" not in t.lower()):  # a block table first
    cols = [x[1] for x in c.execute(f"pragma table_info({t})")]
    for col in cols:
        row = c.execute(f"select rowid, {col} from {t} where typeof({col})='text' and length({col})>8 order by rowid desc limit 1").fetchone()
        if row and not done:
            s = row[1]; s2 = s[:4] + ("0" if s[4] != "0" else "1") + s[5:]
            c.execute(f"update {t} set {col}=? where rowid=?", (s2, row[0])); c.commit(); done = True
print("tampered" if done else "nothing to tamper")
PY
if bcsfl ledger verify $W/l.db >/dev/null 2>&1; then echo "ledger verify passed after tampering"; exit 1; fi
echo "$fig"
exit $ok
