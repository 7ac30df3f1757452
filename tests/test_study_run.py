"""``benchmarks/study.py --quick`` end to end: paired runs trained, evaluated and recorded; a rerun skips them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

STUDY = Path(__file__).resolve().parents[1] / "benchmarks" / "study.py"


def run_study(work: Path, out: Path) -> str:
    done = subprocess.run(
        [sys.executable, str(STUDY), "--quick", "--work", str(work), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def test_quick_study_records_paired_runs_and_a_rerun_skips_them(tmp_path: Path) -> None:
    work, out = tmp_path / "runs", tmp_path / "report"
    first = run_study(work, out)
    assert "0 of 2 runs already recorded" in first
    study = json.loads((out / "study.json").read_text())
    assert study["complete"] and study["regime"]["max_steps"] == 4
    runs = {r["method"]: r for r in study["runs"]}
    assert set(runs) == {"sup_only", "cps"}
    for r in runs.values():
        assert r["labels"] == "1%" and r["seed"] == 0 and r["steps"] == 4
        assert [s for s, _ in r["curve"]] == [2, 4]  # validation every 2 steps
        assert 0.0 <= r["miou"]["point_knn"] <= 1.0 and r["wall_seconds"] > 0
        assert r["precision"]["amp"] in ("bfloat16", "off")
    # Paired: the two methods of a seed trained on the same labeled scans.
    labeled = {
        m: (work / Path(r["run_dir"]).name / "splits" / "labeled.txt").read_text() for m, r in runs.items()
    }
    assert labeled["sup_only"] == labeled["cps"]
    assert (out / "RESULTS.md").is_file()

    stamp = (work / "cps-1pct-seed0" / "last.pt").stat().st_mtime_ns
    second = run_study(work, out)
    assert "2 of 2 runs already recorded" in second
    assert (work / "cps-1pct-seed0" / "last.pt").stat().st_mtime_ns == stamp
    assert json.loads((out / "study.json").read_text())["runs"] == study["runs"]

    # Another regime into the same report is refused in one line, before any training, and records nothing.
    other = subprocess.run(
        [sys.executable, str(STUDY), "--quick", "--model-width", "0.25", "--work", str(tmp_path / "w2"),
         "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert "holds runs of another regime (model_width differ)" in other.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "w2").exists()
    assert json.loads((out / "study.json").read_text())["runs"] == study["runs"]
