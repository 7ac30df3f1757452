"""The study's statistics: cells over seeds, paired differences with their t intervals, the regime's checks and
the published ordering, all computed from the run figures in ``study.json``.

``study_report.py`` renders these into ``RESULTS.md``; ``study_plots.py`` draws the plots. No I/O here.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from typing import Any

import numpy as np

Run = dict[str, Any]
HEADLINE = "point_knn"
BASELINE = "sup_only"
CEILING_LABELS = "100%"
# A run without "variant" (or with one of DEFAULT_ALIASES) was trained at the study's default precision
# (train.amp=auto: bf16 where the device has it); other variants (fp32) are checks, kept in cells apart.
DEFAULT_VARIANT = "default"
DEFAULT_ALIASES = ("bf16", "auto")
# The regime the issue asks for: a ceiling that is high enough and trained to its plateau, and a 1 % task that
# leaves room below it. Plateau: the last PLATEAU_TAIL of the ceiling run's steps add less than MAX_PLATEAU_GAIN.
MIN_CEILING = 30.0
MIN_CEILING_GAP = 10.0
MAX_PLATEAU_GAIN = 1.0
PLATEAU_TAIL = 0.2
BETTER, SAME, WORSE, ONE_SEED = "better", "not distinguishable", "worse", "one seed: no interval"
# Published range-view mIoU (range pixels, real SemanticKITTI, FIDNet) at 1 / 10 / 20 / 50 % labels: LaserMix
# paper (Kong et al., "LaserMix for Semi-Supervised LiDAR Semantic Segmentation", CVPR 2023), Table 1, range view.
# Only figures checked against that table are here: none for MeanTeacher, whose order alone is used (below).
PUBLISHED_SHARES = ("1%", "10%", "20%", "50%")
PUBLISHED = {
    "sup_only": (36.2, 52.2, 55.9, 57.2),
    "cps": (36.5, 52.3, 56.3, 57.4),
    "lasermix": (43.4, 58.8, 59.4, 61.4),
}
# The pairwise orders that paper reports at every share (a > b), which the study sets its own paired CIs against.
# A claim may name a method without figures in PUBLISHED (mean_teacher > sup_only): its order is checked all the
# same, and the report states it without numbers.
PUBLISHED_CLAIMS = (
    ("lasermix", "cps"),
    ("cps", "sup_only"),
    ("mean_teacher", "sup_only"),
    ("lasermix", "sup_only"),
)


def run_key(run: Run) -> tuple[str, str, str, int]:
    """(method, labels, variant as recorded, seed): which run of the study a record is."""
    return run["method"], run["labels"], run.get("variant", "auto"), run["seed"]


def variant_of(run: Run) -> str:
    v = run.get("variant")
    return DEFAULT_VARIANT if v in (None, "", *DEFAULT_ALIASES) else v


def default_variant(items: list[Run]) -> str:
    """The variant of the main tables: the default one if any run (or cell) has it, else the most common one."""
    variants = [variant_of(r) for r in items]
    return (
        DEFAULT_VARIANT
        if DEFAULT_VARIANT in variants or not variants
        else Counter(variants).most_common(1)[0][0]
    )


def wall_seconds(run: Run) -> float:
    """Machine time of a run over all its sittings; older records only have train and eval time."""
    return run.get("wall_seconds", run["train_seconds"] + run["eval_seconds"])


def share(labels: str) -> float:
    return float(labels.rstrip("%"))


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(runs: list[Run]) -> list[dict[str, Any]]:
    """One cell per (method, labels, variant), in the order of first appearance: mIoU mean and std in percent for
    every level, the seeds, wall times, and the per-class IoU averaged over the seeds that have the class (a class
    absent from validation stays None). Variants are never mixed in a cell."""
    cells = []
    for key in dict.fromkeys((r["method"], r["labels"], variant_of(r)) for r in runs):
        rs = [r for r in runs if (r["method"], r["labels"], variant_of(r)) == key]
        miou = {}
        for level in rs[0]["miou"]:
            values = [100 * r["miou"][level] for r in rs]
            m, s = mean_std(values)
            miou[level] = {"mean": m, "std": s, "values": values}
        per_class = {}
        for name in dict.fromkeys(n for r in rs for n in r.get("iou_point_knn", {})):
            vals = [r["iou_point_knn"][name] for r in rs if r["iou_point_knn"].get(name) is not None]
            per_class[name] = 100 * statistics.fmean(vals) if vals else None
        cells.append(
            {
                "method": key[0],
                "labels": key[1],
                "variant": key[2],
                "seeds": [r["seed"] for r in rs],
                "steps": [r["steps"] for r in rs],
                "wall_seconds": [wall_seconds(r) for r in rs],
                "miou": miou,
                "iou_point_knn": per_class,
            }
        )
    return cells


def find(
    cells: list[dict[str, Any]], method: str, labels: str, variant: str = DEFAULT_VARIANT
) -> dict | None:
    return next(
        (c for c in cells if (c["method"], c["labels"], variant_of(c)) == (method, labels, variant)),
        None,
    )


def t_quantile(df: int) -> float:
    """Two-sided 95 % quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t  # imported here: only the statistics need scipy

    return float(t.ppf(0.975, df))


