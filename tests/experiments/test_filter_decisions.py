"""experiments.filter_decisions reads a run folder's per-round decisions and splits honest from malicious."""

from __future__ import annotations

import json
from pathlib import Path

from experiments import filter_decisions


def _decision(cid: str, cosine: float, norm: float, kept: bool, reason: str = "kept") -> dict:
    return {"client_id": cid, "kept": kept, "cosine": cosine, "norm": norm, "loss_change": None, "reason": reason}


def _run(tmp_path: Path) -> Path:
    rounds = [
        {"round": 1, "decisions": [_decision("a", 0.30, 1.0, True), _decision("b", 0.20, 1.0, True),
                                   _decision("m", -0.40, 4.0, False, "cosine -0.4000 <= 0.0139")]},
        {"round": 8, "decisions": [_decision("a", -0.02, 1.0, False, "cosine -0.0200 <= 0.0139"),
                                   _decision("b", 0.10, 2.0, True),
                                   _decision("m", 0.05, 6.0, True, "kept, clipped to 2.000")]},
        {"round": 9, "decisions": []},  # a round that recorded none (failed) is skipped
    ]
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"malicious_clients": ["m"], "rounds": rounds}))
    return run


def test_client_rounds_are_split_and_norms_taken_against_the_round_median(tmp_path: Path) -> None:
    rows = filter_decisions.load(_run(tmp_path))
    assert len(rows) == 6 and sum(r.malicious for r in rows) == 2
    late_m = next(r for r in rows if r.malicious and r.round == 8)
    assert late_m.norm_ratio == 3.0 and late_m.kept  # 6.0 over the median 2.0
    text = "\n".join(filter_decisions.summarise(rows, floors=(-0.05, 0.0), late=8))
    assert "honest       4 client-rounds, kept 3 (75.0%)" in text
    assert "malicious    2 client-rounds, kept 1 (50.0%)" in text
    assert "from round 8 p5" in text and "min -0.020" in text
    assert "rejected by: cosine 1" in text
    # honest cosines 0.3, 0.2, -0.02, 0.1: one at or under 0; malicious -0.4, 0.05: one under both floors
    assert "<= -0.0500: 0, <= +0.0000: 1" in text and "<= -0.0500: 1, <= +0.0000: 1" in text


def test_main_reads_folders_and_fails_without_any(tmp_path: Path, capsys) -> None:
    run = _run(tmp_path)
    assert filter_decisions.main([str(run), str(tmp_path / "missing")]) == 0
    assert capsys.readouterr().out.startswith("run\n")
    assert filter_decisions.main([str(tmp_path / "missing")]) == 1
