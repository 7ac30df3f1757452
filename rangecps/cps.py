"""One training step's losses for every method: nets and batches in, named losses out.

- ``sup_only`` (net a): ground truth of the labeled scans.
- ``cps`` (nets a, b): ground truth, plus the other net's hard pseudo-labels on the labeled and unlabeled scans.
- ``mean_teacher`` (student, teacher): the student learns ground truth, plus the MSE between its softmax and the
  teacher's on the labeled and unlabeled scans; the teacher is the student's moving average (no gradients).
- ``lasermix`` (student, teacher): as ``mean_teacher``, plus the supervised loss on the two LaserMix scans of every
  labeled/unlabeled pair, against ground truth in the labeled bands and the teacher's confident pseudo-labels (made
  on the unmixed scan) in the unlabeled bands.
- ``cps_lasermix`` (nets a, b): as ``cps``, plus the supervised loss on the LaserMix scans of every pair, against
  ground truth in the labeled bands and the *other* net's confident pseudo-labels of the unmixed scan elsewhere.

The supervised loss is :func:`rangecps.supervision.supervised_loss` (``LossConfig.recipe``); the teacher methods
live in :mod:`rangecps.teacher`. Functions here are pure: no optimiser, no EMA update, no device moves, no logging.
Randomness (LaserMix partitions) comes from the generator passed in, so a step is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rangecps.config import LossConfig, SemiConfig
from rangecps.data.lasermix import LaserMix, mix_pairs, pair_indices
from rangecps.losses import cps_loss
from rangecps.methods import METHODS, method_spec
from rangecps.supervision import TERMS, per_scan, pseudo_labels, supervised_loss
from rangecps.teacher import mean_teacher_step


def _sup_only(
    net: nn.Module, labeled: dict[str, torch.Tensor], cfg: LossConfig, weight: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    terms = supervised_loss(net(labeled["input"], aux=True), labeled["label"], labeled["mask"], cfg, weight)
    return {"loss": terms["sup"], **{k: v.detach() for k, v in terms.items()}, "sup_a": terms["sup"].detach()}


def _outputs(net: nn.Module, parts: Sequence[torch.Tensor], separate: bool) -> list[torch.Tensor]:
    """``net(x, aux=True)`` of the scans of ``parts`` concatenated in order: one forward over them all (joint), or
    one per part with the heads' outputs concatenated after (separate: batch norm in train mode then normalises
    each part with its own statistics, as TorchSemiSeg does)."""
    if not separate:
        return net(torch.cat(list(parts)), aux=True)
    return [torch.cat(heads) for heads in zip(*(net(x, aux=True) for x in parts), strict=True)]


def _cps(
    nets: Sequence[nn.Module],
    labeled: dict[str, torch.Tensor],
    unlabeled: dict[str, torch.Tensor],
    cfg: LossConfig,
    semi: SemiConfig,
    weight: torch.Tensor | None,
    mixer: LaserMix | None,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """``cps``, and ``cps_lasermix`` when ``mixer`` is given: each net runs on the labeled, unlabeled and
    (cps_lasermix) mixed scans, concatenated or one batch at a time (``semi.cps_forwards``)."""
    x_l, y_l, v_l = labeled["input"], labeled["label"], labeled["mask"]
    x_u, v_u = unlabeled["input"], unlabeled["mask"]
    b_l, b_u = x_l.shape[0], x_u.shape[0]
    parts, valid = [x_l, x_u], torch.cat([v_l, v_u])
    if mixer is not None:
        il, iu = pair_indices(b_l, b_u, x_l.device)
        rows, counts = mixer.draw(len(il), generator, x_l.device)
        parts.append(mix_pairs(x_l[il], x_u[iu], rows))
        v_mix = mix_pairs(v_l[il], v_u[iu], rows)
    outputs = [_outputs(net, parts, semi.cps_forwards == "separate") for net in nets]
    out: dict[str, torch.Tensor] = {}
    total = torch.zeros((), device=x_l.device)
    for k, name in enumerate("ab"):
        terms = supervised_loss([o[:b_l] for o in outputs[k]], y_l, v_l, cfg, weight)
        total = total + terms["sup"]
        out[f"sup_{name}"] = terms["sup"].detach()
        for t in TERMS:
            out[t] = out.get(t, 0) + terms[t].detach() / 2
        if mixer is not None:
            # The other net labels the unmixed unlabeled scans; its labels fill the unlabeled bands.
            teacher_u = outputs[1 - k][0][b_l : b_l + b_u]
            pseudo = pseudo_labels(teacher_u, v_u, semi.pseudo_threshold)
            y_mix = mix_pairs(y_l[il], pseudo[iu], rows)
            mixed = supervised_loss([o[b_l + b_u :] for o in outputs[k]], y_mix, v_mix, cfg, weight)
            total = total + semi.mix * mixed["sup"]
            out[f"mix_{name}"] = mixed["sup"].detach()
            out["pseudo_share"] = (
                out.get("pseudo_share", 0) + ((pseudo > 0).sum() / v_u.sum().clamp_min(1)) / 2
            )
    mains = [o[0][: b_l + b_u] for o in outputs]
    cps = per_scan(cps_loss, logits_a=mains[0], logits_b=mains[1], valid=valid, threshold=cfg.cps_threshold)
    out["cps"] = cps.detach()
    if mixer is not None:
        out["bands"] = counts.float().mean()
    out["loss"] = total + cfg.cps * cps
    return out


def cps_step(
    nets: Sequence[nn.Module],
    labeled: dict[str, torch.Tensor],
    unlabeled: dict[str, torch.Tensor] | None,
    method: str,
    cfg: LossConfig,
    class_weight: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    *,
    semi: SemiConfig | None = None,
    mixer: LaserMix | None = None,
    step: int = 0,
) -> dict[str, torch.Tensor]:
    """Losses of one step of ``method``.

    Args:
        nets: as ``METHODS[method].nets``: [a], [a, b], or [student, teacher]; called as ``net(x, aux=True)``.
        labeled: ``input`` (B, C, H, W) float, ``label`` (B, H, W) int64, ``mask`` (B, H, W) bool.
        unlabeled: ``input`` (B', C, H, W) and ``mask`` (B', H, W); None for ``sup_only``.
        generator: CPU generator of the LaserMix partitions.
        semi: teacher and mixing settings (default ``SemiConfig()``).
        mixer: the LaserMix bands of this geometry (default: rows evenly spaced in inclination,
            ``LaserMix.even_rows``).
        step: the optimiser step about to be taken (the consistency ramp-up reads it).

    Returns:
        ``loss``: the scalar to back-propagate, and detached scalars for logging: ``sup_a`` (``sup_b``), ``cps``,
        ``consistency``, ``mix_*``, ``pseudo_share`` (share of valid unlabeled pixels given a pseudo-label) and the
        supervised terms ``ce``, ``dice``, ``lovasz``, ``boundary`` of the labeled batch (averaged over nets).
    """
    spec = method_spec(method, len(nets))
    if method == "sup_only":
        return _sup_only(nets[0], labeled, cfg, class_weight)
    if unlabeled is None:
        raise ValueError(f"{method} needs an unlabeled batch")
    semi = semi or SemiConfig()
    generator = generator or torch.Generator()
    if not spec.mixes:
        mixer = None
    elif mixer is None:
        mixer = LaserMix.even_rows(labeled["input"].shape[-2], tuple(semi.mix_bands))
    if spec.trained == 2:  # cps, cps_lasermix
        return _cps(nets, labeled, unlabeled, cfg, semi, class_weight, mixer, generator)
    # mean_teacher, and lasermix: mean_teacher with the mixed scans
    return mean_teacher_step(
        nets[0], nets[1], labeled, unlabeled, cfg, semi, class_weight, step, mixer, generator
    )


__all__ = ["METHODS", "cps_step", "per_scan", "supervised_loss"]