def paired_difference(
    runs: list[Run],
    a: str,
    b: str,
    labels: str,
    variant: str = DEFAULT_VARIANT,
    *,
    variant_b: str | None = None,
    level: str = HEADLINE,
) -> dict[str, Any] | None:
    """``a - b`` in percent, seed by seed (runs of a seed share their labeled scans), with the 95 % confidence
    interval of the mean difference (Student's t, n - 1 degrees of freedom) and its verdict: ``better`` if the
    interval lies above 0, ``worse`` if below, else ``not distinguishable``. ``variant_b`` (default: ``variant``)
    pairs across precisions. None when no seed has both runs."""
    variant_b = variant if variant_b is None else variant_b

    def by_seed(method: str, v: str) -> dict[int, float]:
        return {
            r["seed"]: 100 * r["miou"][level]
            for r in runs
            if r["method"] == method and r["labels"] == labels and variant_of(r) == v
        }

    xa, xb = by_seed(a, variant), by_seed(b, variant_b)
    seeds = sorted(xa.keys() & xb.keys())
    if not seeds:
        return None
    diffs = [xa[s] - xb[s] for s in seeds]
    mean, std = mean_std(diffs)
    half = t_quantile(len(diffs) - 1) * std / math.sqrt(len(diffs)) if len(diffs) > 1 else None
    if half is None:
        verdict = ONE_SEED
    else:
        verdict = BETTER if mean - half > 0 else WORSE if mean + half < 0 else SAME
    return {
        "a": a, "b": b, "labels": labels, "variant": variant, "variant_b": variant_b, "seeds": seeds,
        "diffs": diffs, "mean": mean, "std": std, "half_width": half, "verdict": verdict,
    }  # fmt: skip


def curve_gain(run: Run, tail: float = PLATEAU_TAIL) -> float | None:
    """Validation mIoU (percent) that the last ``tail`` of the run's steps added: the curve's last value minus its
    value (interpolated) at ``(1 - tail) * steps``. None without a curve that covers that step."""
    curve = np.asarray(run.get("curve") or [], dtype=float).reshape(-1, 2)
    start = (1 - tail) * run.get("steps", curve[-1, 0] if len(curve) else 0)
    if len(curve) < 2 or not curve[0, 0] <= start <= curve[-1, 0]:
        return None
    return float(100 * (curve[-1, 1] - np.interp(start, curve[:, 0], curve[:, 1])))


