"""The study's statistics, checks, report and plots, on made-up runs; and the README's results section against its
sources."""

from __future__ import annotations

import json
import math
import sys

import numba
import pytest
from bench_modules import load_bench

stats = load_bench("study_stats")
report = load_bench("study_report")

# Student's t, two-sided 95 %, two degrees of freedom (three seeds), from a printed table.
T_975_DF2 = 4.303
BASE_1, BASE_10, CEILING = [0.20, 0.22, 0.24], [0.30, 0.31, 0.32], [0.40, 0.41, 0.42]
# Per-seed offsets from sup_only (fractions): cps and lasermix gain, mean_teacher is noise, cps_lasermix loses.
OFFSETS = {
    "sup_only": [0.0, 0.0, 0.0],
    "mean_teacher": [0.01, -0.01, 0.005],
    "cps": [0.05, 0.04, 0.06],
    "lasermix": [0.08, 0.07, 0.09],
    "cps_lasermix": [-0.05, -0.04, -0.06],
}


def curve(final: float, steps: int, tau: float) -> list[list[float]]:
    """A saturating validation curve ending at ``final``: flat at the end when ``tau`` is small against ``steps``."""
    return [[s, final * (1 - math.exp(-s / tau))] for s in range(steps // 8, steps + 1, steps // 8)]


def make_run(
    method: str,
    labels: str,
    seed: int,
    miou: float,
    *,
    variant: str | None = "bf16",
    tau: float = 100.0,
    car: float | None = 0.5,
) -> dict:
    suffix = "" if variant in (None, "bf16") else f"-{variant}"
    run = {
        "method": method,
        "labels": labels,
        "seed": seed,
        "run_dir": f"runs/study/{method}-{labels[:-1]}pct-seed{seed}{suffix}",
        "steps": 800,
        "train_seconds": 600.0,
        "eval_seconds": 6.0,
        "wall_seconds": 620.0,
        "precision": {
            "amp": "bfloat16" if variant != "fp32" else "off",
            "channels_last": True,
            "reason": "r",
        },
        "miou": {"point_knn": miou, "point": miou - 0.01, "range_pixel": miou + 0.01},
        "iou_point_knn": {"car": car, "bicycle": None, "road": 0.9},
        "curve": curve(miou + 0.01, 800, tau),
        "commands": [f"rangecps-train --labels {labels} --set train.seed={seed}", "rangecps-eval"],
    }
    if variant is not None:
        run["variant"] = variant
    return run


def make_runs(ceiling_tau: float = 100.0) -> list[dict]:
    """Five methods at 1 % and 10 %, sup_only at 100 %, three seeds; sup_only's runs lack "variant" (old
    records), which means the default precision."""
    runs = []
    for labels, base in (("1%", BASE_1), ("10%", BASE_10)):
        for method, offsets in OFFSETS.items():
            variant = None if method == "sup_only" else "bf16"
            for seed, (b, d) in enumerate(zip(base, offsets, strict=True)):
                car = None if (labels, seed) == ("10%", 0) else 0.4
                runs.append(make_run(method, labels, seed, b + d, variant=variant, car=car))
    runs += [make_run("sup_only", "100%", s, v, tau=ceiling_tau) for s, v in enumerate(CEILING)]
    return runs


def make_study(runs: list[dict] | None = None) -> dict:
    runs = make_runs() if runs is None else runs
    return {
        "command": "python benchmarks/study.py",
        "date": "2026-01-01 00:00 UTC",
        "revision": "abc",
        "wall_minutes": sum(stats.wall_seconds(r) for r in runs) / 60,
        "jobs": 2,
        "threads_per_job": 1,
        "device": "cuda",
        "machine": {
            "processor": "cpu",
            "cpu_count": 2,
            "memory_gib": 8,
            "cuda": "NVIDIA H200",
            "versions": {"torch": "t", "numpy": "n", "numba": "b"},
        },
        "regime": {"train_scans": 400, "val_scans": 40, "image": "64x512", "model_width": 0.25, "epochs": 4},
        "dataset": {"root": "data/x", "train_scans": 400, "val_scans": 40, "image": "64x512"},
        "model": {"name": "fidnet", "width": 0.25},
        "class_names": ["unlabeled", "car", "bicycle", "road"],
        "runs": runs,
        "cells": stats.aggregate(runs),
    }


def test_aggregate_gives_percent_mean_and_sample_std_per_method_labels_and_variant() -> None:
    cells = stats.aggregate(make_runs())
    sup = stats.find(cells, "sup_only", "1%")
    assert sup["variant"] == "default" and sup["seeds"] == [0, 1, 2]
    assert sup["miou"]["point_knn"]["mean"] == pytest.approx(22.0)
    assert sup["miou"]["point_knn"]["std"] == pytest.approx(2.0)
    assert sup["miou"]["range_pixel"]["mean"] == pytest.approx(23.0)
    assert len(cells) == 11
    # A class absent from one seed's validation is averaged over the seeds that have it; absent from all: None.
    ten = stats.find(cells, "sup_only", "10%")
    assert ten["iou_point_knn"]["car"] == pytest.approx(40.0) and ten["iou_point_knn"]["bicycle"] is None


def test_paired_difference_has_the_t_interval_and_the_verdicts() -> None:
    runs = make_runs()
    cps = stats.paired_difference(runs, "cps", "sup_only", "1%")
    assert cps["seeds"] == [0, 1, 2] and cps["diffs"] == pytest.approx([5.0, 4.0, 6.0])
    # Differences 5, 4, 6: mean 5, sample std 1, half-width t(0.975, 2) * 1 / sqrt(3).
    assert cps["mean"] == pytest.approx(5.0)
    assert cps["half_width"] == pytest.approx(T_975_DF2 / math.sqrt(3), rel=1e-3)
    assert cps["verdict"] == "better"
    assert stats.paired_difference(runs, "mean_teacher", "sup_only", "1%")["verdict"] == "not distinguishable"
    assert stats.paired_difference(runs, "cps_lasermix", "sup_only", "1%")["verdict"] == "worse"
    # Any two methods pair the same way: lasermix - cps is +3 on every seed.
    assert stats.paired_difference(runs, "lasermix", "cps", "1%")["mean"] == pytest.approx(3.0)
    one = stats.paired_difference([r for r in runs if r["seed"] == 0], "cps", "sup_only", "1%")
    assert one["half_width"] is None and one["verdict"] == "one seed: no interval"
    assert stats.paired_difference(runs, "cps", "sup_only", "50%") is None


def test_checks_ceiling_gap_plateau_and_verdict_per_method_and_share() -> None:
    checks = stats.checks(make_study())
    assert checks["ceiling"] == {"value": pytest.approx(41.0), "required": 30.0, "met": True}
    assert checks["ceiling_gap"]["value"] == pytest.approx(19.0) and checks["ceiling_gap"]["met"]
    assert checks["plateau"]["met"] and set(checks["plateau"]["per_seed"]) == {0, 1, 2}
    verdicts = {(p["a"], p["labels"]): p["verdict"] for p in checks["paired"]}
    assert len(verdicts) == 8
    assert verdicts[("cps", "1%")] == "better" and verdicts[("cps_lasermix", "1%")] == "worse"

    # A ceiling still climbing: its last 20 % of steps add several points.
    rising = stats.checks(make_study(make_runs(ceiling_tau=1000.0)))
    assert not rising["plateau"]["met"] and rising["plateau"]["mean"] > 1.0
    # A low ceiling close to the 1 % runs fails both the level and the gap.
    low = [r for r in make_runs() if r["labels"] != "100%"]
    low += [make_run("sup_only", "100%", s, v - 0.15) for s, v in enumerate(CEILING)]
    low_checks = stats.checks(make_study(low))
    assert not low_checks["ceiling"]["met"] and not low_checks["ceiling_gap"]["met"]


def test_curve_gain_is_the_last_fifth_of_the_steps() -> None:
    # Linear from 0 to 10 % over 100 steps: step 80 reads 8 %, so the last fifth adds 2 points.
    run = {"steps": 100, "curve": [[0, 0.0], [50, 0.05], [100, 0.10]]}
    assert stats.curve_gain(run) == pytest.approx(2.0)
    assert stats.curve_gain({"steps": 100, "curve": [[90, 0.1], [100, 0.1]]}) is None  # starts too late
    assert stats.curve_gain({"steps": 100}) is None


def test_fp32_runs_are_a_cell_apart_and_set_against_the_default() -> None:
    runs = make_runs()
    cps = [b + d for b, d in zip(BASE_1, OFFSETS["cps"], strict=True)]
    fp32 = [make_run("cps", "1%", s, v + 0.002, variant="fp32") for s, v in enumerate(cps)]
    study = make_study(runs + fp32)
    cells = stats.aggregate(study["runs"])
    assert stats.find(cells, "cps", "1%")["miou"]["point_knn"]["mean"] == pytest.approx(27.0)
    assert stats.find(cells, "cps", "1%", "fp32")["miou"]["point_knn"]["mean"] == pytest.approx(27.2)
    assert "27.2" not in report.headline_table(cells)
    assert len(stats.checks(study)["paired"]) == 8  # the main verdicts are the default precision's
    (line,) = report.precision_lines(study)
    assert (
        "Against sup_only at the default precision" in line
        and "the same verdict" in line
        and "+0.2 / +0.2 / +0.2" in line
    )

    # With sup_only in fp32 too, the fp32 verdict is paired within fp32.
    sup32 = [make_run("sup_only", "1%", s, b, variant="fp32") for s, b in enumerate(BASE_1)]
    lines = report.precision_lines(make_study(runs + fp32 + sup32))
    assert len(lines) == 2 and "Against sup_only in fp32" in lines[0]
    assert "fp32 - default of sup_only, per seed: +0.0 / +0.0 / +0.0" in lines[1]


def test_ordering_sets_the_published_claims_against_the_study() -> None:
    one, ten = stats.ordering(make_study())
    assert (one["labels"], ten["labels"]) == ("1%", "10%") and one["study"][0][0] == "lasermix"
    claims = {(a, b): p["verdict"] for a, b, p in one["claims"]}
    assert claims == {
        ("lasermix", "cps"): "better",
        ("cps", "sup_only"): "better",
        ("mean_teacher", "sup_only"): "not distinguishable",
        ("lasermix", "sup_only"): "better",
    }
    # mean_teacher has a published order above sup_only but no published figures: checked, stated without numbers.
    assert [m for m, _ in one["published"]] == ["lasermix", "cps", "sup_only"]
    assert one["unquantified"] == [("mean_teacher", "sup_only")]
    text = "\n".join(report.ordering_lines(make_study()))
    assert "lasermix > cps holds" in text and "mean_teacher > sup_only not distinguishable" in text
    assert "of 8 published claims checked, 6 hold, 2 are not distinguishable" in text
    assert (
        "orders lasermix 43.4 > cps 36.5 > sup_only 36.2, and mean_teacher above sup_only (ordering as reported; "
        "figures not reproduced here)." in text
    )
    assert "mean_teacher 37.5" not in text and "mean_teacher 53.1" not in text


def test_ordering_states_claims_without_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    # The statistics module that study_report renders from (not the copy load_bench gave this file).
    used = sys.modules[report.ordering.__module__]
    monkeypatch.setattr(used, "PUBLISHED", {"cps": (36.5, 52.3, 56.3, 57.4)})
    monkeypatch.setattr(used, "PUBLISHED_CLAIMS", (("lasermix", "cps"), ("cps_lasermix", "mean_teacher")))
    one, _ = report.ordering(make_study())
    assert one["published"] == [("cps", 36.5)]
    assert one["unquantified"] == [("lasermix", "cps"), ("cps_lasermix", "mean_teacher")]
    assert [(a, b, p["verdict"]) for a, b, p in one["claims"]] == [
        ("lasermix", "cps", "better"),
        ("cps_lasermix", "mean_teacher", "worse"),
    ]
    text = "\n".join(report.ordering_lines(make_study()))
    assert (
        "orders cps 36.5, and lasermix above cps, cps_lasermix above mean_teacher (ordering as reported; "
        "figures not reproduced here)." in text
    )
    assert "of 4 published claims checked, 2 hold, 0 are not distinguishable" in text
    monkeypatch.setattr(used, "PUBLISHED", {})
    assert "orders lasermix above cps, cps_lasermix above mean_teacher (" in report.render(make_study())


def test_render_states_tables_verdicts_checks_and_commands() -> None:
    text = report.render(make_study())
    assert "| sup_only | 22.0 ± 2.0 | 31.0 ± 1.0 | 41.0 ± 1.0 |" in text
    assert "| cps | 27.0 ± 2.6 | 36.0 ± 1.7 | – |" in text
    assert "| cps | 1% | +5.0 / +4.0 / +6.0 | +5.0 | [+2.5, +7.5] | better |" in text
    assert "| not distinguishable |" in text and "| worse |" in text
    assert text.count("**met**") == 3 and "**not met**" not in text
    assert (
        "![validation curves](study_curves.png)" in text and "| car |" in text and "| bicycle |" not in text
    )
    assert "rangecps-train --labels 1% --set train.seed=0" in text
    assert "| train_scans | 400 |" in text and "Incomplete" not in text
    # 11 runs a seed (5 methods at 1 % and 10 %, sup_only at 100 %) of 620 s each
    assert (
        f"By seed (0, 1, 2): {11 * 620 / 60:.1f} / {11 * 620 / 60:.1f} / {11 * 620 / 60:.1f} machine" in text
    )

    partial = make_study(make_runs()[1:])
    partial["complete"] = False
    head = report.render(partial).split("## Regime")[0]
    assert "Incomplete" in head and "sup_only 1% seed 0" in head


def test_older_records_without_curve_variant_or_wall_seconds_still_render() -> None:
    runs = make_runs()
    for r in runs:
        for key in ("curve", "variant", "wall_seconds", "precision"):
            r.pop(key, None)
    study = make_study(runs)
    del study["regime"]
    checks = stats.checks(study)
    assert checks["plateau"] is None and checks["ceiling"]["met"]
    assert stats.wall_seconds(runs[0]) == 606.0
    text = report.render(study)
    assert "no validation curve" in text and "| dataset train_scans | 400 |" in text


def test_write_report_writes_plots_and_is_reproducible(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    study = make_study()
    report.write_report(study, tmp_path)
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(first) == {"study.json", "RESULTS.md", "study_curves.png", "study_per_class_1pct.png"}
    for name in ("study_curves.png", "study_per_class_1pct.png"):
        assert first[name].startswith(b"\x89PNG") and len(first[name]) > 10_000
    report.write_report(json.loads(first["study.json"]), tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == first


def test_readme_results_section_is_generated_from_the_committed_results() -> None:
    # Numbers in the README's results section come from study.json and PERFORMANCE.json, never by hand.
    readme_results = load_bench("readme_results")
    study = json.loads((readme_results.HERE / "study.json").read_text())
    if "regime" not in study:
        pytest.skip("the committed study.json predates the current study format; the new study replaces it")
    from rangecps.methods import METHODS

    readme = readme_results.README.read_text()
    performance = json.loads((readme_results.HERE / "PERFORMANCE.json").read_text())
    assert readme_results.render_readme(readme, study, performance, readme_results.cuda_study()) == readme
    assert {r["method"] for r in study["runs"]} <= set(METHODS)


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
