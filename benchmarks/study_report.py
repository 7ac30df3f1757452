"""From the study's run figures to its statistics, its checks and ``RESULTS.md``.

Kept apart from ``study.py`` (which trains) so that the report can be rebuilt from ``study.json`` alone
(``python benchmarks/study_report.py``) and tested on made-up runs.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from rangecps.atomic import atomic_write

LEVELS = {"point_knn": "point, kNN", "point": "point, no kNN", "range_pixel": "range pixel"}
HEADLINE = "point_knn"
# The goals: the 1 % sup_only gap to the 100 % ceiling that makes the task hard enough, and CPS's margin
# over sup_only at 1 % beyond the seed spread.
MIN_CEILING_GAP = 3.0
MIN_CPS_MARGIN = 2.0


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (method, labels) cell, in the order of first appearance: mIoU mean and std in percent for
    every level, the seeds, and the per-class IoU averaged over seeds (classes absent from validation stay None)."""
    cells: list[dict[str, Any]] = []
    for key in dict.fromkeys((r["method"], r["labels"]) for r in runs):
        rs = [r for r in runs if (r["method"], r["labels"]) == key]
        miou = {}
        for level in rs[0]["miou"]:
            m, s = mean_std([100 * r["miou"][level] for r in rs])
            miou[level] = {"mean": m, "std": s, "values": [100 * r["miou"][level] for r in rs]}
        per_class = {}
        for name in rs[0]["iou_point_knn"]:
            vals = [r["iou_point_knn"][name] for r in rs if r["iou_point_knn"][name] is not None]
            per_class[name] = 100 * statistics.fmean(vals) if vals else None
        cells.append(
            {
                "method": key[0],
                "labels": key[1],
                "seeds": [r["seed"] for r in rs],
                "miou": miou,
                "iou_point_knn": per_class,
            }
        )
    return cells


def find(cells: list[dict[str, Any]], method: str, labels: str) -> dict[str, Any] | None:
    return next((c for c in cells if c["method"] == method and c["labels"] == labels), None)


def paired(runs: list[dict[str, Any]], method: str, labels: str) -> list[float]:
    """Per-seed headline differences ``method - sup_only`` (same seed, same labeled scans), in percent."""
    base = {
        r["seed"]: r["miou"][HEADLINE] for r in runs if r["method"] == "sup_only" and r["labels"] == labels
    }
    return [
        100 * (r["miou"][HEADLINE] - base[r["seed"]])
        for r in runs
        if r["method"] == method and r["labels"] == labels and r["seed"] in base
    ]


def checks(study: dict[str, Any]) -> dict[str, Any]:
    """The study's verdicts, computed from its cells: is the task hard enough, does CPS beat sup_only."""
    cells, runs = study["cells"], study["runs"]
    out: dict[str, Any] = {}
    low, ceiling = find(cells, "sup_only", "1%"), find(cells, "sup_only", "100%")
    if low and ceiling:
        gap = ceiling["miou"][HEADLINE]["mean"] - low["miou"][HEADLINE]["mean"]
        out["ceiling_gap"] = {"value": gap, "required": MIN_CEILING_GAP, "met": gap > MIN_CEILING_GAP}
    for labels in ("1%", "10%"):
        sup = find(cells, "sup_only", labels)
        for method in dict.fromkeys(c["method"] for c in cells if c["method"] != "sup_only"):
            cell = find(cells, method, labels)
            if not (sup and cell):
                continue
            a, b = cell["miou"][HEADLINE], sup["miou"][HEADLINE]
            diffs = paired(runs, method, labels)
            d_mean, d_std = mean_std(diffs)
            # "Beyond the seed spread": the gap between the two error bars (mean - std vs mean + std).
            margin = (a["mean"] - a["std"]) - (b["mean"] + b["std"])
            entry = {
                "difference": a["mean"] - b["mean"],
                "paired": diffs,
                "paired_mean": d_mean,
                "paired_std": d_std,
                "margin_beyond_spread": margin,
            }
            if labels == "1%" and method == "cps":
                entry |= {"required": MIN_CPS_MARGIN, "met": margin >= MIN_CPS_MARGIN}
            out[f"{method}_vs_sup_only_{labels}"] = entry
    return out


def steps_text(runs: list[dict[str, Any]]) -> str:
    """``"216-240 steps"``: the configs' epochs cover the unlabeled scans, whose number depends on the share."""
    lo, hi = min(r["steps"] for r in runs), max(r["steps"] for r in runs)
    return f"{lo} steps" if lo == hi else f"{lo}-{hi} steps"


def fmt(entry: dict[str, Any] | None) -> str:
    return "–" if entry is None else f"{entry['mean']:.1f} ± {entry['std']:.1f}"


