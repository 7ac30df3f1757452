"""LaserMix (Kong et al., CVPR 2023) on range images: inclination bands, row masks and the two-way mix.

LaserMix splits the vertical field of view into N bands of equal inclination (N drawn per pair from a set) and
builds two scans from a labeled/unlabeled pair: one with the even bands (counted from the top) of the labeled scan
and the odd bands of the unlabeled one, and its complement. The release (``mmdet3d/models/segmentors/lasermix.py``
of ldkong1205/LaserMix) mixes points by their own pitch over a fixed range ([-25, 3] deg on SemanticKITTI,
[-30, 10] deg on nuScenes).

Here the mix stays on the range images. Every row of a range image is one inclination: with the pitch projection
(KITTI) row r holds the points whose pitch lies in the row's interval, linear in the row; with the ring projection
(nuScenes) row r holds one laser, whose elevation the :class:`~rangecps.data.index.Geometry` gives. A row joins the
band its inclination falls in (:func:`row_inclinations`, :meth:`LaserMix.row_bands`), so the band edges follow the
beams: on a sensor whose beams are unevenly spaced and whose rows are rings, bands hold unequal numbers of rows.
For the pitch projection this is the same as mixing the points by pitch with band edges moved to the nearest row
boundary and projecting the mixed cloud: every pixel takes the nearest point of the scan its row comes from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rangecps.data.index import Geometry


def row_inclinations(geometry: Geometry) -> np.ndarray:
    """(H,) float64: the inclination (deg) of each range-image row, row 0 at the top.

    Pitch projection: the centre of the row's pitch interval, ``fov_up - (r + 0.5) * fov / H``. Ring projection:
    the elevation of the laser in the row (``row = H - 1 - ring``): ``geometry.elevations`` if given (ring 0 first),
    else lasers evenly spaced from ``fov_down`` (ring 0) to ``fov_up``.
    """
    h = geometry.height
    if not geometry.rings:
        fov = geometry.fov_up - geometry.fov_down
        return geometry.fov_up - (np.arange(h) + 0.5) * fov / h
    if geometry.elevations is not None:
        if len(geometry.elevations) != h:
            raise ValueError(f"geometry has {len(geometry.elevations)} elevations for {h} rows")
        by_ring = np.asarray(geometry.elevations, dtype=np.float64)
    else:
        by_ring = np.linspace(geometry.fov_down, geometry.fov_up, h)
    return by_ring[::-1].copy()


@dataclass(frozen=True)
class LaserMix:
    """Where the bands lie on one geometry's rows, and the draw of each pair's partition.

    Attributes:
        row_pitch: (H,) inclination of every row (deg), from :func:`row_inclinations`.
        pitch_range: (low, high) inclination the N bands split evenly (deg): the release's ``pitch_angles``.
        bands: the numbers of bands to draw from, uniformly (the release's ``num_areas``).
        shard: (rank, world): under DDP every process draws the partitions of the whole global batch from the same
            generator state and keeps every ``world``-th from ``rank`` on, as the loader shards the scans, so the
            draws do not depend on how the batch is split.
    """

    row_pitch: tuple[float, ...]
    pitch_range: tuple[float, float]
    bands: tuple[int, ...]
    shard: tuple[int, int] = (0, 1)

    @classmethod
    def for_geometry(
        cls,
        geometry: Geometry,
        bands: tuple[int, ...],
        pitch_range: tuple[float, float] | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> LaserMix:
        """Bands over ``pitch_range`` or, if None, over the sensor's own vertical field of view."""
        low, high = pitch_range if pitch_range is not None else (geometry.fov_down, geometry.fov_up)
        if not low < high:
            raise ValueError(f"LaserMix pitch range must rise, got [{low}, {high}]")
        if not bands or min(bands) < 2:
            raise ValueError(f"LaserMix needs at least 2 bands per partition, got {list(bands)}")
        pitch = tuple(float(p) for p in row_inclinations(geometry))
        return cls(pitch, (float(low), float(high)), tuple(bands), shard)

    @classmethod
    def even_rows(cls, height: int, bands: tuple[int, ...]) -> LaserMix:
        """Rows evenly spaced in inclination over the band range (any pitch-projected image)."""
        pitch = tuple(float(p) for p in 1.0 - (np.arange(height) + 0.5) / height)
        return cls(pitch, (0.0, 1.0), tuple(bands))

    def row_bands(self, num_bands: int) -> torch.Tensor:
        """(H,) int64: the band of every row, 0 at the top (highest inclination) to ``num_bands - 1``.

        Band k covers inclinations ``(high - (k + 1) * step, high - k * step]``, step = (high - low) / N; rows
        outside the range join the nearest band (the release clamps pitch into the range).
        """
        low, high = self.pitch_range
        pitch = torch.tensor(self.row_pitch, dtype=torch.float64)
        band = torch.floor((high - pitch) / (high - low) * num_bands)
        return band.clamp(0, num_bands - 1).long()

    def draw(
        self, pairs: int, generator: torch.Generator, device: torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One partition per pair: ``(rows_from_labeled (pairs, H) bool, num_bands (pairs,) int64)``.

        ``rows_from_labeled`` is True in the even bands; the pair's first mixed scan takes those rows from the
        labeled scan, its second mixed scan the complement (:func:`mix_pairs`). ``rows_from_labeled`` is on
        ``device``; the draw itself is on the CPU generator, so it does not depend on the device.
        """
        rank, world = self.shard
        choice = torch.randint(len(self.bands), (pairs * world,), generator=generator)[rank::world]
        counts = torch.tensor(self.bands)[choice]
        rows = torch.stack([self.row_bands(int(n)) % 2 == 0 for n in counts])
        return rows.to(device), counts


def mix_rows(a: torch.Tensor, b: torch.Tensor, rows_from_a: torch.Tensor) -> torch.Tensor:
    """Mix two batches of images row by row.

    Args:
        a, b: (B, ..., H, W) tensors of one shape (inputs (B, C, H, W), labels or masks (B, H, W)).
        rows_from_a: (B, H) bool.

    Returns:
        (B, ..., H, W): rows of ``a`` where ``rows_from_a``, else rows of ``b``.
    """
    if a.shape != b.shape:
        raise ValueError(f"mix_rows: shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    shape = [a.shape[0]] + [1] * (a.dim() - 3) + [a.shape[-2], 1]
    return torch.where(rows_from_a.view(shape), a, b)


def mix_pairs(
    labeled: torch.Tensor, unlabeled: torch.Tensor, rows_from_labeled: torch.Tensor
) -> torch.Tensor:
    """Both LaserMix scans of every pair: (2P, ..., H, W), pair p giving rows 2p and 2p + 1.

    Scan 2p takes the rows where ``rows_from_labeled[p]`` from ``labeled[p]`` and the others from
    ``unlabeled[p]``; scan 2p + 1 is the complement. ``labeled``, ``unlabeled``: (P, ..., H, W) of one shape
    (inputs, masks, labels or pseudo-labels); ``rows_from_labeled``: (P, H) bool.
    """
    first = mix_rows(labeled, unlabeled, rows_from_labeled)
    second = mix_rows(labeled, unlabeled, ~rows_from_labeled)
    return torch.stack([first, second], 1).flatten(0, 1)


def pair_indices(
    n_labeled: int, n_unlabeled: int, device: torch.device | None = None
) -> tuple[torch.Tensor, ...]:
    """Indices of the labeled and unlabeled scan of each pair: max(B, B') pairs, scan i of each batch with scan
    i of the other, cycling through the smaller batch (equal batches pair one to one, as the release does)."""
    pairs = torch.arange(max(n_labeled, n_unlabeled), device=device)
    return pairs % n_labeled, pairs % n_unlabeled


def mix_point_pairs(
    coors_labeled: torch.Tensor,
    coors_unlabeled: torch.Tensor,
    pair_labeled: torch.Tensor,
    pair_unlabeled: torch.Tensor,
    rows_from_labeled: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Both LaserMix scans of every pair on point batches (point models such as FRNet): :func:`mix_pairs` for
    points. A point belongs to the band of its row, so mixing by rows is mixing by inclination, as the release
    mixes points.

    Mixed scan 2p takes the points of labeled scan ``pair_labeled[p]`` whose row is in ``rows_from_labeled[p]``
    and the points of unlabeled scan ``pair_unlabeled[p]`` whose row is not; scan 2p + 1 is the complement.

    Args:
        coors_labeled: (P_l, 3) int64 (scan, row, col) of the labeled batch's points; coors_unlabeled: (P_u, 3).
        pair_labeled, pair_unlabeled: (N,) int64 scans of each pair (:func:`pair_indices`).
        rows_from_labeled: (N, H) bool (:meth:`LaserMix.draw`).

    Returns:
        ``gather`` (P_m,) int64 into the concatenation of the two batches' points (labeled first): any per-point
        tensor is mixed as ``torch.cat([labeled_t, unlabeled_t])[gather]``; ``coors`` (P_m, 3) of the mixed
        scans (scan index 0..2N-1, scans in order); ``offsets`` (2N + 1,): mixed scan m is
        ``[offsets[m], offsets[m + 1])``.
    """
    offset_u = coors_labeled.shape[0]
    gather, scans = [], []
    for p in range(len(pair_labeled)):
        in_l = coors_labeled[:, 0] == pair_labeled[p]
        in_u = coors_unlabeled[:, 0] == pair_unlabeled[p]
        for from_l in (rows_from_labeled[p], ~rows_from_labeled[p]):
            take_l = torch.nonzero(in_l & from_l[coors_labeled[:, 1]]).squeeze(1)
            take_u = torch.nonzero(in_u & ~from_l[coors_unlabeled[:, 1]]).squeeze(1) + offset_u
            gather.append(torch.cat([take_l, take_u]))
            scans.append(len(take_l) + len(take_u))
    index = torch.cat(gather)
    coors = torch.cat([coors_labeled, coors_unlabeled])[index]
    sizes = torch.tensor(scans, dtype=torch.int64, device=coors.device)
    coors[:, 0] = torch.repeat_interleave(torch.arange(len(scans), device=coors.device), sizes)
    offsets = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)])
    return index, coors, offsets
