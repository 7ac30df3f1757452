"""From the study's statistics to ``RESULTS.md``.

Kept apart from ``study.py`` (which trains) so that the report can be rebuilt from ``study.json`` alone
(``python benchmarks/study_report.py [DIR]``) and tested on made-up runs. The statistics are in ``study_stats.py``,
the plots in ``study_plots.py`` (matplotlib is imported only when they are drawn). Every number in the report is
computed from the runs.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from study_stats import (
    BASELINE,
    BETTER,
    CEILING_LABELS,
    DEFAULT_VARIANT,
    HEADLINE,
    ONE_SEED,
    PLATEAU_TAIL,
    SAME,
    WORSE,
    Run,
    aggregate,
    checks,
    default_variant,
    find,
    missing_runs,
    ordering,
    paired_difference,
    share,
    variant_of,
    wall_seconds,
)

from rangecps.atomic import atomic_write

LEVELS = {"point_knn": "point, kNN", "point": "point, no kNN", "range_pixel": "range pixel"}
VS_WORDS = {
    BETTER: f"better than {BASELINE}",
    SAME: f"not distinguishable from {BASELINE}",
    WORSE: f"worse than {BASELINE}",
    ONE_SEED: ONE_SEED,
}
CLAIM_WORDS = {BETTER: "holds", SAME: "not distinguishable", WORSE: "reversed", ONE_SEED: ONE_SEED}
CURVES_PNG, PER_CLASS_PNG = "study_curves.png", "study_per_class_1pct.png"


def signed(x: float) -> str:
    """``+1.2`` / ``-0.3``. A small negative number keeps its sign (``-0.0``: a CI bound just below 0), a float
    zero does not (``fp32 - default`` of identical runs reads ``+0.0``)."""
    return "+0.0" if abs(x) < 1e-9 else f"{x:+.1f}"


def steps_text(runs: list[Run]) -> str:
    """``"216-240 steps"``: the configs' epochs cover the unlabeled scans, whose number depends on the share."""
    lo, hi = min(r["steps"] for r in runs), max(r["steps"] for r in runs)
    return f"{lo} steps" if lo == hi else f"{lo}-{hi} steps"


def ci_text(p: dict[str, Any]) -> str:
    h = p["half_width"]
    return "–" if h is None else f"[{signed(p['mean'] - h)}, {signed(p['mean'] + h)}]"


def fmt(entry: dict[str, Any] | None) -> str:
    return "–" if entry is None else f"{entry['mean']:.1f} ± {entry['std']:.1f}"


def headline_table(cells: list[dict[str, Any]], level: str = HEADLINE) -> str:
    """Markdown table at the default precision: one row per method, one column per labeled share."""
    v = default_variant(cells)
    cells = [c for c in cells if variant_of(c) == v]
    shares = sorted({c["labels"] for c in cells}, key=share)
    head = [f"{s} labels" + (" (ceiling)" if s == CEILING_LABELS else "") for s in shares]
    lines = ["| method | " + " | ".join(head) + " |", "|---" * (len(shares) + 1) + "|"]
    for m in dict.fromkeys(c["method"] for c in cells):
        row = [fmt((find(cells, m, s, v) or {}).get("miou", {}).get(level)) for s in shares]
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def paired_table(study: dict[str, Any]) -> str:
    """Every method against sup_only, same seed: per-seed differences, their mean, 95 % CI and verdict."""
    lines = [
        f"| method | labels | per seed, - {BASELINE} | mean | 95 % CI | verdict |",
        "|---|---|---|---:|---|---|",
    ]
    for p in checks(study)["paired"]:
        per_seed = " / ".join(signed(d) for d in p["diffs"])
        lines.append(
            f"| {p['a']} | {p['labels']} | {per_seed} | {signed(p['mean'])} | {ci_text(p)} | {p['verdict']} |"
        )
    return "\n".join(lines)


