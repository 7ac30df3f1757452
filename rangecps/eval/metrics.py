"""Semantic-segmentation metrics from one confusion matrix: per-class IoU, mIoU, overall accuracy.

Conventions (``K`` classes including the ignore class, by default train id 0):

- ``matrix[gt, pred]`` counts points (rows = ground truth, columns = prediction), as nuscenes-devkit's
  lidarseg ``ConfusionMatrix``; semantic-kitti-api's ``iouEval`` stores the transpose.
- Points whose ground truth is the ignore class are not counted at all (semantic-kitti-api zeroes those in
  ``getStats``, nuscenes-devkit zeroes the ignore row).
- A prediction of the ignore class for a real point is counted, as a miss: a false negative of the
  ground-truth class (semantic-kitti-api does the same; nuscenes-devkit forbids such predictions outright).
- ``IoU_c = TP / (TP + FP + FN)``. A class with ``TP + FP + FN = 0`` (absent from ground truth and
  predictions) has IoU NaN in :meth:`ConfusionMatrix.get_per_class_iou`, and the ignore class always has IoU
  NaN (nuscenes-devkit's rule).
- mIoU follows one of two official conventions, named by :data:`MiouConvention` and chosen per dataset by
  :func:`official_convention`; they agree whenever every real class occurs (as on the full SemanticKITTI
  validation sequence) and differ only in how an absent class counts:

  - ``"semantickitti"`` (semantic-kitti-api ``np_ioueval.py``): ``IoU_c = TP / (TP + FP + FN + 1e-15)``, mean
    over ALL real classes, so an absent class scores 0 and pulls the mean down;
  - ``"nuscenes"`` (nuscenes-devkit ``LidarSegEval``): mean over the real classes with a defined IoU
    (NaN skipped, as the devkit's ``nanmean``).

  With no counted point at all both give NaN (semantic-kitti-api would print 0).
- Accuracy = correct / counted points (every point with a real ground-truth class), the same for both
  datasets. semantic-kitti-api's ``getacc`` leaves points predicted as the ignore class out of its
  denominator; the two agree whenever no point is predicted as ignore (never in :mod:`rangecps.eval`, whose
  predictions exclude the ignore class).

The tests check these against nuscenes-devkit's ``ConfusionMatrix`` and an independent re-implementation of
semantic-kitti-api's ``iouEval`` on random data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import torch

MiouConvention = Literal["semantickitti", "nuscenes"]
"""How mIoU treats a class absent from ground truth and predictions: 0 (semantic-kitti-api) or left out
(nuscenes-devkit)."""

CONVENTION_NAMES: dict[MiouConvention, str] = {
    "semantickitti": "semantic-kitti-api (absent classes count 0)",
    "nuscenes": "nuscenes-devkit (absent classes excluded)",
}

DATASET_CONVENTIONS: dict[str, MiouConvention] = {
    "semantickitti": "semantickitti",
    "scribblekitti": "semantickitti",  # scored on SemanticKITTI's labels by the same tool
    "synthetic_kitti": "semantickitti",
    "synthetic_scribblekitti": "semantickitti",
    "nuscenes": "nuscenes",
    "synthetic_nuscenes": "nuscenes",
}


def official_convention(dataset: str) -> MiouConvention:
    """The mIoU convention of the official evaluator of ``dataset`` (a ``cfg.data.dataset`` name)."""
    try:
        return DATASET_CONVENTIONS[dataset]
    except KeyError:
        raise ValueError(
            f"no official mIoU convention known for dataset {dataset!r}; known: {sorted(DATASET_CONVENTIONS)}"
        ) from None


def other_convention(convention: MiouConvention) -> MiouConvention:
    """The convention that is not ``convention``."""
    return "nuscenes" if _check_convention(convention) == "semantickitti" else "semantickitti"


def _check_convention(convention: str) -> MiouConvention:
    if convention not in get_args(MiouConvention):
        raise ValueError(f"mIoU convention must be one of {get_args(MiouConvention)}, got {convention!r}")
    return convention  # type: ignore[return-value]


def _flat_int(x: np.ndarray | torch.Tensor, what: str) -> np.ndarray | torch.Tensor:
    if isinstance(x, torch.Tensor):
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise ValueError(f"ConfusionMatrix.update: {what} must hold integer class ids, got {x.dtype}")
        return x.reshape(-1).to(torch.int64)
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"ConfusionMatrix.update: {what} must hold integer class ids, got {x.dtype}")
    return x.reshape(-1).astype(np.int64, copy=False)


class ConfusionMatrix:
    """Accumulated ``(K, K) int64`` counts ``matrix[gt, pred]`` over any number of scans.

    Args:
        num_classes: ``K``, including the ignore class.
        ignore_index: ground-truth class whose points are not counted; ``None`` counts every point.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 0) -> None:
        if num_classes < 1:
            raise ValueError(f"ConfusionMatrix: num_classes must be >= 1, got {num_classes}")
        if ignore_index is not None and not 0 <= ignore_index < num_classes:
            raise ValueError(f"ConfusionMatrix: ignore_index {ignore_index} is not in 0..{num_classes - 1}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    @property
    def real_classes(self) -> np.ndarray:
        """``(K or K-1,) int64`` the class ids that metrics average over (all but the ignore class)."""
        ids = np.arange(self.num_classes)
        return ids if self.ignore_index is None else ids[ids != self.ignore_index]

    def reset(self) -> None:
        self.matrix[:] = 0

    def update(self, gt: np.ndarray | torch.Tensor, pred: np.ndarray | torch.Tensor) -> None:
        """Count one batch: ``gt`` and ``pred`` are integer arrays or tensors of one shape, any shape.

        Tensors are counted on their own device; only the ``(K, K)`` result moves to the host.
        """
        if isinstance(gt, torch.Tensor) != isinstance(pred, torch.Tensor):
            gt, pred = torch.as_tensor(gt), torch.as_tensor(pred)  # one kind, for one bincount
            pred = pred.to(gt.device)
        gt, pred = _flat_int(gt, "gt"), _flat_int(pred, "pred")
        if gt.shape != pred.shape:
            raise ValueError(
                f"ConfusionMatrix.update: gt has {gt.shape[0]} elements but pred has {pred.shape[0]}"
            )
        if gt.shape[0] == 0:
            return
        k = self.num_classes
        for x, what in ((gt, "gt"), (pred, "pred")):
            if x.min() < 0 or x.max() >= k:
                raise ValueError(f"ConfusionMatrix.update: {what} holds class ids outside 0..{k - 1}")
        if self.ignore_index is not None:
            keep = gt != self.ignore_index
            gt, pred = gt[keep], pred[keep]
        pair = gt * k + pred
        if isinstance(pair, torch.Tensor):
            counts = torch.bincount(pair, minlength=k * k).cpu().numpy()
        else:
            counts = np.bincount(pair, minlength=k * k)
        self.matrix += counts.reshape(k, k).astype(np.int64, copy=False)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add ``other``'s counts into this matrix (e.g. from another worker); returns ``self``."""
        if other.num_classes != self.num_classes or other.ignore_index != self.ignore_index:
            raise ValueError(
                f"ConfusionMatrix.merge: ({other.num_classes} classes, ignore {other.ignore_index}) does not "
                f"match ({self.num_classes} classes, ignore {self.ignore_index})"
            )
        self.matrix += other.matrix
        return self

    def __iadd__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        return self.merge(other)

    def all_reduce(self, device: str | torch.device = "cpu") -> None:
        """Sum the matrix over all processes when ``torch.distributed`` is initialised; else do nothing.

        ``device`` is where the collective runs: ``"cpu"`` for gloo, the process's GPU for nccl.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        t = torch.from_numpy(self.matrix).to(device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        self.matrix = t.cpu().numpy().astype(np.int64, copy=False)

    def get_per_class_iou(self) -> np.ndarray:
        """``(K,) float64`` IoU of every class; NaN for the ignore class and for classes with empty union."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(axis=0) + self.matrix.sum(axis=1) - tp
        iou = np.full(self.num_classes, np.nan)
        np.divide(tp, union, out=iou, where=union > 0)
        if self.ignore_index is not None:
            iou[self.ignore_index] = np.nan
        return iou

    def get_mean_iou(self, convention: MiouConvention = "nuscenes") -> float:
        """Mean IoU over the real classes under ``convention``; NaN when no point was counted.

        ``"semantickitti"``: as semantic-kitti-api's ``getIoU``, ``TP / (TP + FP + FN + 1e-15)`` averaged over
        every real class, an absent class counting 0. ``"nuscenes"`` (the default, kept for callers that
        predate the choice): as nuscenes-devkit, the mean over real classes with a defined IoU.
        """
        if _check_convention(convention) == "semantickitti":
            if self.matrix.sum() == 0:
                return math.nan
            tp = np.diag(self.matrix).astype(np.float64)
            union = self.matrix.sum(axis=0) + self.matrix.sum(axis=1) - tp
            return float((tp / (union + 1e-15))[self.real_classes].mean())
        iou = self.get_per_class_iou()[self.real_classes]
        iou = iou[~np.isnan(iou)]
        return float(iou.mean()) if iou.size else math.nan

    def get_freqweighted_iou(self) -> float:
        """IoU of each class weighted by its share of counted ground-truth points (nuScenes reports it)."""
        total = self.matrix.sum()
        if total == 0:
            return math.nan
        return float(np.nansum(self.matrix.sum(axis=1) * self.get_per_class_iou()) / total)

    def get_accuracy(self) -> float:
        """Overall accuracy over counted points (real ground truth); NaN when none was counted."""
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else math.nan

    def to_dict(self, names: Sequence[str], convention: MiouConvention) -> dict[str, object]:
        """JSON-ready summary with both mIoU conventions, ``convention`` first.

        Keys: ``miou`` and ``miou_convention`` (``convention`` and its :data:`CONVENTION_NAMES` name),
        ``miou_other`` and ``miou_other_convention`` (the other convention), ``accuracy``,
        ``freqweighted_iou`` and ``iou`` (``{name: IoU}``, None for an absent class under either convention).
        ``names`` has one name per class (``K``); the ignore class is left out of ``"iou"``. NaN becomes
        ``None`` because JSON has no NaN.
        """
        if len(names) != self.num_classes:
            raise ValueError(f"ConfusionMatrix.to_dict: {len(names)} names for {self.num_classes} classes")
        other = other_convention(convention)

        def clean(v: float) -> float | None:
            return None if math.isnan(v) else float(v)

        iou = self.get_per_class_iou()
        return {
            "miou": clean(self.get_mean_iou(convention)),
            "miou_convention": CONVENTION_NAMES[convention],
            "miou_other": clean(self.get_mean_iou(other)),
            "miou_other_convention": CONVENTION_NAMES[other],
            "accuracy": clean(self.get_accuracy()),
            "freqweighted_iou": clean(self.get_freqweighted_iou()),
            "iou": {names[c]: clean(iou[c]) for c in self.real_classes},
        }


def format_table(
    names: Sequence[str],
    ious: np.ndarray,
    miou: float | None = None,
    accuracy: float | None = None,
    ignore_index: int | None = 0,
    title: str | None = None,
    miou_label: str = "mIoU",
    extra: Sequence[tuple[str, float]] = (),
) -> str:
    """A plain-text table of per-class IoU in percent, for logs and reports.

    Args:
        names: ``K`` class names.
        ious: ``(K,) float`` per-class IoU in ``[0, 1]``, NaN where undefined (shown as ``n/a``).
        miou, accuracy: optional summary rows, in ``[0, 1]``.
        ignore_index: class left out of the table (``None`` keeps all).
        title: optional first line.
        miou_label: label of the mIoU row, e.g. naming its convention.
        extra: further ``(label, value)`` summary rows, shown between the mIoU and accuracy rows.
    """
    ious = np.asarray(ious, dtype=np.float64)
    if ious.shape != (len(names),):
        raise ValueError(f"format_table: {len(names)} names but ious has shape {ious.shape}")

    def pct(v: float) -> str:
        return "n/a" if math.isnan(v) else f"{100.0 * v:.2f}"

    rows = [(str(names[c]), pct(ious[c])) for c in range(len(names)) if c != ignore_index]
    wanted = [(miou_label, miou), *extra, ("accuracy", accuracy)]
    summary = [(label, pct(v)) for label, v in wanted if v is not None]
    width = max(len(n) for n, _ in [*rows, *summary, ("class", "")])
    rule = "-" * (width + 11)
    lines = [title] if title else []
    lines += [f"{'class':<{width}}  {'IoU (%)':>8}", rule]
    lines += [f"{n:<{width}}  {v:>8}" for n, v in rows]
    if summary:
        lines += [rule, *[f"{n:<{width}}  {v:>8}" for n, v in summary]]
    return "\n".join(lines)
