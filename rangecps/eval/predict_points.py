"""The prediction path of point models (FRNet): every point with a pixel is predicted by the network itself, so
there is no range-image argmax to carry back to the points and no kNN vote.

A *point forward* maps ``(points (P, 4) float32, coors (P, 3) int64, batch_size B, grid (H, W))`` to scores
``(P, K)``: one net's float32 point logits, or several nets' mean softmax probabilities
(:func:`point_net_forward`; an ONNX model's output plays the same part, see
:meth:`rangecps.deploy.Segmenter.from_onnx`). ``points`` are x, y, z, intensity exactly as read (FRNet's encoder
normalises them itself), ``coors`` each point's (batch index, row, col) in the projection's range image, which
is FRNet's frustum grid. Point predictions are the argmax over classes 1..K-1 (the ignore class 0 is never
predicted). Points without a pixel (outside the field of view, zero range, or a non-finite value) are not in
``points``: they take the class the scan's predicted points take most often (:func:`point_fallback_class`), as an
image model's take the class its occupied pixels predict most often.

Batches are those of ``DataBundle.dataset(..., point_inputs=True)`` and ``ScanPipeline.sample(...,
point_inputs=True)`` collated by :func:`rangecps.data.sample.collate` (keys in :mod:`rangecps.data.sample`).
A run trained with FRNet's RangeInterpolation is evaluated on its scans densified the same way, as the release's
val and test pipelines do: such a batch carries ``point_extra``, each scan's interpolated points, placed after
its own points; the network sees them (they are context for the frustum features), and their predictions are
dropped before anything else (labels, probabilities, the fallback class), as the release drops every prediction
beyond ``num_points``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from rangecps.eval.predict import ScanPrediction

PointForward = Callable[[torch.Tensor, torch.Tensor, int, tuple[int, int]], torch.Tensor]


def is_point_net(net: nn.Module) -> bool:
    """Whether ``net`` (or the module a DDP / ``torch.compile`` wrapper holds) takes points: an FRNet."""
    from rangecps.models import FRNet

    inner = getattr(net, "module", net)  # DistributedDataParallel
    inner = getattr(inner, "_orig_mod", inner)  # torch.compile
    return isinstance(inner, FRNet)


def point_net_forward(nets: Sequence[nn.Module], amp: torch.dtype | None) -> PointForward:
    """The point forward of one net (its float32 point logits) or an ensemble (the mean of the nets' softmax),
    under autocast to ``amp`` (None: float32), as :func:`rangecps.eval.predict.net_forward` for image nets."""
    nets = list(nets)

    @torch.no_grad()
    def forward(
        points: torch.Tensor, coors: torch.Tensor, batch_size: int, grid: tuple[int, int]
    ) -> torch.Tensor:
        with torch.autocast(points.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            outputs = [net(points, coors, batch_size, grid)["point_logits"].float() for net in nets]
        return outputs[0] if len(outputs) == 1 else sum(o.softmax(1) for o in outputs) / len(outputs)

    return forward


def per_scan_forward(single: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> PointForward:
    """A batched point forward around one that takes a single scan (batch index 0 in ``coors``), such as an
    ONNX graph exported with batch size 1: each scan's points run alone and the outputs are concatenated.

    ``single(points (P_b, 4), coors (P_b, 3)) -> (P_b, K)``. The batch's points must be grouped by scan in
    batch order, as :func:`rangecps.data.sample.collate` concatenates them."""

    def forward(
        points: torch.Tensor, coors: torch.Tensor, batch_size: int, grid: tuple[int, int]
    ) -> torch.Tensor:
        counts = torch.bincount(coors[:, 0], minlength=batch_size).tolist()
        if coors.shape[0] and not bool((coors[1:, 0] >= coors[:-1, 0]).all()):
            raise ValueError("per_scan_forward: points must be grouped by scan in batch order")
        outs = []
        for pts, crs in zip(points.split(counts), coors.split(counts), strict=True):
            if pts.shape[0]:
                local = crs.clone()
                local[:, 0] = 0
                outs.append(single(pts, local))
        return torch.cat(outs) if outs else points.new_zeros((0, 0))

    return forward


def point_classes(scores: torch.Tensor) -> torch.Tensor:
    """``(P,) int64`` classes in 1..K-1 of ``(P, K)`` point scores (logits or probabilities)."""
    return scores[:, 1:].argmax(1) + 1


def point_fallback_class(pred: torch.Tensor, num_classes: int, default: int = 1) -> int:
    """The class ``pred`` ((P_b,) predictions of one scan's points) holds most often, lowest on ties;
    ``default`` when the scan has no predicted point."""
    if pred.numel() == 0:
        return default
    return int(torch.bincount(pred, minlength=num_classes).argmax())


@torch.no_grad()
def segment_point_batch(
    forward: PointForward,
    batch: dict[str, Any],
    device: torch.device,
    num_classes: int,
    probs: bool = False,
    scores_are_probs: bool = False,
) -> tuple[torch.Tensor, list[ScanPrediction]]:
    """Run a point ``forward`` on a collated point batch and label every point of every scan.

    The grid is the batch's range image (``batch["input"]``'s (H, W)). Returns the ``(P + E,) int64`` predictions
    of every row of ``batch["points"]`` (in that order, on ``device``: the points with a pixel, and the
    interpolated points of a batch with ``point_extra``) and one :class:`~rangecps.eval.predict.ScanPrediction`
    per scan, over its N own points in file order (interpolated points' predictions dropped): ``plain`` (N,)
    every point's class (its own prediction, or the scan's fallback class without a pixel), ``voted`` None (no
    kNN), ``probs`` (N, K) float32 when ``probs`` is set (the point's softmax, or the ensemble's mean softmax with
    ``scores_are_probs``; a point without a pixel gets the mean over the scan's predicted points),
    ``without_pixel`` the points without one.

    A scan whose points all lack a pixel takes class 1 (nothing of it was predicted; a fixed class keeps a
    scan's labels independent of the other scans of its batch), its probabilities uniform over classes 1..K-1.
    """
    for key in ("points", "coors", "point_valid", "point_offsets"):
        if key not in batch:
            raise ValueError(
                f"segment_point_batch: batch lacks {key!r}; read the data with point_inputs=True"
            )
    batch_size = len(batch["num_points"])
    grid = (int(batch["input"].shape[-2]), int(batch["input"].shape[-1]))
    points = batch["points"].to(device, non_blocking=True)
    coors = batch["coors"].to(device, non_blocking=True)
    if points.shape[0]:
        scores = forward(points, coors, batch_size, grid)
    else:  # FRNet needs at least one point: a batch without any pixel is labelled by the fallback alone
        scores = torch.zeros((0, num_classes), device=device)
    if scores.shape != (points.shape[0], num_classes):
        raise ValueError(
            f"point forward gave scores {tuple(scores.shape)} for {points.shape[0]} points and {num_classes} "
            "classes"
        )
    pred = point_classes(scores)
    point_probs = (scores if scores_are_probs else scores.softmax(1)).float() if probs else None
    uniform = torch.full((num_classes,), 1.0 / (num_classes - 1), device=device)
    uniform[0] = 0.0
    offsets = batch["point_offsets"].tolist()
    extra = batch["point_extra"].tolist() if "point_extra" in batch else [0] * batch_size
    out = []
    for b in range(batch_size):
        n = int(batch["num_points"][b])
        valid = batch["point_valid"][b, :n].to(device)
        end = offsets[b + 1] - extra[b]  # the scan's own points; its interpolated ones follow them
        own = pred[offsets[b] : end]
        fill = point_fallback_class(own, num_classes)
        plain = torch.full((n,), fill, dtype=torch.int64, device=device)
        plain[valid] = own  # the concatenation follows the scan's file order (see rangecps.data.dataset)
        scan_probs = None
        if point_probs is not None:
            rows = point_probs[offsets[b] : end]
            mean = rows.mean(0) if rows.shape[0] else uniform
            scan_probs = mean[None, :].repeat(n, 1)
            scan_probs[valid] = rows
        out.append(ScanPrediction(plain, None, scan_probs, n - int(own.shape[0])))
    return pred, out


__all__ = [
    "PointForward",
    "is_point_net",
    "per_scan_forward",
    "point_classes",
    "point_fallback_class",
    "point_net_forward",
    "segment_point_batch",
]
