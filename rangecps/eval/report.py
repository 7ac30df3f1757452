"""What an evaluation reports: the levels, each level's ``metrics.json`` entry, and the console report.

Every level carries mIoU under the dataset's official convention (``miou``, named by ``miou_convention``) and
under the other one beside it (``miou_other``, ``miou_other_convention``); see :mod:`rangecps.eval.metrics`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from rangecps.eval.metrics import ConfusionMatrix, MiouConvention, format_table

LEVELS = {
    "point_knn": "point-level mIoU (kNN)",
    "point": "point-level mIoU (no kNN)",
    "range_pixel": "range-pixel mIoU (the number the published semi-supervised range-view tables report)",
}
# The one level of a point model (FRNet), which predicts every point itself.
POINT_MODEL_LEVEL = "point-level mIoU (point model: each point's own prediction, no kNN)"


def level_dict(
    cm: ConfusionMatrix, names: list[str], description: str, convention: MiouConvention
) -> dict[str, Any]:
    """One level's ``metrics.json`` entry: :meth:`ConfusionMatrix.to_dict` (both mIoU conventions, the
    official ``convention`` as ``miou``), the number of counted points and the confusion matrix."""
    return {
        "description": description,
        **cm.to_dict(names, convention),
        "counted": int(cm.matrix.sum()),
        "confusion_matrix": cm.matrix.tolist(),
    }


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


def _short(convention_name: str) -> str:
    """``"semantic-kitti-api (absent classes count 0)"`` -> ``"semantic-kitti-api"``."""
    return convention_name.split(" (")[0]


def format_report(result: dict[str, Any]) -> str:
    """The per-class table of the headline level and one line per level, for the console.

    Each mIoU is named by its convention: the official one of the dataset first; the other one is shown
    beside it only where the two differ (some class absent from ground truth and predictions).
    """
    names = result.get("net_names", ["a", "b"])
    net = f"ensemble of nets {' and '.join(names)}" if result["net"] == "ensemble" else f"net {result['net']}"
    levels = result["levels"]
    notes = [f"note: {note}" for note in result.get("notes", [])] + non_finite_note(result)
    notes += interpolation_note(result)
    if not levels:
        return "\n".join(
            [
                f"{result['split']}: {result['scans']} scans predicted with {net} (no labels, no metrics)",
                *notes,
            ]
        )
    head = levels[result["headline"]]
    names = result["class_names"]

    def number(v: float | None) -> float:
        return math.nan if v is None else v

    official, other = head["miou_convention"], head["miou_other_convention"]
    ious = np.array([number(head["iou"].get(name)) for name in names])
    title = f"{head['description']}, {result['split']} ({result['scans']} scans, {net})"
    differs = _pct(head["miou"]) != _pct(head["miou_other"])
    extra = [(f"mIoU, {_short(other)}", number(head["miou_other"]))] if differs else []
    lines = [
        format_table(
            names, ious, number(head["miou"]), number(head["accuracy"]), title=title,
            miou_label=f"mIoU, {_short(official)}", extra=extra,
        ),
    ]  # fmt: skip
    if any(v is None for v in head["iou"].values()):
        counts = "counts 0 in" if result["miou_convention"] == "semantickitti" else "is left out of"
        lines.append(
            f"n/a: class in neither ground truth nor predictions; {counts} the {_short(official)} mIoU"
        )
    lines += ["", f"mIoU by level ({net}), {official}:"]
    width = max(len(v["description"]) for v in levels.values())
    for level in LEVELS:
        if level in levels:
            v = levels[level]
            line = f"{v['description']:<{width}}  {_pct(v['miou']):>6}   accuracy {_pct(v['accuracy']):>6}"
            if _pct(v["miou"]) != _pct(v["miou_other"]):
                line += f"   ({_short(v['miou_other_convention'])}: {_pct(v['miou_other'])})"
            lines.append(line)
    return "\n".join(lines + notes)


def non_finite_note(result: dict[str, Any]) -> list[str]:
    """A line on the points with a NaN or infinite value, when the evaluation met any."""
    count = int(result.get("non_finite_points") or 0)
    if count <= 0:
        return []
    return [
        f"{count} points with a NaN or infinite value (non_finite_points): no pixel, so each took the class its "
        "scan's pixels predict most often"
    ]


def interpolation_note(result: dict[str, Any]) -> list[str]:
    """A line on evaluation-time RangeInterpolation, when the evaluation applied it."""
    if not result.get("range_interpolation"):
        return []
    return [
        f"RangeInterpolation, as the model was trained and the FRNet release evaluates: the network also saw "
        f"{int(result.get('interpolated_points') or 0):,} interpolated points, whose predictions were dropped "
        "(only the scans' own points are labelled and scored)"
    ]