def checks(study: dict[str, Any]) -> dict[str, Any]:
    """The regime's checks (ceiling level, its plateau, the 1 % gap under it) and the paired verdict of every
    method against sup_only at every share, all at the default precision. A check is None before its runs exist."""
    runs = study["runs"]
    v = default_variant(runs)
    cells = aggregate(runs)
    out: dict[str, Any] = {"ceiling": None, "ceiling_gap": None, "plateau": None}
    top, low = find(cells, BASELINE, CEILING_LABELS, v), find(cells, BASELINE, "1%", v)
    if top:
        value = top["miou"][HEADLINE]["mean"]
        out["ceiling"] = {"value": value, "required": MIN_CEILING, "met": value >= MIN_CEILING}
        ceiling_runs = [
            r for r in runs if (r["method"], r["labels"], variant_of(r)) == (BASELINE, CEILING_LABELS, v)
        ]
        gains = {r["seed"]: g for r in ceiling_runs if (g := curve_gain(r)) is not None}
        if gains:
            worst = max(gains.values())
            out["plateau"] = {
                "per_seed": gains,
                "mean": statistics.fmean(gains.values()),
                "required": MAX_PLATEAU_GAIN,
                "met": worst < MAX_PLATEAU_GAIN and len(gains) == len(ceiling_runs),
            }
        if low:
            gap = value - low["miou"][HEADLINE]["mean"]
            out["ceiling_gap"] = {"value": gap, "required": MIN_CEILING_GAP, "met": gap >= MIN_CEILING_GAP}
    shares = sorted({c["labels"] for c in cells if c["labels"] != CEILING_LABELS}, key=share)
    methods = [m for m in dict.fromkeys(c["method"] for c in cells) if m != BASELINE]
    out["paired"] = [
        p for s in shares for m in methods if (p := paired_difference(runs, m, BASELINE, s, v)) is not None
    ]
    return out


def ordering(study: dict[str, Any]) -> list[dict[str, Any]]:
    """Per share that both the study and the published tables have: the study's methods by mean, the published
    order of the methods with figures, the claims (a, b) that name a method without figures (their order is
    reported, their numbers are not), and each published claim (a > b) with the study's paired verdict of a - b."""
    runs = study["runs"]
    v = default_variant(runs)
    cells = [c for c in aggregate(runs) if c["variant"] == v]
    out = []
    for s in sorted({c["labels"] for c in cells if c["labels"] in PUBLISHED_SHARES}, key=share):
        here = sorted((c for c in cells if c["labels"] == s), key=lambda c: -c["miou"][HEADLINE]["mean"])
        i = PUBLISHED_SHARES.index(s)
        claims = [(a, b, paired_difference(runs, a, b, s, v)) for a, b in PUBLISHED_CLAIMS]
        out.append(
            {
                "labels": s,
                "study": [(c["method"], c["miou"][HEADLINE]["mean"]) for c in here],
                "published": sorted(((m, t[i]) for m, t in PUBLISHED.items()), key=lambda x: -x[1]),
                "unquantified": [
                    (a, b) for a, b in PUBLISHED_CLAIMS if a not in PUBLISHED or b not in PUBLISHED
                ],
                "claims": [(a, b, p) for a, b, p in claims if p is not None],
            }
        )
    return out


def missing_runs(study: dict[str, Any]) -> list[str]:
    """Runs the study still owes: ``study["missing"]`` when it lists them, else the default-precision grid of
    the methods, shares and seeds seen (every method at every share below 100 %, sup_only at 100 %)."""
    if "missing" in study:
        return list(study["missing"])
    runs = study["runs"]
    v = default_variant(runs)
    have = {(r["method"], r["labels"], r["seed"]) for r in runs if variant_of(r) == v}
    methods = list(dict.fromkeys(r["method"] for r in runs))
    shares = sorted({r["labels"] for r in runs} - {CEILING_LABELS}, key=share)
    seeds = sorted({r["seed"] for r in runs})
    grid = [(m, s) for s in shares for m in methods] + [(BASELINE, CEILING_LABELS)]
    return [f"{m} {s} seed {k}" for m, s in grid for k in seeds if (m, s, k) not in have]