def check_lines(study: dict[str, Any]) -> list[str]:
    """The regime's checks as markdown bullets, each with its number, its requirement and **met** / **not met**."""
    c = checks(study)

    def verdict(entry: dict[str, Any]) -> str:
        return "**met**" if entry["met"] else "**not met**"

    lines = []
    if (e := c["ceiling"]) is None:
        lines.append(f"- Ceiling: no {BASELINE} run at {CEILING_LABELS} yet.")
    else:
        lines.append(
            f"- Ceiling: {BASELINE} at {CEILING_LABELS} reaches {e['value']:.1f} point-level mIoU "
            f"(needed: at least {e['required']:.0f}): {verdict(e)}."
        )
    if (e := c["plateau"]) is None:
        if c["ceiling"] is not None:
            lines.append("- Plateau: no validation curve of the ceiling runs recorded.")
    else:
        seeds = sorted(e["per_seed"])
        lines.append(
            f"- Plateau: over the last {PLATEAU_TAIL:.0%} of their steps the ceiling runs' validation mIoU "
            f"(range pixel) changed by {' / '.join(signed(e['per_seed'][k]) for k in seeds)} points (seeds "
            f"{', '.join(map(str, seeds))}), {signed(e['mean'])} on average (needed: less than {e['required']:.0f} "
            f"on every seed): {verdict(e)}."
        )
    if (e := c["ceiling_gap"]) is not None:
        lines.append(
            f"- Task difficulty: {BASELINE} at 1% is {e['value']:.1f} points under the ceiling "
            f"(needed: at least {e['required']:.0f}): {verdict(e)}."
        )
    return lines


def ordering_lines(study: dict[str, Any]) -> list[str]:
    """One paragraph per share (study order, published order, each claim's fate) and an honest reading."""
    vs = {(p["a"], p["labels"]): VS_WORDS[p["verdict"]] for p in checks(study)["paired"]}
    lines, tally = [], Counter()
    for o in ordering(study):
        s = o["labels"]
        order = " > ".join(
            f"{m} {x:.1f}" + (f" ({vs[(m, s)]})" if (m, s) in vs else "") for m, x in o["study"]
        )
        ranked = " > ".join(f"{m} {x:.1f}" for m, x in o["published"])
        bare = ", ".join(f"{a} above {b}" for a, b in o["unquantified"])
        bare += " (ordering as reported; figures not reproduced here)" if bare else ""
        published = ", and ".join(x for x in (ranked, bare) if x) or "nothing at this share"
        claims = []
        for a, b, p in o["claims"]:
            word = CLAIM_WORDS[p["verdict"]]
            tally[word] += 1
            claims.append(f"{a} > {b} {word} ({signed(p['mean'])}, 95 % CI {ci_text(p)})")
        lines.append(
            f"- At {s} labels the study orders {order}; the published table (range pixels, real SemanticKITTI) "
            f"orders {published}. "
            + (
                "Published claims here: " + "; ".join(claims) + "."
                if claims
                else "No published pair was run."
            )
        )
    n = sum(tally.values())
    if n:
        regime = study.get("regime", {})
        lines.append("")
        lines.append(
            f"Reading: of {n} published claims checked, {tally['holds']} hold, {tally['not distinguishable']} are "
            f"not distinguishable from no difference with these seeds and {tally['reversed']} are reversed"
            + (f" ({tally[ONE_SEED]} have one seed only)" if tally[ONE_SEED] else "")
            + ". The published figures are range-pixel mIoU of a full-width FIDNet trained on real SemanticKITTI; "
            f"this study trains FIDNet at width {study.get('model', {}).get('width', '?')} on "
            f"{regime.get('train_scans', study.get('dataset', {}).get('train_scans', '?'))} synthetic scans for "
            f"{steps_text(study['runs'])} and scores points, so only the order of methods is comparable, not the "
            "numbers. A claim that does not hold here means the method's gain did not appear in this regime; "
            "it does not show that the published result is wrong."
        )
    return lines


def class_table(study: dict[str, Any], labels: str = "1%") -> str:
    """Per-class point-kNN IoU at ``labels`` (mean over seeds), classes present in validation only."""
    v = default_variant(study["runs"])
    cells = [c for c in aggregate(study["runs"]) if c["labels"] == labels and c["variant"] == v]
    names = [n for n in study["class_names"][1:] if any(c["iou_point_knn"].get(n) is not None for c in cells)]
    lines = ["| class | " + " | ".join(c["method"] for c in cells) + " |", "|---" * (len(cells) + 1) + "|"]
    for n in names:
        vals = [c["iou_point_knn"].get(n) for c in cells]
        lines.append(f"| {n} | " + " | ".join("–" if x is None else f"{x:.1f}" for x in vals) + " |")
    return "\n".join(lines)


def at(variant: str) -> str:
    return "at the default precision" if variant == DEFAULT_VARIANT else f"in {variant}"


def precision_text(runs: list[Run]) -> str:
    """What the runs' recorded precisions were: ``bfloat16 autocast``, ``float32`` (``amp: off``)."""
    amps = {(r.get("precision") or {}).get("amp", "not recorded") for r in runs}
    return " / ".join(sorted("float32" if a in (None, "off") else f"{a} autocast" for a in amps))


