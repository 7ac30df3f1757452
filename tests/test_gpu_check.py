"""``benchmarks/gpu_check.py --dry-run``: the GPU check's own code on the CPU (the small size), so that the one
command a lent GPU gets is known to run before the GPU is there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from rangecps.methods import METHODS

GPU_CHECK = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_dry_run_times_every_method_and_the_cps_step(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [sys.executable, str(GPU_CHECK), "--dry-run", "--parts", "train", "methods", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["dry_run"] and result["status"] == "ok" and set(result["parts"]) == {"train", "methods"}
    assert result["parts"]["train"]["step_s"] > 0
    methods = result["parts"]["methods"]
    assert set(methods["steps"]) == {*METHODS, "sup_only at batch 2"} and methods["out_of_memory"] == {}
    steps = methods["steps"]
    assert steps["sup_only"]["vs_sup_only"] == 1.0
    # Two nets on labeled and unlabeled scans cost more than one net on labeled scans alone.
    assert steps["cps"]["step_s"] > steps["sup_only"]["step_s"]
    assert steps["cps"]["trained_nets"] == 2 and steps["sup_only"]["trained_nets"] == 1
    assert "cps_lasermix step, fidnet width 0.125, 64x512, batch 1:" in done.stdout


def test_dry_run_times_test_time_augmentation(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [sys.executable, str(GPU_CHECK), "--dry-run", "--parts", "tta", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    sizes = json.loads(out.read_text())["parts"]["tta"]["sizes"]
    assert set(sizes) == {"small", "frnet-small"}
    for r in sizes.values():  # four views cost more than one pass, and change some labels of a random net
        assert r["views"] == 4 and r["tta_ms"] > r["plain_ms"] > 0 and r["labels_changed_share"] > 0
