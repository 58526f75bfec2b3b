#!/usr/bin/env bash
# The project's own check of its committed experiment results (run from anywhere; it reads
# experiments/results only, runs no simulation and needs no data). Holds when committed results
# exist (CSV + PNG for robustness, privacy, overhead, ledger), and in the robustness CSV BCS-FL
# at 30% on MNIST (alpha 0.5) stays within 2 points of clean FedAvg under every attack and its
# worst case beats every baseline's.
cd "$(dirname "$0")/.."
ls experiments/results/*.csv >/dev/null 2>&1 || { echo "no experiments/results/*.csv"; exit 1; }
n=$(ls experiments/results/*.png 2>/dev/null | wc -l); [ "$n" -ge 4 ] || { echo "only $n plots in experiments/results"; exit 1; }
f=$(ls experiments/results/*robust*.csv 2>/dev/null | head -1); [ -n "$f" ] || { echo "no robustness CSV"; exit 1; }
python3 - "$f" <<'PY'
import csv, sys, collections
rows = list(csv.DictReader(open(sys.argv[1])))
def acc(r): return float(r.get("final_accuracy") or r.get("accuracy"))
m = [r for r in rows if r.get("dataset", "mnist").lower() == "mnist" and abs(float(r.get("alpha") or 0.5) - 0.5) < 1e-9]
clean = max(acc(r) for r in m if r["strategy"].lower() == "fedavg" and float(r.get("malicious_fraction", 0)) == 0)
worst = collections.defaultdict(lambda: 1.0)
for r in m:
    if abs(float(r.get("malicious_fraction", 0)) - 0.3) < 1e-9 and r.get("attack", "none") != "none":
        worst[r["strategy"].lower()] = min(worst[r["strategy"].lower()], acc(r))
atts = {r["attack"].lower() for r in m if r["strategy"].lower() == "bcsfl" and abs(float(r.get("malicious_fraction", 0)) - 0.3) < 1e-9 and r.get("attack", "none") != "none"}
if len(atts) < 7: print(f"bcsfl rows at 30% cover {len(atts)} attacks, want all 7: {sorted(atts)}"); sys.exit(1)
b = worst.pop("bcsfl", None)
if b is None: print("no bcsfl rows at 30%"); sys.exit(1)
others = max(worst.values()) if worst else 0
print(f"clean_fedavg={clean:.3f} bcsfl_worst={b:.3f} best_baseline_worst={others:.3f}")
sys.exit(0 if b >= clean - 0.02 and b > others else 1)
PY
