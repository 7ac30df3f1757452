"""Mean Teacher and LaserMix: a student learning by gradient and a teacher that is its exponential moving average.

The formulation is the LaserMix release's semi-supervised segmentor (ldkong1205/LaserMix,
``mmdet3d/models/segmentors/{semi_base,lasermix}.py``, configs ``configs/lasermix/*``), moved to range images:

- the teacher starts as a copy of the student and, after every optimiser step, becomes
  ``(1 - m) teacher + m student`` over the parameters (m = 0.01; mmdet's ``MeanTeacherHook`` with its default
  ``skip_buffer``). It gets no gradients and is in no optimiser. Like the release's teacher it runs in train mode,
  so its batch norm normalises with the batch's statistics and keeps its own running statistics, which evaluation
  uses;
- the student, the teacher and the mixed scans each get their own forward pass, as in the release, so batch norm
  sees the labeled, the unlabeled and the mixed batch apart;
- the consistency term is ``SemiConfig.consistency`` (250 on SemanticKITTI, 500 on nuScenes) times the MSE of the
  student's and the teacher's softmax over the labeled and unlabeled scans, optionally ramped up;
- LaserMix: the teacher labels the *unmixed* unlabeled scans (argmax where its confidence reaches
  ``SemiConfig.pseudo_threshold``, else ignored); each pair gives two mixed scans (:mod:`rangecps.data.lasermix`)
  that the student learns with the supervised loss, weighted by ``SemiConfig.mix``.

The step function is pure (nets and batches in, named losses out); the loop calls :func:`ema_update` after each
optimiser step.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from rangecps.config import LossConfig, SemiConfig
from rangecps.data.lasermix import LaserMix, mix_pairs, pair_indices
from rangecps.losses import softmax_mse
from rangecps.supervision import per_scan, pseudo_labels, supervised_loss


def rampup(step: int, length: int) -> float:
    """Sigmoid ramp-up exp(-5 (1 - t)^2), t = step / length clipped to [0, 1] (Laine & Aila; Tarvainen &
    Valpola); 1 throughout when ``length`` is 0."""
    if length <= 0:
        return 1.0
    t = min(max(step / length, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- (1 - momentum) teacher + momentum student, parameter by parameter; buffers (batch-norm running
    statistics) are the teacher's own. ``student`` is the bare module (not its DDP or compiled wrapper)."""
    for p_t, p_s in zip(teacher.parameters(), student.parameters(), strict=True):
        p_t.lerp_(p_s.detach(), momentum)


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen copy of ``student``: the same weights and buffers, no gradients."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _consistency(
    student_logits: list[torch.Tensor],
    teacher_logits: list[torch.Tensor],
    valids: list[torch.Tensor],
    cfg: LossConfig,
) -> torch.Tensor:
    # The release takes the mean over every pixel of the batch; the "rangecps" recipe a mean over scans of each
    # scan's mean over its projected pixels, like its other terms (so a batch split over DDP trains the same).
    s, t = torch.cat(student_logits), torch.cat(teacher_logits)
    if cfg.recipe == "rangecps":
        return per_scan(softmax_mse, logits_s=s, logits_t=t, valid=torch.cat(valids))
    return softmax_mse(s, t)


def mean_teacher_step(
    student: nn.Module,
    teacher: nn.Module,
    labeled: dict[str, torch.Tensor],
    unlabeled: dict[str, torch.Tensor],
    cfg: LossConfig,
    semi: SemiConfig,
    class_weight: torch.Tensor | None,
    step: int,
    mixer: LaserMix | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Mean Teacher losses; with ``mixer``, LaserMix's as released (Mean Teacher plus the student's supervised
    loss on the two mixed scans of every pair).

    Args:
        student, teacher: called as ``net(x, aux=True)`` (student) and ``net(x)`` (teacher, under no_grad).
        labeled: ``input`` (B, C, H, W), ``label`` (B, H, W) int64, ``mask`` (B, H, W) bool.
        unlabeled: ``input`` (B', C, H, W), ``mask`` (B', H, W).

    Returns:
        ``loss`` = sup + consistency weight x ramp x consistency [+ mix x mixed], and detached ``sup_a``, the
        supervised terms, ``consistency``, ``ramp`` and, with LaserMix, ``mix_a``, ``pseudo_share`` and ``bands``
        (mean number of bands drawn).
    """
    x_l, y_l, v_l = labeled["input"], labeled["label"], labeled["mask"]
    x_u, v_u = unlabeled["input"], unlabeled["mask"]
    outputs_l = student(x_l, aux=True)
    terms = supervised_loss(outputs_l, y_l, v_l, cfg, class_weight)
    with torch.no_grad():
        teacher_l, teacher_u = teacher(x_l), teacher(x_u)
    student_u = student(x_u)
    consistency = _consistency([outputs_l[0], student_u], [teacher_l, teacher_u], [v_l, v_u], cfg)
    ramp = rampup(step, semi.consistency_rampup)
    out = {k: v.detach() for k, v in terms.items()}
    out |= {"sup_a": terms["sup"].detach(), "consistency": consistency.detach()}
    out["ramp"] = torch.tensor(ramp)
    loss = terms["sup"] + semi.consistency * ramp * consistency
    if mixer is not None:
        il, iu = pair_indices(x_l.shape[0], x_u.shape[0], x_l.device)
        rows, counts = mixer.draw(len(il), generator or torch.Generator(), x_l.device)
        pseudo = pseudo_labels(teacher_u, v_u, semi.pseudo_threshold)
        mixed = supervised_loss(
            student(mix_pairs(x_l[il], x_u[iu], rows), aux=True),
            mix_pairs(y_l[il], pseudo[iu], rows),
            mix_pairs(v_l[il], v_u[iu], rows),
            cfg,
            class_weight,
        )
        loss = loss + semi.mix * mixed["sup"]
        out["mix_a"] = mixed["sup"].detach()
        out["pseudo_share"] = (pseudo > 0).sum() / v_u.sum().clamp_min(1)
        out["bands"] = counts.float().mean()
    out["loss"] = loss
    return out
