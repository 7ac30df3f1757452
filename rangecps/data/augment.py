"""Train-time augmentations of a scan's points, applied before projection.

Each transform reads and writes a :class:`~rangecps.io.Scan` (``points`` (N, 4) float32, ``ring`` (N,) int32 or
None, ``labels`` (N,) int64 or None) and draws its randomness from the ``np.random.Generator`` it is given, so a
worker seeded once reproduces its stream exactly. Labels and rings stay attached to their points: transforms that
move points only change coordinates, and :class:`PointDropout` drops points, rings and labels together.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from rangecps.config import AugmentConfig
from rangecps.io import Scan


@dataclass(frozen=True)
class RandomRotate:
    """Rotate about the vertical axis by a uniform yaw in [0, 2 pi). Reads/writes ``points[:, :2]``."""

    def __call__(self, scan: Scan, rng: np.random.Generator) -> Scan:
        yaw = rng.uniform(0.0, 2.0 * np.pi)
        c, s = np.float32(np.cos(yaw)), np.float32(np.sin(yaw))
        pts = scan.points.copy()
        x, y = scan.points[:, 0], scan.points[:, 1]
        pts[:, 0] = c * x - s * y
        pts[:, 1] = s * x + c * y
        return replace(scan, points=pts)


@dataclass(frozen=True)
class RandomFlip:
    """Mirror across the x axis (y -> -y) and/or the y axis (x -> -x), each with probability 1/2.
    Reads/writes ``points[:, :2]``."""

    def __call__(self, scan: Scan, rng: np.random.Generator) -> Scan:
        flip_y, flip_x = rng.random(2) < 0.5
        if not (flip_x or flip_y):
            return scan
        pts = scan.points.copy()
        if flip_x:
            pts[:, 0] = -pts[:, 0]
        if flip_y:
            pts[:, 1] = -pts[:, 1]
        return replace(scan, points=pts)


@dataclass(frozen=True)
class RandomScale:
    """Scale x, y, z by one factor drawn uniformly from ``[low, high]``. Reads/writes ``points[:, :3]``."""

    low: float
    high: float

    def __call__(self, scan: Scan, rng: np.random.Generator) -> Scan:
        pts = scan.points.copy()
        pts[:, :3] *= np.float32(rng.uniform(self.low, self.high))
        return replace(scan, points=pts)


@dataclass(frozen=True)
class Jitter:
    """Add independent gaussian noise of std ``sigma`` metres to x, y, z. Reads/writes ``points[:, :3]``."""

    sigma: float

    def __call__(self, scan: Scan, rng: np.random.Generator) -> Scan:
        pts = scan.points.copy()
        pts[:, :3] += rng.normal(0.0, self.sigma, size=(len(pts), 3)).astype(np.float32)
        return replace(scan, points=pts)


@dataclass(frozen=True)
class PointDropout:
    """Drop each point with probability ``share``. Reads ``points``; writes ``points``, ``ring`` and ``labels``
    (the same points removed from each)."""

    share: float

    def __call__(self, scan: Scan, rng: np.random.Generator) -> Scan:
        keep = rng.random(len(scan.points)) >= self.share
        return replace(
            scan,
            points=scan.points[keep],
            ring=None if scan.ring is None else scan.ring[keep],
            labels=None if scan.labels is None else scan.labels[keep],
        )


Transform = RandomRotate | RandomFlip | RandomScale | Jitter | PointDropout


@dataclass(frozen=True)
class Compose:
    """Apply transforms in order."""

    transforms: tuple[Transform, ...]

    def __call__(self, scan: Scan, rng: np.random.Generator) -> Scan:
        for t in self.transforms:
            scan = t(scan, rng)
        return scan


def build_augment(cfg: AugmentConfig) -> Compose:
    """The transforms an :class:`AugmentConfig` asks for, in a fixed order (drop, rotate, flip, scale, jitter)."""
    ts: list[Transform] = []
    if cfg.dropout > 0:
        ts.append(PointDropout(cfg.dropout))
    if cfg.rotate:
        ts.append(RandomRotate())
    if cfg.flip:
        ts.append(RandomFlip())
    if tuple(cfg.scale) != (1.0, 1.0):
        ts.append(RandomScale(*cfg.scale))
    if cfg.jitter > 0:
        ts.append(Jitter(cfg.jitter))
    return Compose(tuple(ts))
