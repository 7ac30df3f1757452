"""Losses of the range-view recipe: weighted cross-entropy, Lovasz-softmax, boundary loss, and the Cross Pseudo
Supervision loss. Pure torch; they know no data format.

Shared conventions:
- ``logits`` (B, K, H, W) float of any dtype and ``probs`` (B, K, H, W) softmax probabilities; every loss casts
  its input to float32 and runs with autocast disabled, so it is safe inside a bf16/fp16 autocast region.
- ``target`` (B, H, W) int64 train ids in [0, K); 0 is the ignore class (unlabelled or empty pixel).
- ``valid`` (B, H, W) bool, optional for the supervised losses: pixels where it is False are ignored as well
  (e.g. range-image pixels that no point projects to).
- Every loss returns a float32 scalar that stays attached to the graph (zero, not NaN) when no pixel counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = 0


def _check(scores: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None, what: str) -> None:
    if scores.dim() != 4:
        raise ValueError(f"{what}: expected (B, K, H, W) scores, got shape {tuple(scores.shape)}")
    b, _, h, w = scores.shape
    if tuple(target.shape) != (b, h, w):
        raise ValueError(
            f"{what}: target shape {tuple(target.shape)} does not match scores {tuple(scores.shape)}"
        )
    if target.dtype != torch.int64:
        raise ValueError(f"{what}: target must be int64 train ids, got {target.dtype}")
    if valid is not None and (tuple(valid.shape) != (b, h, w) or valid.dtype != torch.bool):
        raise ValueError(
            f"{what}: valid must be a (B, H, W) bool mask, got {valid.dtype} {tuple(valid.shape)}"
        )


def _labelled(target: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """(B, H, W) bool: pixels that carry a label and are valid."""
    keep = target != IGNORE_INDEX
    return keep if valid is None else keep & valid


def _no_autocast(t: torch.Tensor) -> torch.autocast:
    return torch.autocast(device_type=t.device.type, enabled=False)


def class_weights(frequencies: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Inverse-frequency class weights of the RangeNet++ / CENet / LaserMix recipe: ``1 / (f + eps)``.

    frequencies: (K,) non-negative point counts or fractions per train id; entry 0 (ignore) is not used. They are
    normalised to fractions over classes 1..K-1 first, so counts and fractions give the same weights, and eps=1e-3
    is the published epsilon. Returns (K,) float32 with weight[0] = 0. Only the ratios matter: ``cross_entropy``
    divides by the summed weights of the counted pixels.
    """
    f = torch.as_tensor(frequencies, dtype=torch.float64)
    if f.dim() != 1 or f.numel() < 2:
        raise ValueError(f"frequencies must be a (K,) vector with K >= 2, got shape {tuple(f.shape)}")
    if not torch.isfinite(f).all() or (f < 0).any():
        raise ValueError("frequencies must be finite and non-negative")
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    total = f[1:].sum()
    if total <= 0:
        raise ValueError("frequencies of classes 1..K-1 sum to zero")
    weight = 1.0 / (f / total + eps)
    weight[IGNORE_INDEX] = 0.0
    return weight.float()


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy over labelled, valid pixels (label 0 ignored), optionally class-weighted.

    The mean is weighted as in ``torch.nn.functional.cross_entropy``: sum_i w[y_i] * nll_i / sum_i w[y_i].
    weight: (K,) float or None.
    """
    _check(logits, target, valid, "cross_entropy")
    with _no_autocast(logits):
        logits = logits.float()
        keep = _labelled(target, valid)
        target = torch.where(keep, target, torch.zeros_like(target))
        w = None if weight is None else weight.to(device=logits.device, dtype=torch.float32)
        nll = F.cross_entropy(logits, target, weight=w, ignore_index=IGNORE_INDEX, reduction="none")
        denom = keep.sum() if w is None else (w[target] * keep).sum()
        # With nothing counted nll is all zeros, so the clamp yields 0 without a host sync.
        return nll.sum() / denom.clamp_min(1e-12)


def lovasz_softmax(
    probs: torch.Tensor, target: torch.Tensor, ignore: int = IGNORE_INDEX, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Lovasz-softmax loss (Berman, Rannen Triki, Blaschko, CVPR 2018), the convex surrogate of 1 - IoU.

    All labelled, valid pixels of the batch are pooled (the paper's per_image=False); the loss is the mean over
    classes present in the target of the Lovasz extension of the Jaccard loss, evaluated at the per-pixel errors
    |1[y = c] - p_c|. All classes are handled at once by sorting a (K, P) error matrix.
    probs: (B, K, H, W) softmax probabilities.
    """
    _check(probs, target, valid, "lovasz_softmax")
    with _no_autocast(probs):
        probs = probs.float()
        keep = target != ignore if valid is None else (target != ignore) & valid
        k = probs.shape[1]
        p = probs.permute(1, 0, 2, 3)[:, keep]  # (K, P)
        labels = target[keep]  # (P,)
        if labels.numel() == 0:
            return probs.sum() * 0.0
        fg = F.one_hot(labels, k).T.to(p.dtype)  # (K, P)
        present = fg.sum(1) > 0
        fg, p = fg[present], p[present]
        errors = (fg - p).abs()
        errors_sorted, order = errors.sort(dim=1, descending=True)
        fg_sorted = fg.gather(1, order)
        # Gradient of the Lovasz extension (the paper's Alg. 1): Jaccard loss of the top-i error set, differenced.
        n_fg = fg_sorted.sum(1, keepdim=True)
        intersection = n_fg - fg_sorted.cumsum(1)
        union = n_fg + (1.0 - fg_sorted).cumsum(1)
        jaccard = 1.0 - intersection / union
        grad = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
        return (errors_sorted * grad).sum(1).mean()