def precision_lines(study: dict[str, Any]) -> list[str]:
    """The precision-check cells (variants other than the default), each set against the default precision."""
    runs = study["runs"]
    v = default_variant(runs)
    lines = []
    for c in aggregate(runs):
        if c["variant"] == v:
            continue
        m, s, w = c["method"], c["labels"], c["variant"]
        text = f"- {m} at {s}, {w} (seeds {', '.join(map(str, c['seeds']))}): {fmt(c['miou'][HEADLINE])}."
        if m != BASELINE:
            own = any(variant_of(r) == w and (r["method"], r["labels"]) == (BASELINE, s) for r in runs)
            p = paired_difference(runs, m, BASELINE, s, w, variant_b=w if own else v)
            ref = paired_difference(runs, m, BASELINE, s, v)
            if p is not None:
                text += (
                    f" Against {BASELINE} {at(w if own else v)}: {signed(p['mean'])}, 95 % CI {ci_text(p)}, "
                    f"**{p['verdict']}**"
                )
                if ref is not None:
                    same = "the same verdict" if ref["verdict"] == p["verdict"] else "a different verdict"
                    text += f"; {at(v)} the verdict is **{ref['verdict']}**: {same}"
                text += "."
        d = paired_difference(runs, m, m, s, w, variant_b=v)
        if d is not None:
            text += (
                f" {w} - {v} of {m}, per seed: {' / '.join(signed(x) for x in d['diffs'])} "
                f"(mean {signed(d['mean'])}, 95 % CI {ci_text(d)})."
            )
        lines.append(text)
    return lines


def runs_table(runs: list[Run]) -> tuple[str, list[str]]:
    """Every run, and the distinct reasons given for the precisions used."""
    head = "| run | variant | steps | train min | eval s | wall min | precision | " + " | ".join(
        LEVELS.values()
    )
    lines, reasons = [head + " |", "|---" * 10 + "|"], {}
    for r in runs:
        p = r.get("precision") or {}
        amp = "float32" if p.get("amp") in (None, "off") else p["amp"]
        prec = amp + (", channels_last" if p.get("channels_last") else "") if p else "–"
        if p.get("reason"):
            reasons.setdefault(prec, p["reason"])
        lines.append(
            f"| {Path(r['run_dir']).name} | {variant_of(r)} | {r['steps']} | {r['train_seconds'] / 60:.1f} | "
            f"{r['eval_seconds']:.1f} | {wall_seconds(r) / 60:.1f} | {prec} | "
            + " | ".join(f"{100 * r['miou'][lv]:.2f}" if lv in r["miou"] else "–" for lv in LEVELS)
            + " |"
        )
    why = [f"- {k}: {text}" for k, text in reasons.items()]
    return "\n".join(lines), (["Why each precision:", "", *why] if why else [])


def header(study: dict[str, Any]) -> str:
    """Who made the study, where, and how much machine time it took."""
    runs, m = study["runs"], study.get("machine", {})
    ver = m.get("versions", {})
    minutes = sum(wall_seconds(r) for r in runs) / 60
    elapsed = f"; {study['elapsed_minutes']:.0f} minutes elapsed" if "elapsed_minutes" in study else ""
    seeds = sorted({r["seed"] for r in runs})
    per_seed = " / ".join(f"{sum(wall_seconds(r) for r in runs if r['seed'] == s) / 60:.1f}" for s in seeds)
    return (
        f"Generated by `{study['command']}` on {study['date']} at revision `{study['revision']}`, device "
        f"{study.get('device', 'cpu')}. Machine: {m.get('processor', '?')}, {m.get('cpu_count', '?')} cores, "
        f"{m.get('memory_gib', '?')} GiB, {m.get('cuda') or 'no GPU'}; torch {ver.get('torch', '?')}, numpy "
        f"{ver.get('numpy', '?')}, numba {ver.get('numba', '?')}.\n\nWall time: {minutes:.1f} machine minutes for "
        f"{len(runs)} runs (the sum of every run's training and evaluation over all its sittings; "
        f"{minutes / max(len(runs), 1):.1f} min per run on average), {study['jobs']} run(s) at a time with "
        f"{study['threads_per_job']} thread(s) each{elapsed}. By seed ({', '.join(map(str, seeds))}): {per_seed} "
        "machine minutes. Every run's time is in the last table."
    )


