#!/usr/bin/env bash
# The project's own check of the chain's write authority (run with the project installed; needs
# no data, about a minute). Black-box checks against a live 4-node ledger cluster:
# writes without authority are refused and change nothing. Builds its forged block with
# bcsfl_flower.ledger.build_block(head, data, key) and bcsfl_flower.crypto.SigningKey.generate():
# keep those two names. Then runs tests/security. Exit 0 when everything holds.
set -u
cd "$(dirname "$0")/.."
[ -d tests/security ] || { echo "no tests/security"; exit 1; }
dir=$(mktemp -d); port=$((21000 + RANDOM % 2000))
bcsfl ledger up --nodes 4 --base-port "$port" --dir "$dir/cluster" >"$dir/up.log" 2>&1 &
up=$!
trap 'kill $up 2>/dev/null; wait $up 2>/dev/null; rm -rf "$dir"' EXIT
python3 - "$port" <<'PY'
import json, os, sys, time
import httpx
from bcsfl_flower.crypto import SigningKey
from bcsfl_flower.ledger import Block, build_block
a, b = f"http://127.0.0.1:{sys.argv[1]}", f"http://127.0.0.1:{int(sys.argv[1]) + 1}"
c = httpx.Client(timeout=30)
for _ in range(120):
    try:
        if all(c.get(f"{u}/health").status_code == 200 for u in (a, b)): break
    except httpx.HTTPError: pass
    time.sleep(1)
else: print("cluster did not come up"); sys.exit(1)
fails = []
def refused(label, send):
    try:
        r = send()
    except httpx.HTTPError as e:
        print(f"{label}: no answer ({type(e).__name__})"); fails.append(label); return
    ok = 400 <= r.status_code < 500
    print(f"{label}: HTTP {r.status_code} {'refused' if ok else 'ACCEPTED'} {r.text[:120]}")
    if not ok: fails.append(label)
before = c.get(f"{b}/blocks/latest").json()
refused("identity without enrolment signature", lambda: c.post(
    f"{a}/identities", json={"client_id": "sybil-1", "public_key": SigningKey.generate().public_hex}))
mallory = SigningKey.generate()
head = Block.from_json(c.get(f"{a}/blocks/latest").json())
model = (head.data or {}).get("model-params") if isinstance(head.data, dict) else None
forged = {"round": 99, "transactions": [], "stakes": {"mallory": 1e9}, "accepted": ["mallory"], "identities": {}}
if model: forged["model-params"] = model  # a model the ledger already holds: only authority is in question
blk = build_block(head, forged, mallory)
refused("block signed by an unknown key, no certificate", lambda: c.post(
    f"{a}/blocks", content=json.dumps(blk.to_json()), headers={"content-type": "application/json"}))
refused("16 MiB model from nobody", lambda: c.post(
    f"{a}/models", content=os.urandom(16 << 20), headers={"content-type": "application/octet-stream"}))
time.sleep(3)
after = c.get(f"{b}/blocks/latest").json()
stakes = c.get(f"{b}/stakes").json()
if after != before or "mallory" in json.dumps(stakes):
    print("chain or stakes changed on another node"); fails.append("state changed")
print("unauthorised writes accepted:", len(fails))
sys.exit(1 if fails else 0)
PY
rc=$?
[ $rc -eq 0 ] || exit 1
out=$(python -m pytest -q tests/security 2>&1 | tail -3); echo "$out"
echo "$out" | grep -qE "[0-9]+ passed" && ! echo "$out" | grep -qE "failed|error" || exit 1
n=$(echo "$out" | grep -oE "[0-9]+ passed" | grep -oE "[0-9]+")
[ "$n" -ge 9 ] || { echo "tests/security has $n passing tests, want one per attack (>= 9)"; exit 1; }
echo "security: cluster refused every unauthorised write; tests/security $n passed"