def headline_table(cells: list[dict[str, Any]], level: str = HEADLINE) -> str:
    """Markdown table: one row per method, one column per labeled share."""
    shares = list(dict.fromkeys(c["labels"] for c in sorted(cells, key=lambda c: float(c["labels"][:-1]))))
    methods = list(dict.fromkeys(c["method"] for c in cells))
    lines = [
        "| method | " + " | ".join(f"{s} labels" for s in shares) + " |",
        "|---" * (len(shares) + 1) + "|",
    ]
    for m in methods:
        row = [fmt((find(cells, m, s) or {}).get("miou", {}).get(level)) for s in shares]
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def check_lines(study: dict[str, Any]) -> list[str]:
    c = checks(study)
    lines = []
    if "ceiling_gap" in c:
        g = c["ceiling_gap"]
        lines.append(
            f"- Task difficulty: sup_only at 100 % is {g['value']:.1f} mIoU above sup_only at 1 % "
            f"(needed: more than {g['required']:.0f}): **{'met' if g['met'] else 'not met'}**."
        )
    for key, e in c.items():
        if key == "ceiling_gap":
            continue
        method, labels = key.split("_vs_sup_only_")
        per_seed = ", ".join(f"{d:+.1f}" for d in e["paired"])
        line = (
            f"- {method} vs sup_only at {labels}: {e['difference']:+.1f} mIoU (per seed, same labeled scans: "
            f"{per_seed}; {e['paired_mean']:+.1f} ± {e['paired_std']:.1f}); the error bars are "
            f"{e['margin_beyond_spread']:+.1f} apart"
        )
        if "met" in e:
            line += f" (goal: at least +{e['required']:.0f}): **{'met' if e['met'] else 'not met'}**"
        lines.append(line + ".")
    return lines


def render(study: dict[str, Any]) -> str:
    """``RESULTS.md``: everything in it is computed from ``study``."""
    cells, runs, m = study["cells"], study["runs"], study["machine"]
    ds = study["dataset"]
    ten = [c for c in cells if c["labels"] == "10%"]
    names = [n for n in study["class_names"][1:] if any(c["iou_point_knn"].get(n) is not None for c in ten)]
    per_class = ["| class | " + " | ".join(c["method"] for c in ten) + " |", "|---" * (len(ten) + 1) + "|"]
    for n in names:
        vals = [c["iou_point_knn"].get(n) for c in ten]
        per_class.append(f"| {n} | " + " | ".join("–" if v is None else f"{v:.1f}" for v in vals) + " |")
    levels = ["| run cell | " + " | ".join(LEVELS.values()) + " |", "|---" * (len(LEVELS) + 1) + "|"]
    for c in cells:
        levels.append(
            f"| {c['method']} {c['labels']} | " + " | ".join(fmt(c["miou"].get(lv)) for lv in LEVELS) + " |"
        )
    per_run = ["| run | steps | train min | " + " | ".join(LEVELS.values()) + " |", "|---" * 6 + "|"]
    for r in runs:
        per_run.append(
            f"| {Path(r['run_dir']).name} | {r['steps']} | {r['train_seconds'] / 60:.1f} | "
            + " | ".join(f"{100 * r['miou'][lv]:.2f}" for lv in LEVELS)
            + " |"
        )
    cmds = "\n".join(c for r in runs for c in r["commands"])
    seeds = sorted({r["seed"] for r in runs})
    return f"""# Semi-supervised study on the simulator

Generated by `{study["command"]}` on {study["date"]} at revision `{study["revision"]}`: {len(runs)} runs in
{study["wall_minutes"]:.0f} minutes, {study["jobs"]} at a time with {study["threads_per_job"]} thread(s) each.
Machine: {m["processor"]}, {m["cpu_count"]} cores, {m["memory_gib"]} GiB, {m["cuda"] or "no GPU"}; torch
{m["versions"]["torch"]}, numpy {m["versions"]["numpy"]}, numba {m["versions"]["numba"]}.

Setup: the built-in synthetic SemanticKITTI-format dataset (`{ds["root"]}`: {ds["train_scans"]} training scans,
{ds["val_scans"]} validation scans of sequence 08), {ds["image"]} range images, {study["model"]["name"]} at width
{study["model"]["width"]} (the configs in `configs/synthetic/`), {steps_text(runs)} per run, seeds {seeds}. A seed
sets the initialisation, the augmentation and which scans are labeled. CPS runs are scored with net a alone.
Scores are mIoU in percent on the validation scans, mean ± sample standard deviation over the seeds.

## Point-level mIoU with kNN post-processing

{headline_table(cells)}

## Checks

{chr(10).join(check_lines(study))}

## All three levels

The range-pixel level is the number the published semi-supervised range-view tables report.

{chr(10).join(levels)}

## Per-class IoU at 10 % labels (point level, kNN, mean over seeds)

{chr(10).join(per_class)}

## Every run

{chr(10).join(per_run)}

## Commands

Each run is these two commands, from the repository root:

```
{cmds}
```
"""


def write_report(study: dict[str, Any], out: Path) -> None:
    """Write ``study.json`` and ``RESULTS.md`` into ``out`` atomically."""
    with atomic_write(out / "study.json", "w") as f:
        json.dump(study, f, indent=1)
    with atomic_write(out / "RESULTS.md", "w") as f:
        f.write(render(study))
    print(f"wrote {out / 'study.json'} and {out / 'RESULTS.md'}")


if __name__ == "__main__":  # rebuild RESULTS.md from study.json: python benchmarks/study_report.py [DIR]
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent)
    data = json.loads((folder / "study.json").read_text())
    data["cells"] = aggregate(data["runs"])
    write_report(data, folder)
