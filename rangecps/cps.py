"""One training step's losses for every method: nets and batches in, named losses out.

- ``sup_only`` (1 net): ground truth of the labeled scans.
- ``cps`` (2 nets): ground truth of the labeled scans, plus the other net's hard pseudo-labels on the labeled and
  unlabeled scans.
- ``cps_lasermix`` (2 nets): as ``cps``, with every unlabeled image LaserMix-mixed with a labeled one; the labeled
  bands of a mixed image also carry their ground truth.

The function is pure: no optimiser, no device moves, no logging. Randomness (LaserMix partitions) comes from the
generator passed in, so a step is reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from rangecps.config import LossConfig
from rangecps.data.lasermix import lasermix_masks, mix_rows
from rangecps.losses import boundary_loss, cps_loss, cross_entropy, lovasz_softmax

METHODS = {"sup_only": 1, "cps": 2, "cps_lasermix": 2}  # method -> number of nets


def per_scan(loss_fn: Callable[..., torch.Tensor], **tensors: torch.Tensor | float | None) -> torch.Tensor:
    """Mean over the scans of a batch of ``loss_fn`` computed on each scan alone.

    Every loss of a step is such a mean, so a batch split over DDP processes (whose gradients DDP averages) trains
    exactly like one process holding the whole batch. Keyword arguments that are (B, ...) tensors are sliced per
    scan; others (class weights, thresholds) are passed unchanged.
    """
    batch = next(v.shape[0] for v in tensors.values() if isinstance(v, torch.Tensor))

    def take(v: torch.Tensor | float | None, i: int) -> torch.Tensor | float | None:
        return v[i : i + 1] if isinstance(v, torch.Tensor) and v.dim() >= 3 else v

    return torch.stack([loss_fn(**{k: take(v, i) for k, v in tensors.items()}) for i in range(batch)]).mean()


def supervised_loss(
    outputs: Sequence[torch.Tensor],
    target: torch.Tensor,
    valid: torch.Tensor,
    cfg: LossConfig,
    class_weight: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """Weighted CE + Lovasz (+ boundary) summed over the main and auxiliary outputs, each a mean over scans.

    Args:
        outputs: (B, K, H, W) logits, the main output first (CENet adds auxiliary heads).
        target: (B, H, W) int64 train ids, 0 = ignore (ScribbleKITTI's unlabeled points are 0 as well).
        valid: (B, H, W) bool, projected pixels.
    """
    zero = torch.zeros((), device=target.device)
    terms = {"ce": zero, "lovasz": zero, "boundary": zero}
    for logits in outputs:
        if cfg.ce:
            ce = per_scan(cross_entropy, logits=logits, target=target, weight=class_weight, valid=valid)
            terms["ce"] = terms["ce"] + ce
        if cfg.lovasz or cfg.boundary:
            probs = logits.float().softmax(1)
            if cfg.lovasz:
                terms["lovasz"] = terms["lovasz"] + per_scan(
                    lovasz_softmax, probs=probs, target=target, valid=valid
                )
            if cfg.boundary:
                terms["boundary"] = terms["boundary"] + per_scan(
                    boundary_loss, probs=probs, target=target, valid=valid
                )
    terms["sup"] = cfg.ce * terms["ce"] + cfg.lovasz * terms["lovasz"] + cfg.boundary * terms["boundary"]
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
        detached scalars for logging: ``sup_a`` (``sup_b``), ``cps``, ``ce``, ``lovasz``, ``boundary``.
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
        for k in ("ce", "lovasz", "boundary"):
            out[k] = out.get(k, 0) + terms[k].detach() / 2
    cps = per_scan(cps_loss, logits_a=mains[0], logits_b=mains[1], valid=valid, threshold=cfg.cps_threshold)
    out["cps"] = cps.detach()
    out["loss"] = total + cfg.cps * cps
    return out
