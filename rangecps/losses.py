"""Losses of the range-view recipes: cross-entropy, Dice, Lovasz-softmax, boundary loss, the Cross Pseudo
Supervision loss and the Mean Teacher consistency. Pure torch; they know no data format.
``rangecps.supervision.supervised_loss`` combines the supervised ones into two recipes (``LossConfig.recipe``):

- "rangecps": ``cross_entropy`` (class-weighted mean over labelled, valid pixels), ``lovasz_softmax`` and
  ``boundary_loss`` (theta-dilated BF1), each computed on every scan alone and averaged over the scans
  (``rangecps.supervision.per_scan``; for Lovasz this is the paper's per_image=True).
- "released": the LaserMix range-view release (ldkong1205/LaserMix, ``script/trainer``): ``cross_entropy_all_pixels``
  (mean over all B*H*W pixels, ignored ones counting 0), ``dice_loss`` (pooled over the batch),
  ``lovasz_softmax`` called once on the whole batch (per_image=False) and ``boundary_loss_released``.

Shared conventions:
- ``logits`` (B, K, H, W) float of any dtype and ``probs`` (B, K, H, W) softmax probabilities; every loss casts
  its input to float32 and runs with autocast disabled, so it is safe inside a bf16/fp16 autocast region.
- ``target`` (B, H, W) int64 train ids in [0, K); 0 is the ignore class (unlabelled or empty pixel).
- ``valid`` (B, H, W) bool, optional for the supervised losses: pixels where it is False count as label 0
  (ignored; for ``boundary_loss_released``, which has no ignore class, they are class 0 like empty pixels).
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


def _pixel_nll(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, valid: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(B, H, W) float32 per-pixel ``w[y] * nll`` (0 where not labelled or not valid), the (B, H, W) mask of the
    counted pixels, the target with uncounted pixels set to 0, and the float32 weight (or None)."""
    keep = _labelled(target, valid)
    target = torch.where(keep, target, torch.zeros_like(target))
    w = None if weight is None else weight.to(device=logits.device, dtype=torch.float32)
    nll = F.cross_entropy(logits.float(), target, weight=w, ignore_index=IGNORE_INDEX, reduction="none")
    return nll, keep, target, w


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
        nll, keep, target, w = _pixel_nll(logits, target, weight, valid)
        denom = keep.sum() if w is None else (w[target] * keep).sum()
        # With nothing counted nll is all zeros, so the clamp yields 0 without a host sync.
        return nll.sum() / denom.clamp_min(1e-12)


