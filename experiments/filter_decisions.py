"""What the filter saw: honest and malicious updates' cosines and norms, read from run folders.

    python -m experiments.filter_decisions runs/robustness/fashion-mnist_a0.1_*
    python -m experiments.filter_decisions RUN_DIR... --floors=-0.05,-0.03,0,0.0139 --late 7

Each BCS-FL round of a ``bcsfl simulate --out`` folder records every client's decision
(``metrics.json``: cosine to the filter's reference, norm, root-loss change, reason), and
the run names its malicious clients. For each folder this prints, for honest and
malicious client-rounds apart: how many were kept; cosine percentiles over all rounds
and from round ``--late`` on (late rounds are where honest updates point nearly
sideways); the norm over the round's median; why honest ones were rejected; and, for
each candidate cosine floor, how many of each would lie at or under it.

The cosines are those of the run's own reference: a filter with another floor keeps
other anchors and so scores against another median, so "under a floor" is a first
reading of what that floor would do, not a replay.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ClientRound", "load", "main", "summarise"]

DEFAULT_FLOORS = (-0.05, -0.03, -0.01, 0.0, 0.0139)


@dataclass(frozen=True)
class ClientRound:
    """One client's decision in one round."""

    round: int
    malicious: bool
    cosine: float
    norm_ratio: float  # norm / the round's median norm
    kept: bool
    reason: str


def load(run_dir: Path) -> list[ClientRound]:
    """The client-rounds a run folder's ``metrics.json`` records (rounds without decisions skipped)."""
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    malicious = set(metrics.get("malicious_clients") or [])
    out = []
    for rnd in metrics.get("rounds", []):
        decisions = [d for d in rnd.get("decisions") or [] if d.get("cosine") is not None and d.get("norm") is not None]
        if not decisions:
            continue
        median = float(np.median([d["norm"] for d in decisions])) or 1.0
        out.extend(ClientRound(int(rnd["round"]), d["client_id"] in malicious, float(d["cosine"]),
                               float(d["norm"]) / median, bool(d["kept"]), str(d.get("reason", "")))
                   for d in decisions)
    return out


def _reason_kind(reason: str) -> str:
    words = reason.split()
    return " ".join(words[:2]) if words and words[0] == "worst" else (words[0] if words else "?")


def summarise(rows: list[ClientRound], floors: tuple[float, ...] = DEFAULT_FLOORS, late: int = 7) -> list[str]:
    """Lines describing ``rows``: one block for honest, one for malicious client-rounds."""
    lines = []
    for label, malicious in (("honest", False), ("malicious", True)):
        part = [r for r in rows if r.malicious == malicious]
        if not part:
            continue
        cos = np.array([r.cosine for r in part])
        late_cos = np.array([r.cosine for r in part if r.round >= late]) if any(r.round >= late for r in part) else cos
        ratio = np.array([r.norm_ratio for r in part])
        kept = sum(r.kept for r in part)
        lines.append(f"  {label:9s} {len(part):4d} client-rounds, kept {kept} ({kept / len(part):.1%}); cosine "
                     f"p5 {np.percentile(cos, 5):+.3f} median {np.median(cos):+.3f} p95 {np.percentile(cos, 95):+.3f}, "
                     f"from round {late} p5 {np.percentile(late_cos, 5):+.3f} min {late_cos.min():+.3f}; "
                     f"norm/median p50 {np.median(ratio):.2f} p95 {np.percentile(ratio, 95):.2f}")
        rejected = Counter(_reason_kind(r.reason) for r in part if not r.kept)
        if rejected:
            lines.append(f"  {'':9s} rejected by: " + ", ".join(f"{k} {v}" for k, v in rejected.most_common()))
        under = ", ".join(f"<= {f:+.4f}: {int((cos <= f).sum())}" for f in floors)
        lines.append(f"  {'':9s} cosine {under}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders (each holding a metrics.json)")
    p.add_argument("--floors", default=",".join(map(str, DEFAULT_FLOORS)),
                   help="candidate cosine floors, comma-separated")
    p.add_argument("--late", type=int, default=7, help="first round counted as late")
    a = p.parse_args(argv)
    floors = tuple(float(x) for x in a.floors.split(",") if x.strip())
    found = 0
    for run in a.runs:
        path = Path(run)
        if not (path / "metrics.json").is_file():
            continue
        rows = load(path)
        if not rows:
            continue
        found += 1
        print(path.name)
        print("\n".join(summarise(rows, floors, a.late)))
    if not found:
        print("no run folder with filter decisions among the arguments", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
