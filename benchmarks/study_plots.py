"""The study's figures: validation curves of every method, and per-class IoU at 1 % labels.

matplotlib (the ``vis`` extra) is needed here only; ``study_report`` imports this module when it writes the report.
The figures are drawn on the Agg canvas without pyplot (no global figure state, safe beside other threads), with
matplotlib's default style (a user's matplotlibrc does not change them) and no software or date in the PNG
metadata, so that the same ``study.json`` gives the same bytes.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
from matplotlib import rc_context
from matplotlib import style as mpl_style
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from study_stats import BASELINE, CEILING_LABELS, aggregate, default_variant, share, variant_of

from rangecps.atomic import atomic_write

# One colour per method, the same in both figures; methods not listed take the next free colours.
COLOURS = {"sup_only": "C0", "mean_teacher": "C1", "cps": "C2", "lasermix": "C3", "cps_lasermix": "C4"}
CEILING_COLOUR = "black"
DPI = 110


def colour(method: str, methods: list[str]) -> str:
    extra = [m for m in methods if m not in COLOURS]
    return COLOURS.get(method) or f"C{(len(COLOURS) + extra.index(method)) % 10}"


def mean_curve(runs: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Steps and the mean, min and max over runs of their validation mIoU in percent. The steps are the first
    run's; another run's curve is interpolated onto them (within its own range: it does not extrapolate)."""
    curves = [np.asarray(r["curve"], dtype=float) for r in runs if len(r.get("curve") or []) > 0]
    if not curves:
        return None
    steps = curves[0][:, 0]
    stack = np.full((len(curves), len(steps)), np.nan)
    for i, c in enumerate(curves):
        inside = (steps >= c[0, 0]) & (steps <= c[-1, 0])
        stack[i, inside] = 100 * np.interp(steps[inside], c[:, 0], c[:, 1])
    return steps, np.nanmean(stack, axis=0), np.nanmin(stack, axis=0), np.nanmax(stack, axis=0)


def png_bytes(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def write_png(fig: Figure, path: str | os.PathLike) -> None:
    """Write ``fig`` to ``path`` atomically (temporary file beside it, then rename)."""
    data = png_bytes(fig)
    with atomic_write(path, "wb") as f:
        f.write(data)


def curves_figure(study: dict[str, Any]) -> Figure:
    """One panel per labeled share below 100 %: each method's mean validation curve over seeds with its min-max
    band, and the ceiling (sup_only at 100 %) dashed in every panel."""
    runs = study["runs"]
    v = default_variant(runs)
    runs = [r for r in runs if variant_of(r) == v]
    methods = list(dict.fromkeys(r["method"] for r in runs))
    shares = sorted({r["labels"] for r in runs} - {CEILING_LABELS}, key=share) or [CEILING_LABELS]
    ceiling = mean_curve([r for r in runs if (r["method"], r["labels"]) == (BASELINE, CEILING_LABELS)])
    fig = Figure(figsize=(5.2 * len(shares), 4.0), layout="constrained")
    axes = fig.subplots(1, len(shares), sharey=True, squeeze=False)[0]
    for ax, s in zip(axes, shares, strict=True):
        for m in methods:
            curve = mean_curve([r for r in runs if (r["method"], r["labels"]) == (m, s)])
            if curve is None or s == CEILING_LABELS:
                continue
            steps, mean, lo, hi = curve
            ax.plot(steps, mean, color=colour(m, methods), label=m, linewidth=1.6)
            ax.fill_between(steps, lo, hi, color=colour(m, methods), alpha=0.18, linewidth=0)
        if ceiling is not None:
            steps, mean, lo, hi = ceiling
            label = f"{BASELINE} {CEILING_LABELS} (ceiling)"
            ax.plot(steps, mean, color=CEILING_COLOUR, linestyle="--", linewidth=1.4, label=label)
            ax.fill_between(steps, lo, hi, color=CEILING_COLOUR, alpha=0.10, linewidth=0)
        if not ax.lines:
            ax.text(0.5, 0.5, "no curve recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"{s} labels")
        ax.set_xlabel("training step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation mIoU, range pixel (%)")
    # One legend for all panels, below them, so that it never hides a curve.
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(handles), 6), fontsize="small")
    return fig


def per_class_figure(study: dict[str, Any], labels: str = "1%") -> Figure:
    """Grouped bars: per-class point-kNN IoU at ``labels`` of every method (mean over seeds), classes present in
    validation only."""
    v = default_variant(study["runs"])
    cells = [c for c in aggregate(study["runs"]) if c["labels"] == labels and c["variant"] == v]
    names = [n for n in study["class_names"][1:] if any(c["iou_point_knn"].get(n) is not None for c in cells)]
    methods = [c["method"] for c in cells]
    fig = Figure(figsize=(max(7.0, 0.55 * len(names) + 3.0), 4.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(len(cells), 1)
    x = np.arange(len(names))
    for i, c in enumerate(cells):
        heights = [c["iou_point_knn"].get(n) for n in names]
        heights = [np.nan if h is None else h for h in heights]
        offset = (i - (len(cells) - 1) / 2) * width
        ax.bar(x + offset, heights, width, color=colour(c["method"], methods), label=c["method"])
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylabel("IoU, point level with kNN (%)")
    ax.set_title(f"Per-class IoU at {labels} labels (mean over seeds)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    if cells:  # beside the axes: bars may reach any height
        fig.legend(fontsize="small", loc="outside right upper")
    else:
        ax.text(0.5, 0.5, f"no run at {labels}", ha="center", va="center", transform=ax.transAxes)
    return fig


def write_plots(
    study: dict[str, Any], curves_path: str | os.PathLike, per_class_path: str | os.PathLike
) -> None:
    """Draw both figures with matplotlib's default style and write them as PNGs."""
    with mpl_style.context("default"), rc_context({"svg.hashsalt": "rangecps"}):
        write_png(curves_figure(study), curves_path)
        write_png(per_class_figure(study), per_class_path)