def _boundaries(maps: torch.Tensor, keep: torch.Tensor, kernel: int) -> torch.Tensor:
    """Soft inner boundaries of (B, K, H, W) class maps in [0, 1]: max over a kernel x kernel window of 1 - map,
    minus 1 - map itself. ``keep`` (B, 1, H, W) float zeroes ignored pixels so that an ignored neighbour does not
    create a boundary and an ignored pixel is never one."""
    comp = (1.0 - maps) * keep
    return (F.max_pool2d(comp, kernel, stride=1, padding=kernel // 2) - comp) * keep


def boundary_loss(
    probs: torch.Tensor,
    target: torch.Tensor,
    theta0: int = 3,
    theta: int = 5,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boundary loss of Bokhovkin & Burnaev ("Boundary Loss for Remote Sensing Imagery Semantic Segmentation",
    2019), the boundary term of the CENet and LaserMix range-view recipes: 1 - BF1 of soft class boundaries.

    Boundaries come from max-pooling one-hot (target) and softmax (prediction) maps with a theta0 window; the
    precision of predicted boundaries is measured against target boundaries dilated by a theta window, and recall
    the other way round. The mean of 1 - BF1 is taken over (image, class) pairs whose target has a boundary, so a
    perfect prediction scores ~0. Classes 1..K-1 only; ignored pixels neither are nor create boundaries.

    The CENet and LaserMix code accept theta but never dilate; ``theta=1`` reproduces that variant.
    probs: (B, K, H, W) softmax probabilities. theta0, theta: odd window sizes.
    """
    _check(probs, target, valid, "boundary_loss")
    if theta0 % 2 == 0 or theta % 2 == 0 or theta0 < 1 or theta < 1:
        raise ValueError(f"boundary_loss: theta0 and theta must be odd and positive, got {theta0}, {theta}")
    with _no_autocast(probs):
        probs = probs.float()
        k = probs.shape[1]
        keep = _labelled(target, valid)[:, None].to(probs.dtype)
        one_hot = F.one_hot(target, k).permute(0, 3, 1, 2).to(probs.dtype)
        gt_b = _boundaries(one_hot[:, 1:], keep, theta0)
        pred_b = _boundaries(probs[:, 1:], keep, theta0)
        gt_ext = F.max_pool2d(gt_b, theta, stride=1, padding=theta // 2)
        pred_ext = F.max_pool2d(pred_b, theta, stride=1, padding=theta // 2)
        eps = 1e-7
        precision = (pred_b * gt_ext).sum((2, 3)) / (pred_b.sum((2, 3)) + eps)
        recall = (pred_ext * gt_b).sum((2, 3)) / (gt_b.sum((2, 3)) + eps)
        bf1 = 2.0 * precision * recall / (precision + recall + eps)
        counted = (gt_b.sum((2, 3)) > 0).to(bf1.dtype)  # (B, K-1)
        return ((1.0 - bf1) * counted).sum() / counted.sum().clamp_min(1.0)


def cps_loss(
    logits_a: torch.Tensor, logits_b: torch.Tensor, valid: torch.Tensor, threshold: float = 0.0
) -> torch.Tensor:
    """Cross Pseudo Supervision loss (Chen et al., CVPR 2021): each net learns the other's hard pseudo-labels.

    Returns CE(logits_a, argmax logits_b) + CE(logits_b, argmax logits_a) (argmax over the real classes 1..K-1),
    the sum of the two directions, each the
    mean over its own counted pixels. A pixel counts for a direction when it is ``valid`` (a projected pixel) and
    the teaching net's confidence (its softmax maximum) is >= ``threshold``; threshold 0 counts every valid pixel.
    Pseudo-labels and confidences are detached; gradients reach both nets through their own logits. A direction
    with no counted pixel contributes 0. Swapping a and b gives the same value.
    logits_a, logits_b: (B, K, H, W); valid: (B, H, W) bool.
    """
    if logits_a.shape != logits_b.shape or logits_a.dim() != 4:
        raise ValueError(
            f"cps_loss: logits shapes differ or are not 4-D: {logits_a.shape} vs {logits_b.shape}"
        )
    b, _, h, w = logits_a.shape
    if tuple(valid.shape) != (b, h, w) or valid.dtype != torch.bool:
        raise ValueError(
            f"cps_loss: valid must be a (B, H, W) bool mask, got {valid.dtype} {tuple(valid.shape)}"
        )
    with _no_autocast(logits_a):
        la, lb = logits_a.float(), logits_b.float()
        with torch.no_grad():
            # Pseudo-labels come from the real classes only: class 0 (ignore) is never a target.
            conf_a, label_a = la.softmax(1)[:, IGNORE_INDEX + 1 :].max(1)
            conf_b, label_b = lb.softmax(1)[:, IGNORE_INDEX + 1 :].max(1)
            label_a, label_b = label_a + IGNORE_INDEX + 1, label_b + IGNORE_INDEX + 1
        return _masked_ce(la, label_b, valid & (conf_b >= threshold)) + _masked_ce(
            lb, label_a, valid & (conf_a >= threshold)
        )


def _masked_ce(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (B, K, H, W) float32 logits against (B, H, W) labels over the (B, H, W) mask."""
    nll = F.cross_entropy(logits, labels, reduction="none")
    return torch.where(mask, nll, 0.0).sum() / mask.sum().clamp_min(1)
