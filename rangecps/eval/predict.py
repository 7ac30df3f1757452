"""From network scores to every point's class: the prediction path that evaluation, :class:`rangecps.deploy.Segmenter`
and the ONNX runner share, so that a deployed model labels a scan exactly as ``rangecps-eval`` does.

A *forward* maps a batch of inputs ``(B, C, H, W)`` to scores ``(B, K, H, W)``: one net's logits, or several nets'
mean softmax probabilities (:func:`net_forward`; an ONNX model's output plays the same part). Pixel predictions are
the argmax over classes 1..K-1 (the ignore class 0 is never predicted); points take their pixel's class, or the
kNN vote (:mod:`rangecps.eval.knn`), and points without a pixel the scan's most frequent class.

Point models (FRNet), which predict every point themselves, have their own path in
:mod:`rangecps.eval.predict_points`; it returns the same :class:`ScanPrediction` objects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rangecps.config import EvalConfig
from rangecps.eval.knn import knn_postprocess

Forward = Callable[[torch.Tensor], torch.Tensor]


def net_forward(nets: list[nn.Module], amp: torch.dtype | None, channels_last: bool = False) -> Forward:
    """The forward of one net (its float32 logits) or an ensemble (the mean of the nets' softmax)."""

    @torch.no_grad()
    def forward(x: torch.Tensor) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            outputs = [net(x).float() for net in nets]
        return outputs[0] if len(outputs) == 1 else sum(o.softmax(1) for o in outputs) / len(outputs)

    return forward


def knn_settings(eval_cfg: EvalConfig) -> dict[str, Any]:
    """The keyword arguments of :func:`~rangecps.eval.knn.knn_postprocess` from a config's ``eval`` section."""
    e = eval_cfg
    return {"knn": e.knn_k, "search": e.knn_search, "sigma": e.knn_sigma, "cutoff": e.knn_cutoff}


def pixel_classes(scores: torch.Tensor) -> torch.Tensor:
    """``(B, H, W) int64`` classes in 1..K-1 of ``(B, K, H, W)`` scores (logits or probabilities)."""
    return scores[:, 1:].argmax(1) + 1


@torch.no_grad()
def predict_pixels(nets: list[nn.Module], x: torch.Tensor, amp: torch.dtype | None) -> torch.Tensor:
    """``(B, H, W) int64`` predictions in 1..K-1 from one net's logits or several nets' mean softmax."""
    return pixel_classes(net_forward(nets, amp)(x))


def range_image(
    depth: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """``(H, W) float32`` range of each pixel's nearest point, -1 where empty: the projection's range image,
    rebuilt exactly from the per-point ``depth``/``rows``/``cols`` of a sample."""
    image = torch.full((height * width + 1,), -1.0, dtype=torch.float32, device=depth.device)
    # Points without a pixel go to a spare last slot, dropped below: no boolean-mask copies of the arrays.
    flat = torch.where(rows >= 0, rows * width + cols, height * width)
    image.scatter_reduce_(0, flat, depth, reduce="amin", include_self=False)
    return image[:-1].view(height, width)


def fallback_class(pred: torch.Tensor, mask: torch.Tensor, num_classes: int) -> int:
    """The class the occupied pixels predict most often (lowest on ties; all pixels if none is occupied)."""
    votes = pred[mask] if bool(mask.any()) else pred.reshape(-1)
    return int(torch.bincount(votes, minlength=num_classes).argmax())


def point_labels(
    pred: torch.Tensor,
    mask: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    depth: torch.Tensor,
    num_classes: int,
    knn: dict[str, Any] | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One scan's point labels: each point's pixel prediction, and the kNN vote when ``knn`` gives its parameters.

    Args:
        pred: ``(H, W) int64`` pixel predictions in 1..K-1; ``mask``: ``(H, W) bool`` occupied pixels.
        rows, cols: ``(N,) int64`` pixel of each point, -1 without one; ``depth``: ``(N,) float32`` ranges.

    Returns:
        ``(N,) int64`` plain labels and ``(N,) int64`` kNN labels (None without ``knn``), on ``pred``'s device.
        Points without a pixel take :func:`fallback_class` in both.
    """
    has = rows >= 0
    fill = fallback_class(pred, mask, num_classes)
    # One gather over all points; those without a pixel read pixel 0 and are replaced by the fallback.
    at_pixel = pred.reshape(-1)[(rows * pred.shape[1] + cols).clamp(min=0)]
    plain = torch.where(has, at_pixel, fill)
    if knn is None:
        return plain, None
    image = range_image(depth, rows, cols, *pred.shape)
    voted = torch.as_tensor(knn_postprocess(image, pred, depth, rows, cols, num_classes, **knn)).to(
        pred.device
    )
    return plain, torch.where(has, voted, fill)


@dataclass
class ScanPrediction:
    """One scan's predictions, on the batch's device: ``plain`` (N,) int64 pixel classes, ``voted`` (N,) kNN
    classes (None without kNN), ``probs`` (N, K) float32 (when asked), ``without_pixel`` the number of points
    that had no pixel (they take the fallback class; their ``probs`` row is the mean over occupied pixels)."""

    plain: torch.Tensor
    voted: torch.Tensor | None
    probs: torch.Tensor | None
    without_pixel: int

    @property
    def labels(self) -> torch.Tensor:
        """The labels to report: the kNN vote when there is one."""
        return self.voted if self.voted is not None else self.plain


@torch.no_grad()
def segment_batch(
    forward: Forward,
    batch: dict[str, Any],
    device: torch.device,
    num_classes: int,
    knn: dict[str, Any] | None,
    probs: bool = False,
    scores_are_probs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, list[ScanPrediction]]:
    """Run ``forward`` on a collated batch (with per-point arrays) and label every point of every scan.

    Returns the ``(B, H, W)`` pixel classes, the ``(B, H, W)`` occupancy mask (both on ``device``) and one
    :class:`ScanPrediction` per scan. ``probs`` adds per-point probabilities: the softmax of the point's pixel
    (``scores_are_probs``: the scores already are probabilities, as an ensemble's).
    """
    scores = forward(batch["input"].to(device, non_blocking=True))
    pred = pixel_classes(scores)
    mask = batch["mask"].to(device)
    pixel_probs = (scores if scores_are_probs else scores.softmax(1)) if probs else None
    out = []
    for b in range(pred.shape[0]):
        n = int(batch["num_points"][b])
        rows, cols = batch["rows"][b, :n].to(device), batch["cols"][b, :n].to(device)
        depth = batch["depth"][b, :n].to(device)
        plain, voted = point_labels(pred[b], mask[b], rows, cols, depth, num_classes, knn)
        point_probs = None
        if pixel_probs is not None:
            flat = pixel_probs[b].flatten(1)  # (K, H W)
            has = rows >= 0
            at = flat[:, (rows * pred.shape[2] + cols).clamp(min=0)].T  # (N, K)
            occupied = flat[:, mask[b].flatten()]
            mean = occupied.mean(1) if occupied.shape[1] else flat.mean(1)
            point_probs = torch.where(has[:, None], at, mean[None, :]).float()
        out.append(ScanPrediction(plain, voted, point_probs, int((rows < 0).sum())))
    return pred, mask, out