def render(study: dict[str, Any], plots: bool = True) -> str:
    """``RESULTS.md``; everything in it is computed from ``study``. ``plots=False`` when the PNGs were not made."""
    runs = study["runs"]
    cells = aggregate(runs)
    v = default_variant(runs)
    status = ""
    if study.get("complete") is False:
        missing = missing_runs(study)
        listed = f" Missing ({len(missing)}): {', '.join(missing)}." if missing else ""
        status = (
            "**Incomplete: the study is still running; the tables below cover the finished runs only.**"
            f"{listed}\n\n"
        )
    # Older studies have no "regime": their dataset and model say what they ran.
    settings = study.get("regime") or {
        **{f"dataset {k}": x for k, x in study.get("dataset", {}).items()},
        **{f"model {k}": x for k, x in study.get("model", {}).items()},
    }
    regime = ["| setting | value |", "|---|---|"] + [f"| {k} | {x} |" for k, x in settings.items()]
    levels = ["| cell | " + " | ".join(LEVELS.values()) + " | wall min per run |", "|---" * 5 + "|"]
    for c in cells:
        levels.append(
            f"| {c['method']} {c['labels']} {c['variant']} | "
            + " | ".join(fmt(c["miou"].get(lv)) for lv in LEVELS)
            + f" | {statistics.fmean(c['wall_seconds']) / 60:.1f} |"
        )
    every_run, reasons = runs_table(runs)
    precision = precision_lines(study)
    if plots:
        curves = f"![validation curves]({CURVES_PNG})"
        bars = f"![per-class IoU at 1%]({PER_CLASS_PNG})"
    else:
        curves = bars = (
            "(No plot: matplotlib is not installed; `pip install matplotlib` and rebuild the report.)"
        )
    nl = "\n"
    return f"""# Semi-supervised study on the simulator

{status}{header(study)}

## Regime

{nl.join(regime)}

Seeds {sorted({r["seed"] for r in runs})}; a seed sets the initialisation, the augmentation and which scans are
labeled, so runs of one seed share their labeled scans and differences between methods are paired by seed.

## Point-level mIoU with kNN

Official SemanticKITTI convention (semantic-kitti-api: mean over all classes, a class absent from validation
counts 0), in percent, mean ± sample standard deviation over the seeds, default precision
({precision_text([r for r in runs if variant_of(r) == v])}). sup_only at 100% is the ceiling.

{headline_table(cells)}

## Each method against sup_only

Difference to sup_only of the same seed; the 95 % confidence interval of the mean difference uses Student's t with
n − 1 degrees of freedom. Verdict: better if the interval lies above 0, worse if below, else not distinguishable.

{paired_table(study)}

## Checks

{nl.join(check_lines(study))}

## Against the published ordering

{nl.join(ordering_lines(study))}

## Validation curves

Range-pixel mIoU on the validation scans over training steps, mean over seeds with the min–max band; the dashed
curve is the ceiling (sup_only at 100%).

{curves}

## Per-class IoU at 1% labels (point level, kNN, mean over seeds)

{bars}

{class_table(study)}

## All three levels

The range-pixel level is the number the published semi-supervised range-view tables report.

{nl.join(levels)}

## Precision check

{"Runs at another precision than the default, each against the default." if precision else ""}

{nl.join(precision) or "No run at another precision."}

## Every run

{every_run}

{nl.join(reasons)}

## Commands

Each run is these commands, from the repository root:

```
{nl.join(c for r in runs for c in r["commands"])}
```
"""


def write_report(study: dict[str, Any], out: Path) -> None:
    """Write ``study.json`` (with its cells recomputed), the PNGs and ``RESULTS.md`` into ``out`` atomically."""
    study = dict(study, cells=aggregate(study["runs"]))
    out = Path(out)
    with atomic_write(out / "study.json", "w") as f:
        json.dump(study, f, indent=1)
    try:
        import study_plots  # matplotlib is optional (the vis extra)
    except ModuleNotFoundError as e:
        if e.name != "matplotlib":
            raise
        print("matplotlib is not installed: no plots", file=sys.stderr)
        plots = False
    else:
        study_plots.write_plots(study, out / CURVES_PNG, out / PER_CLASS_PNG)
        plots = True
    with atomic_write(out / "RESULTS.md", "w") as f:
        f.write(render(study, plots))
    print(f"wrote {out / 'study.json'}, {out / 'RESULTS.md'}" + (" and the plots" if plots else ""))


if __name__ == "__main__":  # rebuild the report from study.json: python benchmarks/study_report.py [DIR]
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent)
    write_report(json.loads((folder / "study.json").read_text()), folder)
