"""The study's statistics and report, on made-up runs; and the README's results section against its sources."""

from __future__ import annotations

import json
import math

import numba
import pytest
from bench_modules import load_bench

report = load_bench("study_report")


def make_run(method: str, labels: str, seed: int, miou: float, car: float | None = 0.5) -> dict:
    return {
        "method": method,
        "labels": labels,
        "seed": seed,
        "run_dir": f"runs/study/{method}-{labels[:-1]}pct-seed{seed}",
        "steps": 10,
        "train_seconds": 60.0,
        "eval_seconds": 5.0,
        "miou": {"point_knn": miou, "point": miou - 0.01, "range_pixel": miou + 0.01},
        "iou_point_knn": {"car": car, "road": 0.9},
        "commands": [f"rangecps-train --labels {labels}", "rangecps-eval"],
    }


def make_study(sup1: list[float], cps1: list[float], ceiling: list[float]) -> dict:
    runs = [make_run("sup_only", "1%", s, v) for s, v in enumerate(sup1)]
    runs += [make_run("cps", "1%", s, v) for s, v in enumerate(cps1)]
    runs += [make_run("sup_only", "100%", s, v) for s, v in enumerate(ceiling)]
    runs += [make_run("sup_only", "10%", s, 0.3, car=None if s == 0 else 0.4) for s in range(len(sup1))]
    runs += [make_run("cps", "10%", s, 0.32) for s in range(len(sup1))]
    study = {
        "command": "python benchmarks/study.py",
        "date": "2026-01-01 00:00 UTC",
        "revision": "abc",
        "wall_minutes": 1.0,
        "jobs": 2,
        "threads_per_job": 1,
        "machine": {
            "processor": "cpu",
            "cpu_count": 2,
            "memory_gib": 8,
            "cuda": None,
            "versions": {"torch": "t", "numpy": "n", "numba": "b"},
        },
        "dataset": {"root": "data/x", "train_scans": 80, "val_scans": 20, "image": "64x512"},
        "model": {"name": "fidnet", "width": 0.125},
        "class_names": ["unlabeled", "car", "road"],
        "runs": runs,
    }
    study["cells"] = report.aggregate(runs)
    return study


def test_aggregate_gives_percent_mean_and_sample_std_per_cell() -> None:
    study = make_study([0.10, 0.12, 0.14], [0.15, 0.16, 0.20], [0.30, 0.31, 0.32])
    sup = report.find(study["cells"], "sup_only", "1%")
    assert sup["seeds"] == [0, 1, 2]
    assert sup["miou"]["point_knn"]["mean"] == pytest.approx(12.0)
    assert sup["miou"]["point_knn"]["std"] == pytest.approx(2.0)
    assert sup["miou"]["range_pixel"]["mean"] == pytest.approx(13.0)
    # A class absent from one seed's validation is averaged over the seeds that have it.
    ten = report.find(study["cells"], "sup_only", "10%")
    assert ten["iou_point_knn"]["car"] == pytest.approx(40.0)


def test_checks_pair_runs_by_seed_and_measure_the_gap_between_error_bars() -> None:
    study = make_study([0.10, 0.12, 0.14], [0.15, 0.16, 0.20], [0.30, 0.31, 0.32])
    checks = report.checks(study)
    assert checks["ceiling_gap"]["value"] == pytest.approx(19.0)
    assert checks["ceiling_gap"]["met"]
    cps = checks["cps_vs_sup_only_1%"]
    assert cps["paired"] == pytest.approx([5.0, 4.0, 6.0])
    # cps 17.0 +- 2.65, sup_only 12.0 +- 2.0: the bars are 5 - 4.65 apart, short of the goal of 2.
    assert cps["margin_beyond_spread"] == pytest.approx(5.0 - math.sqrt(7) - 2.0)
    assert not cps["met"]

    easy = report.checks(make_study([0.30, 0.30, 0.30], [0.40, 0.40, 0.40], [0.31, 0.32, 0.33]))
    assert not easy["ceiling_gap"]["met"]
    assert easy["cps_vs_sup_only_1%"]["met"]


def test_render_states_the_table_verdicts_and_commands() -> None:
    text = report.render(make_study([0.10, 0.12, 0.14], [0.15, 0.16, 0.20], [0.30, 0.31, 0.32]))
    assert "| sup_only | 12.0 ± 2.0 | 30.0 ± 0.0 | 31.0 ± 1.0 |" in text
    assert "| cps | 17.0 ± 2.6 | 32.0 ± 0.0 | – |" in text
    assert "**not met**" in text and "**met**" in text
    assert "rangecps-train --labels 1%" in text


def test_readme_results_section_is_generated_from_the_committed_results() -> None:
    # Numbers in the README's results section come from study.json and PERFORMANCE.json, never by hand.
    readme_results = load_bench("readme_results")
    readme = readme_results.README.read_text()
    study = json.loads((readme_results.HERE / "study.json").read_text())
    performance = json.loads((readme_results.HERE / "PERFORMANCE.json").read_text())
    assert readme_results.render_readme(readme, study, performance) == readme
    assert len({r["seed"] for r in study["runs"]}) == 3
    assert {(r["method"], r["labels"]) for r in study["runs"]} == {
        (m, lab) for m in ("sup_only", "cps", "cps_lasermix") for lab in ("1%", "10%")
    } | {("sup_only", "100%")}


def test_run_all_rows_and_one_real_stage(capsys: pytest.CaptureFixture[str]) -> None:
    run_all = load_bench("run_all")
    r = run_all.row("x", [2.0, 4.0, 3.0], scans=2, baseline="b", baseline_ms=[30.0, 30.0])
    assert r["median_ms"] == 3.0 and r["scans_per_s"] == pytest.approx(2000 / 3) and r["ratio"] == 10.0
    threads = numba.get_num_threads()
    try:
        run_all.run_stage("projection")  # a child process's job: it pins numba to one thread
    finally:
        numba.set_num_threads(threads)
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rows[0]["stage"] == "projection" and rows[0]["ratio"] > 1.0 and rows[0]["peak_rss_mib"] > 0
    assert "| projection" in run_all.table(rows)
