"""One training step's losses for every method: nets and batches in, named losses out.

- ``sup_only`` (1 net): ground truth of the labeled scans.
- ``cps`` (2 nets): ground truth of the labeled scans, plus the other net's hard pseudo-labels on the labeled and
  unlabeled scans.
- ``cps_lasermix`` (2 nets): as ``cps``, with every unlabeled image LaserMix-mixed with a labeled one; the labeled
  bands of a mixed image also carry their ground truth.

The supervised terms follow ``LossConfig.recipe`` (formulas in :mod:`rangecps.losses`):

- "rangecps": class-weighted CE over labelled, projected pixels, Lovasz and the theta-dilated boundary loss (and
  Dice if weighted), each computed on every scan alone and averaged over scans (``per_scan``).
- "released": the LaserMix range-view release: CE averaged over all pixels (ignored ones count 0), Dice and Lovasz
  each pooled over the whole batch, and the release's boundary loss.

In both, each auxiliary head (CENet) gets the main head's loss, weighted by ``LossConfig.aux``. The CPS term is the
same for both recipes.

The function is pure: no optimiser, no device moves, no logging. Randomness (LaserMix partitions) comes from the
generator passed in, so a step is reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from rangecps.config import LossConfig
from rangecps.data.lasermix import lasermix_masks, mix_rows
from rangecps.losses import (
    boundary_loss,
    boundary_loss_released,
    cps_loss,
    cross_entropy,
    cross_entropy_all_pixels,
    dice_loss,
    lovasz_softmax,
)

METHODS = {"sup_only": 1, "cps": 2, "cps_lasermix": 2}  # method -> number of nets
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


def _head_terms(
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
        for name, value in _head_terms(logits, target, valid, cfg, class_weight).items():
            terms[name] = terms[name] + (value if i == 0 else cfg.aux * value)
    terms["sup"] = (
        cfg.ce * terms["ce"]
        + cfg.dice * terms["dice"]
        + cfg.lovasz * terms["lovasz"]
        + cfg.boundary * terms["boundary"]
    )
    return terms


def cps_step(
    nets: Sequence[nn.Module],
    labeled: dict[str, torch.Tensor],
    unlabeled: dict[str, torch.Tensor] | None,
    method: str,
    cfg: LossConfig,
    class_weight: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Losses of one step.

    Args:
        nets: one net for ``sup_only``, two for the CPS methods; called as ``net(x, aux=True)``.
        labeled: ``input`` (B, C, H, W) float, ``label`` (B, H, W) int64, ``mask`` (B, H, W) bool.
        unlabeled: ``input`` (B', C, H, W) and ``mask`` (B', H, W); None for ``sup_only``.
        generator: CPU generator of the LaserMix partitions.

    Returns:
        ``loss``: the scalar to back-propagate (sum over nets of their supervised terms + lambda * CPS), and
        detached scalars for logging: ``sup_a`` (``sup_b``), ``cps`` and the supervised terms ``ce``, ``dice``,
        ``lovasz``, ``boundary`` (averaged over the nets).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    if len(nets) != METHODS[method]:
        raise ValueError(f"{method} trains {METHODS[method]} net(s), got {len(nets)}")
    x_l, y_l, v_l = labeled["input"], labeled["label"], labeled["mask"]
    b_l = x_l.shape[0]
    if method == "sup_only":
        terms = supervised_loss(nets[0](x_l, aux=True), y_l, v_l, cfg, class_weight)
        return {
            "loss": terms["sup"],
            **{k: v.detach() for k, v in terms.items()},
            "sup_a": terms["sup"].detach(),
        }
    if unlabeled is None:
        raise ValueError(f"{method} needs an unlabeled batch")
    x_u, v_u = unlabeled["input"], unlabeled["mask"]
    y_sup, n_sup = y_l, b_l
    if method == "cps_lasermix":
        partner = torch.arange(x_u.shape[0], device=x_u.device) % b_l
        rows = lasermix_masks(x_u.shape[0], x_u.shape[-2], generator or torch.Generator()).to(x_u.device)
        x_u = mix_rows(x_l[partner], x_u, rows)
        v_u = mix_rows(v_l[partner], v_u, rows)
        # The mixed images join the supervised batch: their labeled bands carry ground truth, the rest is ignored.
        y_sup = torch.cat([y_l, mix_rows(y_l[partner], torch.zeros_like(y_l[partner]), rows)])
        n_sup = b_l + x_u.shape[0]
    x = torch.cat([x_l, x_u])
    valid = torch.cat([v_l, v_u])
    v_sup = valid[:n_sup]
    out: dict[str, torch.Tensor] = {}
    mains = []
    total = torch.zeros((), device=x.device)
    for name, net in zip(("a", "b"), nets, strict=True):
        outputs = net(x, aux=True)
        mains.append(outputs[0])
        terms = supervised_loss([o[:n_sup] for o in outputs], y_sup, v_sup, cfg, class_weight)
        total = total + terms["sup"]
        out[f"sup_{name}"] = terms["sup"].detach()
        for k in TERMS:
            out[k] = out.get(k, 0) + terms[k].detach() / 2
    cps = per_scan(cps_loss, logits_a=mains[0], logits_b=mains[1], valid=valid, threshold=cfg.cps_threshold)
    out["cps"] = cps.detach()
    out["loss"] = total + cfg.cps * cps
    return out
