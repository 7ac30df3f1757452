"""One training step's losses for every method on point models (FRNet): :func:`rangecps.cps.cps_step` for nets
that predict every point.

The methods are those of :mod:`rangecps.cps` and :mod:`rangecps.teacher`, with points where the image nets
have pixels:

- the supervised loss (:func:`point_supervised_loss`) is the release's: cross-entropy on the point head
  (weight ``LossConfig.ce``), and on each of the four auxiliary frustum heads the image terms of
  :func:`rangecps.supervision.head_terms` (the release: CE 1.0, Lovasz 1.5, boundary 1.0) against the per-pixel
  majority label of its points (:func:`~rangecps.models.frnet.frustum_labels`), weighted by ``LossConfig.aux``;
- pseudo-labels, the CPS loss and the Mean Teacher consistency are taken per point, on the point head only;
- LaserMix mixes the points of a labeled and an unlabeled scan by the inclination band of their row
  (:func:`~rangecps.data.lasermix.mix_point_pairs`); the mixed scans' targets are ground truth on the labeled
  scan's points and the teacher's (or the other net's) pseudo-labels, made on the unmixed scan, on the others.

A point batch (:data:`PointBatch`) holds ``points`` (P, C) float, ``coors`` (P, 3) int64 (scan, row, col),
``label`` (P,) int64 train ids (0 = ignore; all 0 for unlabeled scans) and ``offsets`` (B + 1,) int64, scan b's
points being ``[offsets[b], offsets[b + 1])``; every point has a pixel. :func:`training_points` makes one from a
collated point-input batch. Under the "rangecps" recipe each point term is a mean over scans of the scan's own
mean, as for pixels (so a batch split over DDP processes trains the same); under "released" the point CE is the
release's mean over all points of the batch.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from rangecps.config import LossConfig, SemiConfig
from rangecps.data.lasermix import LaserMix, mix_point_pairs, pair_indices
from rangecps.losses import cps_loss, cross_entropy, cross_entropy_all_pixels, softmax_mse
from rangecps.methods import method_spec
from rangecps.models.frnet import frustum_labels
from rangecps.models.frnet_blocks import pixel_index
from rangecps.supervision import TERMS, head_terms, pseudo_labels
from rangecps.teacher import rampup

PointBatch = dict[str, torch.Tensor]


def training_points(batch: dict[str, Any]) -> PointBatch:
    """The :data:`PointBatch` of a collated point-input batch (``RangeDataset(point_inputs=True)``): its points
    with a pixel, their coordinates and their labels (``point_label`` of those points)."""
    return {
        "points": batch["points"],
        "coors": batch["coors"],
        "label": batch["point_label"][batch["point_valid"]],
        "offsets": batch["point_offsets"],
    }


def num_scans(batch: PointBatch) -> int:
    return batch["offsets"].shape[0] - 1


def cat_points(batches: Sequence[PointBatch]) -> PointBatch:
    """The scans of ``batches`` as one batch, in order (scan indices and offsets shifted)."""
    coors, offsets, scans, points = [], [batches[0]["offsets"][:1]], 0, 0
    for b in batches:
        shifted = b["coors"].clone()
        shifted[:, 0] += scans
        coors.append(shifted)
        offsets.append(b["offsets"][1:] + points)
        scans, points = scans + num_scans(b), points + b["points"].shape[0]
    return {
        "points": torch.cat([b["points"] for b in batches]),
        "coors": torch.cat(coors),
        "label": torch.cat([b["label"] for b in batches]),
        "offsets": torch.cat(offsets),
    }


def _spans(offsets: torch.Tensor) -> list[tuple[int, int]]:
    bounds = offsets.tolist()
    return list(itertools.pairwise(bounds))


def _as_image(t: torch.Tensor) -> torch.Tensor:
    """A scan's points as a one-column image, so that the image losses apply: (n, K) -> (1, K, n, 1),
    (n,) -> (1, n, 1)."""
    return t.T[None, :, :, None] if t.dim() == 2 else t[None, :, None]


def per_scan_points(
    loss_fn: Callable[..., torch.Tensor],
    offsets: torch.Tensor,
    per_point: dict[str, torch.Tensor],
    **fixed: torch.Tensor | float | None,
) -> torch.Tensor:
    """Mean over the scans of ``loss_fn`` on each scan's points alone: :func:`rangecps.supervision.per_scan` for
    point batches. ``per_point``: (P, ...) tensors, cut per scan and passed as one-column images; ``fixed``
    (class weights, thresholds) is passed unchanged."""
    values = [
        loss_fn(**{k: _as_image(v[start:stop]) for k, v in per_point.items()}, **fixed)
        for start, stop in _spans(offsets)
    ]
    return torch.stack(values).mean()


def _scans(outputs: list[torch.Tensor], offsets: torch.Tensor, first: int, stop: int) -> list[torch.Tensor]:
    """Outputs of scans ``first..stop-1``: their points' logits and their frustum maps."""
    lo, hi = int(offsets[first]), int(offsets[stop])
    return [outputs[0][lo:hi], *(o[first:stop] for o in outputs[1:])]


