"""Loaders for semi-supervised training: a labeled and an unlabeled stream drawn together every step.

One epoch covers the larger of the two sets once (the unlabeled set, except at 100 % labels); the other set's list
is repeated, reshuffled at each pass, to fill the epoch, as in the published range-view recipe. Every method uses
this epoch length, so runs of ``sup_only`` and ``cps`` with the same epochs take the same number of steps.

Under torchrun each process takes every ``world``-th index of one global stream (the scheme of torch's
``DistributedSampler``), so the processes together see exactly what one process would with a ``world`` times
larger batch. Streams are seeded from (seed, epoch), and each draw's augmentation from (seed, epoch, its position in
the global stream): runs are reproducible whatever the number of workers or processes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from rangecps.data.dataset import RangeDataset
from rangecps.data.sample import collate


class RepeatedShardSampler(Sampler[tuple[int, int]]):
    """Keys ``(index, position)`` into a dataset of ``size`` items: shuffled passes concatenated to ``total``
    indices (the epoch's global stream), then every ``world``-th of them from ``rank`` on, skipping the first
    ``start`` of this process's keys (to resume in the middle of an epoch). ``position`` is the key's place in the
    global stream, which the dataset uses to key the draw's augmentation. ``len`` is ``total // world - start``."""

    def __init__(self, size: int, total: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True):
        if size <= 0:
            raise ValueError("cannot sample from an empty dataset")
        if total % world:
            raise ValueError(f"total {total} must be a multiple of the world size {world}")
        self.size, self.total, self.seed, self.rank, self.world, self.shuffle = (
            size,
            total,
            seed,
            rank,
            world,
            shuffle,
        )
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def global_stream(self) -> np.ndarray:
        g = np.random.default_rng([self.seed, self.epoch])
        passes = math.ceil(self.total / self.size)
        parts = [g.permutation(self.size) if self.shuffle else np.arange(self.size) for _ in range(passes)]
        return np.concatenate(parts)[: self.total]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        positions = np.arange(self.rank, self.total, self.world)[self.start :]
        return iter(zip(self.global_stream()[positions].tolist(), positions.tolist(), strict=True))

    def __len__(self) -> int:
        return self.total // self.world - self.start


def seed_worker(worker_id: int) -> None:
    """Seed numpy and random in a loader worker from torch's per-worker seed (which follows the loader's
    generator), for any library code that uses global RNGs; our own transforms use per-item generators."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)  # noqa: NPY002 - the legacy global RNG is what such library code uses
    random.seed(seed)


def make_loader(
    dataset: RangeDataset, sampler: Sampler[int], batch_size: int, num_workers: int, seed: int
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        drop_last=True,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
    )


@dataclass
class SemiSupervisedLoader:
    """Yields ``(labeled_batch, unlabeled_batch)`` pairs, ``steps_per_epoch x micro_batches`` per epoch;
    ``unlabeled_batch`` is None when there is no unlabeled stream (``sup_only``). :meth:`steps` groups them into
    optimiser steps of ``micro_batches`` consecutive pairs (gradient accumulation; 1: a pair a step)."""

    labeled: DataLoader
    unlabeled: DataLoader | None
    steps_per_epoch: int
    micro_batches: int = 1

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select ``epoch``'s streams, starting at optimiser step ``start_step`` of it (resuming a run)."""
        for loader in (self.labeled, self.unlabeled):
            if loader is not None:
                loader.sampler.set_epoch(epoch, start_step * self.micro_batches * loader.batch_size)
                loader.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def steps(self) -> Iterator[list[tuple[dict, dict | None]]]:
        """The rest of the epoch as optimiser steps: lists of ``micro_batches`` pairs, in stream order."""
        group: list[tuple[dict, dict | None]] = []
        for pair in self:
            group.append(pair)
            if len(group) == self.micro_batches:
                yield group
                group = []

    def __iter__(self) -> Iterator[tuple[dict, dict | None]]:
        if self.unlabeled is None:
            for batch in self.labeled:
                yield batch, None
        else:
            yield from zip(self.labeled, self.unlabeled, strict=True)


def semi_supervised_loader(
    labeled: RangeDataset,
    unlabeled: RangeDataset | None,
    batch_size: int,
    unlabeled_batch_size: int,
    num_workers: int,
    seed: int,
    rank: int = 0,
    world: int = 1,
    unlabeled_size: int | None = None,
    micro_batches: int = 1,
) -> SemiSupervisedLoader:
    """Build the paired streams. ``batch_size`` and ``unlabeled_batch_size`` are per process and micro-batch;
    an optimiser step takes ``micro_batches`` of them (gradient accumulation), so that an epoch has as many steps
    as one of ``world x micro_batches`` processes would.

    ``unlabeled_size`` is the size of the unlabeled set that sets the epoch length (default: ``len(unlabeled)``);
    ``sup_only`` passes it without an unlabeled stream, so that its epochs have the same number of steps.
    """
    if unlabeled_size is None:
        unlabeled_size = len(unlabeled) if unlabeled is not None else 0
    world_micro = world * micro_batches  # the stream's shares per optimiser step
    steps = max(
        math.ceil(len(labeled) / (batch_size * world_micro)),
        math.ceil(unlabeled_size / (unlabeled_batch_size * world_micro)),
    )
    lab_sampler = RepeatedShardSampler(len(labeled), steps * batch_size * world_micro, seed, rank, world)
    lab = make_loader(labeled, lab_sampler, batch_size, num_workers, seed)
    unl = None
    if unlabeled is not None:
        unl_sampler = RepeatedShardSampler(
            len(unlabeled), steps * unlabeled_batch_size * world_micro, seed + 1, rank, world
        )
        unl = make_loader(unlabeled, unl_sampler, unlabeled_batch_size, num_workers, seed + 1)
    return SemiSupervisedLoader(lab, unl, steps, micro_batches)
