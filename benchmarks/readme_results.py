"""Write the README's results section from ``benchmarks/study.json`` and ``benchmarks/PERFORMANCE.json``.

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
from study_stats import aggregate, missing_runs, wall_seconds

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


def section(study: dict, performance: dict) -> str:
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
            f"**Performance** (`python benchmarks/run_all.py`, {performance['date']}, "
            f"{performance['total_seconds'] / 60:.1f} min on {m['processor']}, {m['cpu_count']} cores, "
            f"{m['cuda'] or 'no GPU'}; [benchmarks/PERFORMANCE.md](benchmarks/PERFORMANCE.md) adds peak memory):",
            "",
            *perf,
            END,
        ]
    )


def render_readme(readme: str, study: dict, performance: dict) -> str:
    """``readme`` with its results block rewritten from ``study`` and ``performance``."""
    if readme.count(BEGIN) != 1 or readme.count(END) != 1:
        raise ValueError(f"{README}: needs exactly one {BEGIN} ... {END} block")
    head, rest = readme.split(BEGIN)
    _, tail = rest.split(END)
    return head + section(study, performance) + tail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the README's section is stale")
    args = parser.parse_args()
    study = json.loads((HERE / "study.json").read_text())
    performance = json.loads((HERE / "PERFORMANCE.json").read_text())
    current = README.read_text()
    new = render_readme(current, study, performance)
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
