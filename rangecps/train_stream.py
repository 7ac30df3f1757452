"""What the training loop reads: the labeled and unlabeled streams of a run, the length of its schedule, what
a batch says about itself (its scans, their non-finite points) and its losses for the run's kind of model.

Kept apart from :mod:`rangecps.train` so that the loop reads as the loop. The streams are
:func:`rangecps.data.loader.semi_supervised_loader` over the run's labeled and unlabeled scans; point models
(FRNet) get point-input datasets (``RangeDataset(point_inputs=True)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rangecps.config import Config
from rangecps.cps import cps_step
from rangecps.data.build import DataBundle
from rangecps.data.lasermix import LaserMix
from rangecps.data.loader import SemiSupervisedLoader, semi_supervised_loader
from rangecps.dist import DistInfo
from rangecps.methods import Method
from rangecps.point_step import point_step, training_points


@dataclass
class TrainingStream:
    """The run's batches and schedule: ``loader`` yields (labeled, unlabeled or None) batches; ``epochs`` and
    ``total_steps`` follow from ``train.epochs`` (per labeled share) or, for an iteration-based schedule, from
    ``train.steps`` (``epochs`` then counts the epochs those steps span)."""

    loader: SemiSupervisedLoader
    labeled_ids: tuple[str, ...]
    epochs: int
    total_steps: int


def training_stream(
    cfg: Config, data: DataBundle, spec: Method, info: DistInfo, point: bool
) -> TrainingStream:
    """The :class:`TrainingStream` of ``cfg`` on ``data`` for method ``spec``; ``point``: point-input batches."""
    labeled_ids = data.split.labeled
    unlabeled_ids = data.split.unlabeled if spec.unlabeled and data.split.unlabeled else None
    if spec.unlabeled and unlabeled_ids is None:
        # At 100 % labels the semi-supervised methods still learn from pseudo-labels and consistency: the labeled
        # scans serve as the unlabeled stream.
        unlabeled_ids = labeled_ids
    common = {"augment": cfg.data.augment, "with_points": False, "point_inputs": point}
    labeled_ds = data.dataset("train", labeled_ids, seed=cfg.train.seed, **common)
    unlabeled_ds = (
        data.dataset("train", unlabeled_ids, labels=False, seed=cfg.train.seed + 1, **common)
        if unlabeled_ids is not None
        else None
    )
    loader = semi_supervised_loader(
        labeled_ds,
        unlabeled_ds,
        cfg.data.batch_size,
        cfg.data.unlabeled_batch_size,
        cfg.data.num_workers,
        cfg.train.seed,
        info.rank,
        info.world,
        unlabeled_size=len(data.split.unlabeled),
        micro_batches=cfg.train.accumulate,
    )
    epochs = cfg.train.epochs_by_labels.get(cfg.data.labels, cfg.train.epochs)
    total_steps = cfg.train.steps or epochs * loader.steps_per_epoch
    if cfg.train.steps:
        epochs = -(-total_steps // loader.steps_per_epoch)
    return TrainingStream(loader, tuple(labeled_ids), epochs, total_steps)


def batch_losses(
    nets: list[nn.Module],
    batches: list[dict[str, Any] | None],
    cfg: Config,
    weight: torch.Tensor | None,
    generator: torch.Generator,
    grid: tuple[int, int],
    mixer: LaserMix | None,
    step: int,
    point: bool,
) -> dict[str, torch.Tensor]:
    """The named losses of one (labeled, unlabeled or None) batch on the device: :func:`rangecps.cps.cps_step`
    for image nets, :func:`rangecps.point_step.point_step` on the batch's points for point nets (``grid``: the
    frustum grid)."""
    if point:
        points = [training_points(b) if b is not None else None for b in batches]
        return point_step(nets, *points, cfg.train.method, cfg.loss, weight, generator, grid=grid,
                          semi=cfg.semi, mixer=mixer, step=step)  # fmt: skip
    return cps_step(nets, *batches, cfg.train.method, cfg.loss, weight, generator, semi=cfg.semi, mixer=mixer,
                    step=step)  # fmt: skip


def non_finite_scans(labeled: dict[str, Any], unlabeled: dict[str, Any] | None) -> list[tuple[str, int]]:
    """``(scan, number of points with a NaN or infinite value)`` of a training batch's scans that hold any."""
    out = []
    for batch in (labeled, unlabeled):
        if batch is None or "non_finite" not in batch:
            continue
        counts = torch.as_tensor(batch["non_finite"]).reshape(-1).tolist()
        ids = batch["scan_id"] if len(counts) == len(batch["scan_id"]) else [", ".join(batch["scan_id"])]
        out += [(i, int(n)) for i, n in zip(ids, counts, strict=True) if n]
    return out


def scan_ids(labeled: dict[str, Any], unlabeled: dict[str, Any] | None) -> list[str]:
    """The scans of a training batch, for messages: the labeled ones, then the unlabeled ones."""
    ids = list(labeled["scan_id"])
    if unlabeled is not None:
        ids += [f"{i} (unlabeled)" for i in unlabeled["scan_id"]]
    return ids
