"""Test-time augmentation: every point's class from the networks' softmax averaged over the views of its scan.

A batch with ``views`` (:mod:`rangecps.data.tta`: one collated batch per view, the scans in the batch's order, each
view's points in the scan's own order) is labelled by :func:`segment_views`. Each view runs through the forward
and yields, for every point it places, the class probabilities of that point:

- image models (FIDNet, CENet): the softmax of the pixel the point falls in, in that view's own projection;
- point models (FRNet): the point's own softmax (the interpolated points of RangeInterpolation are dropped).

The probabilities are summed in float64 over the views that place the point and divided by their number, as
mmdet3d's ``Seg3DTTAModel`` averages the views' per-point scores; the class is the argmax over 1..K-1. Because the
softmax is taken in float64 from the float32 scores, it keeps their order exactly, so TTA with identity views gives
the labels of the plain path to the last point.

For image models the kNN vote then runs once, on the scan's own projection (the batch itself): every occupied
pixel takes the averaged class of the point that owns it (the nearest, as in the projection), and each point is
re-labelled by its neighbours as :mod:`rangecps.eval.knn` states. The vote is over labels, not probabilities, so
it is applied to the averaged result rather than per view; the range-pixel level scores that same pixel image.
Points without a pixel in the scan (or placed by no view) take the fallback class of the plain path.
"""

from __future__ import annotations

from typing import Any

import torch

from rangecps.data.point_batch import original_rows
from rangecps.eval.predict import Forward, ScanPrediction, fallback_class, point_labels
from rangecps.eval.predict_points import PointForward, point_classes, point_fallback_class

# Per scan of a view: (N, K) float64 probabilities of each point (0 where the view placed it nowhere) and (N,)
# whether the view placed it.
ViewScores = list[tuple[torch.Tensor, torch.Tensor]]


def _probabilities(scores: torch.Tensor, scores_are_probs: bool, dim: int) -> torch.Tensor:
    scores = scores.double()
    return scores if scores_are_probs else scores.softmax(dim)


def image_view_scores(
    forward: Forward, view: dict[str, Any], device: torch.device, scores_are_probs: bool
) -> ViewScores:
    """Each point's probabilities read at its pixel of ``view`` (an image batch with per-point arrays)."""
    scores = forward(view["input"].to(device, non_blocking=True))  # (B, K, H, W)
    width = scores.shape[-1]
    out = []
    for b in range(scores.shape[0]):
        n = int(view["num_points"][b])
        rows, cols = view["rows"][b, :n].to(device), view["cols"][b, :n].to(device)
        # Softmax per pixel (fewer than the points), then each point reads its pixel's.
        pixels = _probabilities(scores[b].flatten(1).T.contiguous(), scores_are_probs, 1)  # (H W, K)
        at = pixels.index_select(0, (rows * width + cols).clamp(min=0))  # (N, K)
        placed = rows >= 0
        out.append((at.masked_fill_(~placed[:, None], 0.0), placed))
    return out


def point_view_scores(
    forward: PointForward, view: dict[str, Any], device: torch.device, scores_are_probs: bool
) -> ViewScores:
    """Each point's own probabilities in ``view`` (a point batch); interpolated points' are dropped."""
    batch_size = len(view["num_points"])
    points, coors = view["points"].to(device), view["coors"].to(device)
    grid = (int(view["input"].shape[-2]), int(view["input"].shape[-1]))
    num_classes = None
    if points.shape[0]:
        scores = forward(points, coors, batch_size, grid)[original_rows(view).to(device)]
        num_classes = scores.shape[1]
    out = []
    start = 0
    for b in range(batch_size):
        n = int(view["num_points"][b])
        valid = view["point_valid"][b, :n].to(device)
        count = int(view["point_counts"][b])
        probs = torch.zeros((n, num_classes or 1), dtype=torch.float64, device=device)
        if count:
            probs[valid] = _probabilities(scores[start : start + count], scores_are_probs, 1)
        start += count
        out.append((probs, valid))
    return out


