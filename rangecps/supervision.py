"""What every method learns from a target: the supervised loss of both recipes, and hard pseudo-labels.

The supervised terms follow ``LossConfig.recipe`` (formulas in :mod:`rangecps.losses`):

- "rangecps": class-weighted CE over labelled, projected pixels, Lovasz and the theta-dilated boundary loss (and
  Dice if weighted), each computed on every scan alone and averaged over scans (``per_scan``).
- "released": the LaserMix range-view release: CE averaged over all pixels (ignored ones count 0), Dice and Lovasz
  each pooled over the whole batch, and the release's boundary loss.

In both, each auxiliary head (CENet) gets the main head's loss, weighted by ``LossConfig.aux``. The same loss
trains on ground truth, on LaserMix's mixed targets (ground truth and pseudo-labels) and on nothing else: the CPS
and consistency terms live in :mod:`rangecps.losses`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from rangecps.config import LossConfig
from rangecps.losses import (
    IGNORE_INDEX,
    boundary_loss,
    boundary_loss_released,
    cross_entropy,
    cross_entropy_all_pixels,
    dice_loss,
    lovasz_softmax,
)

# Supervised terms, each weighted by the LossConfig field of that name.
TERMS = ("ce", "dice", "lovasz", "boundary")


def per_scan(loss_fn: Callable[..., torch.Tensor], **tensors: torch.Tensor | float | None) -> torch.Tensor:
    """Mean over the scans of a batch of ``loss_fn`` computed on each scan alone.

    The CPS loss and every supervised term of the "rangecps" recipe are such means, so with that recipe a batch
    split over DDP processes (whose gradients DDP averages) trains exactly like one process holding the whole
    batch. The "released" recipe's CE (a mean over pixels) and boundary loss (a mean over (scan, class) pairs) are
    means over scans as well, since all scans have H x W pixels, but its Dice and Lovasz terms pool the batch: each
    DDP process pools its own local batch, as the release does, so these two terms depend on the per-process batch
    and a split batch no longer trains exactly like one process's batch. Keyword arguments that are (B, ...)
    tensors are sliced per scan; others (class weights, thresholds) are passed unchanged.
    """
    batch = next(v.shape[0] for v in tensors.values() if isinstance(v, torch.Tensor))

    def take(v: torch.Tensor | float | None, i: int) -> torch.Tensor | float | None:
        return v[i : i + 1] if isinstance(v, torch.Tensor) and v.dim() >= 3 else v

    return torch.stack([loss_fn(**{k: take(v, i) for k, v in tensors.items()}) for i in range(batch)]).mean()


# Each recipe's function for each supervised term; CE takes logits, the others softmax probabilities.
RECIPES: dict[str, dict[str, Callable[..., torch.Tensor]]] = {
    "rangecps": {"ce": cross_entropy, "dice": dice_loss, "lovasz": lovasz_softmax, "boundary": boundary_loss},
    "released": {
        "ce": cross_entropy_all_pixels,
        "dice": dice_loss,
        "lovasz": lovasz_softmax,
        "boundary": boundary_loss_released,
    },
}


def _pooled(loss_fn: Callable[..., torch.Tensor], **tensors: torch.Tensor | float | None) -> torch.Tensor:
    return loss_fn(**tensors)


def head_terms(
    logits: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    cfg: LossConfig,
    class_weight: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """One head's terms of ``cfg.recipe``; terms of weight 0 are skipped. "rangecps" averages each term over the
    scans (``per_scan``); "released" takes it on the whole batch at once, where pixels outside ``valid`` count as
    label 0, as the release's empty pixels do."""
    fns = RECIPES[cfg.recipe]
    apply = per_scan if cfg.recipe == "rangecps" else _pooled
    terms = {}
    if cfg.ce:
        terms["ce"] = apply(fns["ce"], logits=logits, target=target, weight=class_weight, valid=valid)
    if cfg.dice or cfg.lovasz or cfg.boundary:
        probs = logits.float().softmax(1)
        for name in ("dice", "lovasz", "boundary"):
            if getattr(cfg, name):
                terms[name] = apply(fns[name], probs=probs, target=target, valid=valid)
    return terms


def supervised_loss(
    outputs: Sequence[torch.Tensor],
    target: torch.Tensor,
    valid: torch.Tensor,
    cfg: LossConfig,
    class_weight: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """The supervised loss of ``cfg.recipe`` over the main and auxiliary outputs.

    Each term (``TERMS``) is the main head's plus ``cfg.aux`` times each auxiliary head's; ``sup`` is
    ``cfg.ce * ce + cfg.dice * dice + cfg.lovasz * lovasz + cfg.boundary * boundary``. Terms of weight 0 are not
    computed and read 0. "rangecps": every term is a mean over scans of the term of each scan alone (CE over
    labelled, valid pixels, class-weighted). "released": CE over all pixels, Dice, Lovasz (pooled over the whole
    batch, so not a mean over scans; see ``per_scan`` on DDP) and the release's boundary loss; ``class_weight``
    is applied per pixel if given (the release uses none).

    Args:
        outputs: (B, K, H, W) logits, the main output first (CENet adds auxiliary heads).
        target: (B, H, W) int64 train ids, 0 = ignore (ScribbleKITTI's unlabeled points are 0 as well).
        valid: (B, H, W) bool, projected pixels; the others count as label 0.
    """
    if cfg.recipe not in RECIPES:
        raise ValueError(f"unknown loss recipe {cfg.recipe!r}; choose one of {list(RECIPES)}")
    zero = torch.zeros((), device=target.device)
    terms = dict.fromkeys(TERMS, zero)
    # Auxiliary heads are computed even when cfg.aux is 0, so that their parameters stay in the graph (DDP
    # without find_unused_parameters expects a gradient for every parameter).
    for i, logits in enumerate(outputs):
        for name, value in head_terms(logits, target, valid, cfg, class_weight).items():
            terms[name] = terms[name] + (value if i == 0 else cfg.aux * value)
    terms["sup"] = (
        cfg.ce * terms["ce"]
        + cfg.dice * terms["dice"]
        + cfg.lovasz * terms["lovasz"]
        + cfg.boundary * terms["boundary"]
    )
    return terms


@torch.no_grad()
def pseudo_labels(logits: torch.Tensor, valid: torch.Tensor, threshold: float) -> torch.Tensor:
    """Hard pseudo-labels: (B, H, W) int64, the argmax over the real classes 1..K-1 where the pixel is ``valid``
    and the softmax maximum over those classes is >= ``threshold``, else 0 (ignore). logits: (B, K, H, W)."""
    probs = logits.detach().float().softmax(1)[:, IGNORE_INDEX + 1 :]
    conf, label = probs.max(1)
    keep = valid & (conf >= threshold)
    return torch.where(keep, label + IGNORE_INDEX + 1, IGNORE_INDEX)