def _rebased(offsets: torch.Tensor, first: int, stop: int) -> torch.Tensor:
    return offsets[first : stop + 1] - offsets[first]


def point_supervised_loss(
    outputs: Sequence[torch.Tensor],
    batch: PointBatch,
    cfg: LossConfig,
    class_weight: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """The FRNet release's supervised loss: point-head CE plus ``cfg.aux`` times each frustum head's terms.

    Args:
        outputs: point logits (P, K), then the frustum heads' (B, K, H, W) maps.
        batch: the :data:`PointBatch` the outputs belong to; ``label`` is the target.

    Returns:
        ``ce``, ``dice``, ``lovasz``, ``boundary`` (point CE plus the weighted frustum terms) and
        ``sup = cfg.ce * ce + cfg.dice * dice + cfg.lovasz * lovasz + cfg.boundary * boundary``.
    """
    point_logits, maps = outputs[0], outputs[1:]
    label, coors = batch["label"], batch["coors"]
    zero = torch.zeros((), device=label.device)
    terms = dict.fromkeys(TERMS, zero)
    if cfg.ce:
        if cfg.recipe == "rangecps":
            terms["ce"] = per_scan_points(
                cross_entropy,
                batch["offsets"],
                {"logits": point_logits, "target": label},
                weight=class_weight,
            )
        else:
            terms["ce"] = cross_entropy_all_pixels(_as_image(point_logits), _as_image(label), class_weight)
    if maps:
        b, k, h, w = maps[0].shape
        target = frustum_labels(label, coors, b, (h, w), k)
        occupied = torch.zeros(b * h * w, dtype=torch.bool, device=label.device)
        occupied[pixel_index(coors, (h, w))] = True
        occupied = occupied.view(b, h, w)
        for logits in maps:
            for name, value in head_terms(logits, target, occupied, cfg, class_weight).items():
                terms[name] = terms[name] + cfg.aux * value
    terms["sup"] = sum((getattr(cfg, t) * terms[t] for t in TERMS), zero)
    return terms


def _forward(net: nn.Module, batch: PointBatch, grid: tuple[int, int], aux: bool) -> list[torch.Tensor]:
    out = net(batch["points"], batch["coors"], num_scans(batch), grid, aux=aux)
    return [out["point_logits"], *out.get("frustum_logits", [])]


def _all(batch: PointBatch) -> torch.Tensor:
    return torch.ones(batch["points"].shape[0], dtype=torch.bool, device=batch["points"].device)


def _mixed(
    labeled: PointBatch, unlabeled: PointBatch, mixer: LaserMix, generator: torch.Generator
) -> tuple[PointBatch, torch.Tensor, torch.Tensor]:
    """The LaserMix scans of the batches' pairs (their ``label`` still to be set), the gather index that mixes
    per-point tensors, and the number of bands drawn per pair."""
    il, iu = pair_indices(num_scans(labeled), num_scans(unlabeled), labeled["points"].device)
    rows, counts = mixer.draw(len(il), generator, labeled["points"].device)
    gather, coors, offsets = mix_point_pairs(labeled["coors"], unlabeled["coors"], il, iu, rows)
    points = torch.cat([labeled["points"], unlabeled["points"]])[gather]
    return {"points": points, "coors": coors, "offsets": offsets}, gather, counts


def _outputs(
    net: nn.Module, parts: Sequence[PointBatch], batch: PointBatch, grid: tuple[int, int], separate: bool
) -> list[torch.Tensor]:
    """:func:`_forward` (aux) of ``batch = cat_points(parts)``: one forward over it (joint), or one per part with
    the heads' outputs (points, then scans) concatenated after (separate: batch norm in train mode then
    normalises each part with its own statistics, as TorchSemiSeg does)."""
    if not separate:
        return _forward(net, batch, grid, aux=True)
    per_part = [_forward(net, part, grid, aux=True) for part in parts]
    return [torch.cat(heads) for heads in zip(*per_part, strict=True)]


def _cps(
    nets: Sequence[nn.Module],
    labeled: PointBatch,
    unlabeled: PointBatch,
    cfg: LossConfig,
    semi: SemiConfig,
    weight: torch.Tensor | None,
    mixer: LaserMix | None,
    generator: torch.Generator,
    grid: tuple[int, int],
) -> dict[str, torch.Tensor]:
    b_l, b_u = num_scans(labeled), num_scans(unlabeled)
    parts = [labeled, unlabeled]
    if mixer is not None:
        mixed, gather, counts = _mixed(labeled, unlabeled, mixer, generator)
        parts.append({**mixed, "label": torch.zeros_like(gather)})
    batch = cat_points(parts)
    outputs = [_outputs(net, parts, batch, grid, semi.cps_forwards == "separate") for net in nets]
    offsets = batch["offsets"]
    out: dict[str, torch.Tensor] = {}
    total = torch.zeros((), device=offsets.device)
    for k, name in enumerate("ab"):
        terms = point_supervised_loss(_scans(outputs[k], offsets, 0, b_l), labeled, cfg, weight)
        total = total + terms["sup"]
        out[f"sup_{name}"] = terms["sup"].detach()
        for t in TERMS:
            out[t] = out.get(t, 0) + terms[t].detach() / 2
        if mixer is not None:
            # The other net labels the unmixed unlabeled points; its labels fill the unlabeled bands.
            teacher_u = _scans(outputs[1 - k], offsets, b_l, b_l + b_u)[0]
            pseudo = pseudo_labels(teacher_u, _all(unlabeled), semi.pseudo_threshold)
            target = {**mixed, "label": torch.cat([labeled["label"], pseudo])[gather]}
            n_mix = num_scans(target)
            mixed_out = _scans(outputs[k], offsets, b_l + b_u, b_l + b_u + n_mix)
            mixed_terms = point_supervised_loss(mixed_out, target, cfg, weight)
            total = total + semi.mix * mixed_terms["sup"]
            out[f"mix_{name}"] = mixed_terms["sup"].detach()
            out["pseudo_share"] = out.get("pseudo_share", 0) + (pseudo > 0).float().mean() / 2
    n = int(offsets[b_l + b_u])
    cps = per_scan_points(
        cps_loss,
        _rebased(offsets, 0, b_l + b_u),
        {"logits_a": outputs[0][0][:n], "logits_b": outputs[1][0][:n], "valid": _all(batch)[:n]},
        threshold=cfg.cps_threshold,
    )
    out["cps"] = cps.detach()
    if mixer is not None:
        out["bands"] = counts.float().mean()
    out["loss"] = total + cfg.cps * cps
    return out


def _consistency(
    student: torch.Tensor, teacher: torch.Tensor, offsets: torch.Tensor, cfg: LossConfig
) -> torch.Tensor:
    if cfg.recipe == "rangecps":
        valid = torch.ones(student.shape[0], dtype=torch.bool, device=student.device)
        return per_scan_points(
            softmax_mse, offsets, {"logits_s": student, "logits_t": teacher, "valid": valid}
        )
    return softmax_mse(_as_image(student), _as_image(teacher))


def _mean_teacher(
    student: nn.Module,
    teacher: nn.Module,
    labeled: PointBatch,
    unlabeled: PointBatch,
    cfg: LossConfig,
    semi: SemiConfig,
    weight: torch.Tensor | None,
    step: int,
    mixer: LaserMix | None,
    generator: torch.Generator,
    grid: tuple[int, int],
) -> dict[str, torch.Tensor]:
    """:func:`rangecps.teacher.mean_teacher_step` on points: separate forward passes for the labeled, the
    unlabeled and the mixed scans, as the release's segmentor makes them."""
    outputs_l = _forward(student, labeled, grid, aux=True)
    terms = point_supervised_loss(outputs_l, labeled, cfg, weight)
    with torch.no_grad():
        teacher_l = _forward(teacher, labeled, grid, aux=False)[0]
        teacher_u = _forward(teacher, unlabeled, grid, aux=False)[0]
    student_u = _forward(student, unlabeled, grid, aux=False)[0]
    both = cat_points([labeled, unlabeled])["offsets"]
    consistency = _consistency(
        torch.cat([outputs_l[0], student_u]), torch.cat([teacher_l, teacher_u]), both, cfg
    )
    ramp = rampup(step, semi.consistency_rampup)
    out = {k: v.detach() for k, v in terms.items()}
    out |= {"sup_a": terms["sup"].detach(), "consistency": consistency.detach(), "ramp": torch.tensor(ramp)}
    loss = terms["sup"] + semi.consistency * ramp * consistency
    if mixer is not None:
        mixed, gather, counts = _mixed(labeled, unlabeled, mixer, generator)
        pseudo = pseudo_labels(teacher_u, _all(unlabeled), semi.pseudo_threshold)
        target = {**mixed, "label": torch.cat([labeled["label"], pseudo])[gather]}
        mixed_terms = point_supervised_loss(_forward(student, target, grid, aux=True), target, cfg, weight)
        loss = loss + semi.mix * mixed_terms["sup"]
        out["mix_a"] = mixed_terms["sup"].detach()
        out["pseudo_share"] = (pseudo > 0).float().mean()
        out["bands"] = counts.float().mean()
    out["loss"] = loss
    return out


def point_step(
    nets: Sequence[nn.Module],
    labeled: PointBatch,
    unlabeled: PointBatch | None,
    method: str,
    cfg: LossConfig,
    class_weight: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    *,
    grid: tuple[int, int],
    semi: SemiConfig | None = None,
    mixer: LaserMix | None = None,
    step: int = 0,
) -> dict[str, torch.Tensor]:
    """Losses of one step of ``method`` for point models: :func:`rangecps.cps.cps_step` with point batches.

    Args:
        nets: as ``METHODS[method].nets``, called as ``net(points, coors, batch_size, grid, aux=...)``.
        labeled, unlabeled: :data:`PointBatch` es (``unlabeled`` None for ``sup_only``).
        grid: (H, W) of the frustum grid (the projection's image size).
        mixer: the LaserMix bands of the grid's rows (default: rows evenly spaced in inclination).

    Returns:
        The keys of :func:`rangecps.cps.cps_step`; ``pseudo_share`` is the share of unlabeled points given a
        pseudo-label.
    """
    spec = method_spec(method, len(nets))
    if method == "sup_only":
        terms = point_supervised_loss(_forward(nets[0], labeled, grid, aux=True), labeled, cfg, class_weight)
        return {
            "loss": terms["sup"],
            **{k: v.detach() for k, v in terms.items()},
            "sup_a": terms["sup"].detach(),
        }
    if unlabeled is None:
        raise ValueError(f"{method} needs an unlabeled batch")
    semi = semi or SemiConfig()
    generator = generator or torch.Generator()
    if not spec.mixes:
        mixer = None
    elif mixer is None:
        mixer = LaserMix.even_rows(grid[0], tuple(semi.mix_bands))
    if spec.trained == 2:  # cps, cps_lasermix
        return _cps(nets, labeled, unlabeled, cfg, semi, class_weight, mixer, generator, grid)
    return _mean_teacher(
        nets[0], nets[1], labeled, unlabeled, cfg, semi, class_weight, step, mixer, generator, grid
    )


__all__ = [
    "PointBatch",
    "cat_points",
    "per_scan_points",
    "point_step",
    "point_supervised_loss",
    "training_points",
]
