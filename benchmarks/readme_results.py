"""Write the README's results section from ``benchmarks/study.json``, ``study_cuda/study.json``, ``PERFORMANCE.json``.

No number in that section is typed by hand: it lies between ``<!-- results:begin -->`` and
``<!-- results:end -->`` and is replaced as a whole. ``--check`` only compares, and fails when the README is
stale (the test suite runs it).

    python benchmarks/readme_results.py [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from study_report import CURVES_PNG, check_lines, headline_table, ordering_lines, paired_table, steps_text
from study_stats import aggregate, missing_runs, run_key, wall_seconds

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def study_part(study: dict) -> list[str]:
    """The study's lines: headline table, paired verdicts, regime checks, published ordering, curves, wall time."""
    runs = study["runs"]
    m = study["machine"]
    where = m.get("cuda") or "a GPU" if study.get("device") == "cuda" else f"{m['cpu_count']} CPU cores"
    minutes = sum(wall_seconds(r) for r in runs) / 60
    status = []
    if study.get("complete") is False:
        missing = len(missing_runs(study))
        status = [
            "",
            "**Incomplete: the study is still running"
            + (f"; {missing} runs missing" if missing else "")
            + ".**",
        ]
    return [
        f"**Semi-supervised study** (`python benchmarks/study.py`, {study['date']}, {minutes:.1f} machine minutes "
        f"for {len(runs)} runs on {where}; regime, per-class IoU, precision check, every run and the commands in "
        f"[benchmarks/RESULTS.md](benchmarks/RESULTS.md)). Synthetic SemanticKITTI-format data, FIDNet width "
        f"{study['model']['width']} at {study['dataset']['image']}, {steps_text(runs)} per run; point-level mIoU "
        f"with kNN (official SemanticKITTI convention) on the validation sequence, mean ± std over "
        f"{len({r['seed'] for r in runs})} seeds; sup_only at 100% is the ceiling:",
        *status,
        "",
        headline_table(aggregate(runs)),
        "",
        "Each method minus sup_only of the same seed, with the 95 % confidence interval of the mean (Student's t "
        "over the seeds):",
        "",
        paired_table(study),
        "",
        *check_lines(study),
        "",
        *ordering_lines(study),
        "",
        f"![validation curves](benchmarks/{CURVES_PNG})",
    ]


def device_part(study: dict, cuda: dict | None) -> list[str]:
    """The runs of the GPU study (``benchmarks/study_cuda/``) that this study also has (same regime, cell and
    seed), side by side: what one seed gives on two devices."""
    if cuda is None or cuda.get("regime") != study.get("regime"):
        return []

    cpu = {run_key(r): r for r in study["runs"]}
    pairs = [(cpu[run_key(r)], r) for r in sorted(cuda["runs"], key=run_key) if run_key(r) in cpu]
    if not pairs:
        return []
    rows = [
        "| method | labels | seed | CPU | GPU | GPU - CPU | minutes, CPU / GPU |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for c, g in pairs:
        a, b = 100 * c["miou"]["point_knn"], 100 * g["miou"]["point_knn"]
        rows.append(
            f"| {g['method']} | {g['labels']} | {g['seed']} | {a:.1f} | {b:.1f} | {b - a:+.1f} | "
            f"{wall_seconds(c) / 60:.1f} / {wall_seconds(g) / 60:.1f} |"
        )
    worst = max(pairs, key=lambda p: abs(p[1]["miou"]["point_knn"] - p[0]["miou"]["point_knn"]))
    gap = 100 * abs(worst[1]["miou"]["point_knn"] - worst[0]["miou"]["point_knn"])
    m = cuda["machine"]
    return [
        f"**The same runs on a GPU** (`{cuda['command']}`, {cuda['date']}, {m.get('cuda')}, {cuda['jobs']} runs at "
        f"once; [benchmarks/study_cuda/RESULTS.md](benchmarks/study_cuda/RESULTS.md)): point-level mIoU with kNN of "
        f"the {len(pairs)} runs both studies hold, same regime and seed, bf16 autocast on both:",
        "",
        *rows,
        "",
        f"The largest gap is {gap:.1f} points ({worst[1]['method']} at {worst[1]['labels']}, seed {worst[1]['seed']}):"
        " the devices round differently and a run drifts, so a single run says little; the verdicts above rest on "
        "paired seeds.",
        "",
    ]


def section(study: dict, performance: dict, cuda: dict | None = None) -> str:
    """The generated markdown between the markers."""
    m = performance["machine"]
    perf = ["| stage | median ms | scans/s | vs baseline |", "|---|---:|---:|---|"]
    for r in performance["rows"]:
        vs = f"{r['ratio']:.2f}x {r['baseline']}" if "ratio" in r else "–"
        perf.append(f"| {r['name']} | {r['median_ms']:.2f} | {r['scans_per_s']:.2f} | {vs} |")
    return "\n".join(
        [
            BEGIN,
            *study_part(study),
            "",
            *device_part(study, cuda),
            f"**Performance** (`python benchmarks/run_all.py`, {performance['date']}, "
            f"{performance['total_seconds'] / 60:.1f} min on {m['processor']}, {m['cpu_count']} cores, "
            f"{m['cuda'] or 'no GPU'}; [benchmarks/PERFORMANCE.md](benchmarks/PERFORMANCE.md) adds peak memory):",
            "",
            *perf,
            END,
        ]
    )


def render_readme(readme: str, study: dict, performance: dict, cuda: dict | None = None) -> str:
    """``readme`` with its results block rewritten from ``study``, ``performance`` and the GPU study ``cuda``."""
    if readme.count(BEGIN) != 1 or readme.count(END) != 1:
        raise ValueError(f"{README}: needs exactly one {BEGIN} ... {END} block")
    head, rest = readme.split(BEGIN)
    _, tail = rest.split(END)
    return head + section(study, performance, cuda) + tail


def cuda_study() -> dict | None:
    """``benchmarks/study_cuda/study.json``, the study run on a GPU, where there is one."""
    path = HERE / "study_cuda" / "study.json"
    return json.loads(path.read_text()) if path.is_file() else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the README's section is stale")
    args = parser.parse_args()
    study = json.loads((HERE / "study.json").read_text())
    performance = json.loads((HERE / "PERFORMANCE.json").read_text())
    current = README.read_text()
    new = render_readme(current, study, performance, cuda_study())
    if args.check:
        if new != current:
            print(
                f"{README}: results section is stale; run python benchmarks/readme_results.py",
                file=sys.stderr,
            )
            return 1
        return 0
    README.write_text(new)
    print(f"updated {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