def owner_image(
    labels: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, depth: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """``(H, W) int64``: each occupied pixel holds the label of its nearest point (ties to the lower index, as the
    projection decides), empty pixels class 1. ``labels``, ``rows``, ``cols``, ``depth``: (N,) per point."""
    image = torch.ones(height * width, dtype=torch.int64, device=labels.device)
    idx = torch.nonzero(rows >= 0).squeeze(1)
    if idx.numel() == 0:
        return image.view(height, width)
    order = torch.sort(depth[idx], stable=True).indices  # nearest first, lower index first among equals
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    pixel = rows[idx] * width + cols[idx]
    best = torch.full((height * width,), order.numel(), dtype=torch.int64, device=labels.device)
    best.scatter_reduce_(0, pixel, rank, reduce="amin")
    held = best < order.numel()
    image[held] = labels[idx[order[best[held]]]]
    return image.view(height, width)


def _average(views: list[ViewScores], b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scan ``b``'s (N, K) mean probabilities over the views that placed each point, and (N,) how many did."""
    total, seen = views[0][b][0].clone(), views[0][b][1].long()
    for scans in views[1:]:
        total += scans[b][0]
        seen += scans[b][1]
    return total.div_(seen.clamp(min=1)[:, None]), seen


@torch.no_grad()
def segment_views(
    forward: Forward | PointForward,
    batch: dict[str, Any],
    device: torch.device,
    num_classes: int,
    knn: dict[str, Any] | None,
    point_model: bool,
    scores_are_probs: bool = False,
    probs: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None, list[ScanPrediction]]:
    """Label every point of every scan of ``batch`` from its ``views`` (module docstring).

    Returns the ``(B, H, W)`` pixel classes and occupancy mask of the scans' own projection (None for a point
    model) and one :class:`~rangecps.eval.predict.ScanPrediction` per scan: ``plain`` the averaged class,
    ``voted`` its kNN vote (image models with ``knn``), ``probs`` (N, K) float32 the averaged probabilities when
    ``probs`` is set (a point placed by no view: the mean over the others)."""
    score = point_view_scores if point_model else image_view_scores
    views = [score(forward, v, device, scores_are_probs) for v in batch["views"]]  # type: ignore[arg-type]
    height, width = int(batch["input"].shape[-2]), int(batch["input"].shape[-1])
    mask = None if point_model else batch["mask"].to(device)
    images, out = [], []
    for b in range(len(batch["num_points"])):
        n = int(batch["num_points"][b])
        mean_probs, seen = _average(views, b)
        if mean_probs.shape[1] != num_classes and n:
            raise ValueError(
                f"test-time views gave {mean_probs.shape[1]} classes, the model has {num_classes}"
            )
        rows = batch["rows"][b, :n].to(device)
        placed = (rows >= 0) & (seen > 0)
        labels = point_classes(mean_probs) if n else torch.zeros(0, dtype=torch.int64, device=device)
        voted = None
        if point_model:
            fill = point_fallback_class(labels[placed], num_classes)
        else:
            cols, depth = batch["cols"][b, :n].to(device), batch["depth"][b, :n].to(device)
            image = owner_image(labels, rows, cols, depth, height, width)
            images.append(image)
            fill = fallback_class(image, mask[b], num_classes)
            if knn is not None:
                _, voted = point_labels(image, mask[b], rows, cols, depth, num_classes, knn)
        plain = torch.where(placed, labels, fill)
        point_probs = None
        if probs:
            others = mean_probs[placed].mean(0) if bool(placed.any()) else mean_probs.new_zeros(num_classes)
            point_probs = torch.where(placed[:, None], mean_probs, others[None, :]).float()
        out.append(ScanPrediction(plain, voted, point_probs, int((rows < 0).sum())))
    pred = torch.stack(images) if images else None
    return pred, mask, out


__all__ = ["image_view_scores", "owner_image", "point_view_scores", "segment_views"]