def lovasz_softmax(
    probs: torch.Tensor, target: torch.Tensor, ignore: int = IGNORE_INDEX, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Lovasz-softmax loss (Berman, Rannen Triki, Blaschko, CVPR 2018), the convex surrogate of 1 - IoU.

    All labelled, valid pixels of the tensors given are pooled (the paper's per_image=False); the loss is the mean
    over classes present in the target of the Lovasz extension of the Jaccard loss, evaluated at the per-pixel
    errors |1[y = c] - p_c|. All classes are handled at once by sorting a (K, P) error matrix.
    The "released" recipe calls it once on the whole (local) batch, as the release does; the "rangecps" recipe
    calls it on each scan alone and averages over scans (``rangecps.supervision.per_scan``, the paper's per_image=True).
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


def _max_pool(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """Stride-1, -inf-padded max over kernel x kernel windows of (B, K, H, W) ``x``, the same values as
    ``F.max_pool2d(x, kernel, 1, kernel // 2)``. Done as a row pass and a column pass in channels_last: on a CPU
    that is 3-5x faster than the square pool in the default layout, which was 8-10 % of a training step."""
    x = x.contiguous(memory_format=torch.channels_last)
    x = F.max_pool2d(x, (1, kernel), stride=1, padding=(0, kernel // 2))
    return F.max_pool2d(x, (kernel, 1), stride=1, padding=(kernel // 2, 0))


def _boundaries(maps: torch.Tensor, keep: torch.Tensor | None, kernel: int) -> torch.Tensor:
    """Soft inner boundaries of (B, K, H, W) class maps in [0, 1]: max over a kernel x kernel window of 1 - map,
    minus 1 - map itself. ``keep`` (B, 1, H, W) float zeroes ignored pixels so that an ignored neighbour does not
    create a boundary and an ignored pixel is never one; None keeps every pixel. Max-pooling pads with -inf, so
    the image border makes no boundary."""
    comp = 1.0 - maps
    if keep is None:
        return _max_pool(comp, kernel) - comp
    comp = comp * keep
    return (_max_pool(comp, kernel) - comp) * keep


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

    The CENet and LaserMix code accept theta but never dilate; ``theta=1`` drops the dilation as they do, but their
    loss differs in other ways too (all K channels, no ignore handling, mean over all pairs): that one is
    ``boundary_loss_released``.
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
        gt_ext = _max_pool(gt_b, theta)
        pred_ext = _max_pool(pred_b, theta)
        eps = 1e-7
        precision = (pred_b * gt_ext).sum((2, 3)) / (pred_b.sum((2, 3)) + eps)
        recall = (pred_ext * gt_b).sum((2, 3)) / (gt_b.sum((2, 3)) + eps)
        bf1 = 2.0 * precision * recall / (precision + recall + eps)
        counted = (gt_b.sum((2, 3)) > 0).to(bf1.dtype)  # (B, K-1)
        return ((1.0 - bf1) * counted).sum() / counted.sum().clamp_min(1.0)


# ---------------------------------------------------------------- the LaserMix release's terms


def cross_entropy_all_pixels(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of the LaserMix release: the per-pixel loss averaged over ALL B*H*W pixels of the batch.

    loss = sum_i 1[pixel i labelled and valid] * w[y_i] * nll_i / (B * H * W), w = 1 when ``weight`` is None; this
    is ``nn.CrossEntropyLoss(weight, ignore_index=0, reduction="none")(logits, target).mean()``. Ignored pixels
    contribute 0 but count in the denominator, so the loss is ``cross_entropy`` times the labelled share of the
    pixels (without weights): sparse labels (scribbles, empty range-image pixels) scale it down. The release
    passes no weight; a (K,) ``weight`` is applied per pixel as torch does, without renormalising.
    logits: (B, K, H, W).
    """
    _check(logits, target, valid, "cross_entropy_all_pixels")
    with _no_autocast(logits):
        return _pixel_nll(logits, target, weight, valid)[0].mean()


def dice_loss(
    probs: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None, eps: float = 1e-4
) -> torch.Tensor:
    """Soft Dice loss of the LaserMix release (the Dice half of its ``CrossEntropyDiceLoss``, ignore index 0).

    T is the (B, K, H, W) one-hot target, all-zero at ignored pixels (label 0 or valid False). Per class c, with
    sums over the batch and the image, over labelled pixels only:
    loss_c = 1 - 2 * sum(p_c * T_c) / (sum(p_c + T_c) + eps), and the loss is sum_c loss_c / K: the mean over
    all K channels, so class 0 (never a target) and classes absent from the batch each add a constant 1 / K.
    The batch is pooled, not averaged per scan. No labelled pixel at all gives 0 (attached, zero gradient).
    The release's optional class weights (unused there) are not supported.
    probs: (B, K, H, W) softmax probabilities.
    """
    _check(probs, target, valid, "dice_loss")
    with _no_autocast(probs):
        probs = probs.float()
        k = probs.shape[1]
        keep = _labelled(target, valid)[:, None].to(probs.dtype)  # (B, 1, H, W)
        one_hot = F.one_hot(target, k).permute(0, 3, 1, 2).to(probs.dtype) * keep
        numerator = 2.0 * (probs * one_hot).sum((0, 2, 3))  # (K,)
        denominator = ((probs + one_hot) * keep).sum((0, 2, 3))
        total = denominator.sum()
        dice = (1.0 - numerator / (denominator + eps)).sum() / k
        # total is 0 only without labelled pixels; selecting it keeps the graph without a host sync.
        return torch.where(total > 0, dice, total)


def boundary_loss_released(
    probs: torch.Tensor, target: torch.Tensor, theta0: int = 3, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Boundary loss as the LaserMix and CENet code compute it (``BoundaryLoss(theta0=3, theta=5)``, whose theta
    is never used), over all K channels with no ignore handling: label 0 (empty or unlabelled pixels, and pixels
    where ``valid`` is False) is simply class 0.

    With M the one-hot target and the probabilities in turn, boundaries are b(M) = maxpool_theta0(1 - M) - (1 - M)
    (stride 1, -inf padding); flattened to (B, K, H*W), per (scan, class):
    P = sum(b_pred * b_gt) / (sum(b_pred) + 1e-7), R = sum(b_pred * b_gt) / (sum(b_gt) + 1e-7),
    BF1 = 2 P R / (P + R + 1e-7), and the loss is the mean of 1 - BF1 over all B x K pairs: a class without a
    target boundary in a scan adds 1 whatever the prediction. Compare ``boundary_loss`` (the "rangecps" recipe).
    probs: (B, K, H, W) softmax probabilities; theta0: odd window size.
    """
    _check(probs, target, valid, "boundary_loss_released")
    if theta0 % 2 == 0 or theta0 < 1:
        raise ValueError(f"boundary_loss_released: theta0 must be odd and positive, got {theta0}")
    with _no_autocast(probs):
        probs = probs.float()
        k = probs.shape[1]
        if valid is not None:
            target = torch.where(valid, target, torch.full_like(target, IGNORE_INDEX))
        one_hot = F.one_hot(target, k).permute(0, 3, 1, 2).to(probs.dtype)
        gt_b = _boundaries(one_hot, None, theta0).flatten(2)
        pred_b = _boundaries(probs, None, theta0).flatten(2)
        eps = 1e-7
        overlap = (pred_b * gt_b).sum(2)  # (B, K)
        precision = overlap / (pred_b.sum(2) + eps)
        recall = overlap / (gt_b.sum(2) + eps)
        bf1 = 2.0 * precision * recall / (precision + recall + eps)
        return (1.0 - bf1).mean()


# ---------------------------------------------------------------- cross pseudo supervision


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


def softmax_mse(
    logits_s: torch.Tensor, logits_t: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean Teacher consistency: mean squared difference of the student's and the teacher's softmax.

    The mean runs over every element of the (B, K, H, W) probability maps, as ``mmdet.MSELoss`` takes it in the
    LaserMix release; with ``valid`` (B, H, W) only over the K values of valid pixels. The teacher's probabilities
    are detached: gradients reach the student only. logits_s, logits_t: (B, K, H, W).
    """
    if logits_s.shape != logits_t.shape or logits_s.dim() != 4:
        raise ValueError(
            f"softmax_mse: logits shapes differ or are not 4-D: {logits_s.shape} vs {logits_t.shape}"
        )
    with _no_autocast(logits_s):
        sq = (logits_s.float().softmax(1) - logits_t.detach().float().softmax(1)).square()
        if valid is None:
            return sq.mean()
        return (sq * valid[:, None]).sum() / (valid.sum() * sq.shape[1]).clamp_min(1)
