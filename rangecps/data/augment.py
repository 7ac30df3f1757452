"""Train-time augmentations of a scan's points, applied before projection.

Each transform reads and writes a :class:`~rangecps.io.Scan` (``points`` (N, 4) float32, ``ring`` (N,) int32 or
None, ``labels`` (N,) int64 or None) and draws its randomness from the ``np.random.Generator`` it is given, so a
draw keyed by the sampler's position reproduces its stream exactly. Labels and rings stay attached to their
points: transforms that move points only change coordinates, and :class:`PointDropout` and :class:`MinDistance`
drop points, rings and labels together.

:func:`build_augment` follows the order of the LaserMix range-view release (``data/semantickitti/laserscan.py``
and ``data/nuscenes/augment.py`` at 19f55e2): drop, flip, scale, rotate, translate; the column roll of the range
image comes after projection (see :mod:`rangecps.data.dataset`). FRNet's FrustumMix, InstanceCopy and
RangeInterpolation come after these transforms and mix in other scans: see :mod:`rangecps.data.scan_mixing`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numba
import numpy as np

from rangecps.config import AugmentConfig
from rangecps.io import Scan


@numba.njit(cache=True, nogil=True)
def _affine_xyz(points: np.ndarray, m: np.ndarray, t: np.ndarray) -> np.ndarray:
    """A copy of ``points (N, C>=3)`` with x, y, z replaced by ``m (3, 3) @ (x, y, z) + t (3,)`` in float32.

    One pass over the points: numpy's ``points[:, :3] *= k`` loops over rows of 3 and took 4 ms per 120k-point
    scan, the largest single cost of the data pipeline."""
    out = np.empty_like(points)
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m.ravel()
    t0, t1, t2 = t[0], t[1], t[2]
    for i in range(points.shape[0]):
        x, y, z = points[i, 0], points[i, 1], points[i, 2]
        out[i, 0] = m00 * x + m01 * y + m02 * z + t0
        out[i, 1] = m10 * x + m11 * y + m12 * z + t1
        out[i, 2] = m20 * x + m21 * y + m22 * z + t2
        for c in range(3, points.shape[1]):
            out[i, c] = points[i, c]
    return out


def affine_scan(scan: Scan, m: np.ndarray, t: np.ndarray | None = None) -> Scan:
    """``scan`` with x, y, z moved to ``m (3, 3) @ xyz + t (3,)`` (float32, one pass); rings and labels kept."""
    t = np.zeros(3) if t is None else t
    points = np.ascontiguousarray(scan.points, np.float32)
    return replace(scan, points=_affine_xyz(points, m.astype(np.float32), t.astype(np.float32)))


@dataclass(frozen=True)
class RandomRotate:
    """Rotate about the vertical axis by a yaw drawn uniformly from a full turn. Reads/writes ``points[:, :2]``."""

    def affine(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        yaw = rng.uniform(0.0, 2.0 * np.pi)
        c, s = np.cos(yaw), np.sin(yaw)
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]), np.zeros(3)

    def __call__(self, scan: Scan, rng: np.random.Generator) -> Scan:
        return affine_scan(scan, *self.affine(rng))


@dataclass(frozen=True)
class RandomFlip:
    """Mirror across the x axis (y -> -y) and/or the y axis (x -> -x), each with probability 1/2: the same
    distribution as the KITTI release's one of four (none, x, y, both) and nuScenes' two coin flips.
    Reads/writes ``points[:, :2]``."""

    def affine(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        flip_y, flip_x = rng.random(2) < 0.5
        return np.diag([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0, 1.0]), np.zeros(3)

    def __call__(self, scan: Scan, rng: np.random.Generator) -> Scan:
        m, t = self.affine(rng)
        return scan if (m == np.eye(3)).all() else affine_scan(scan, m, t)


@dataclass(frozen=True)
class RandomScale:
    """Scale x, y (and z when ``z``) by one factor. Reads/writes ``points[:, :3]``.

    ``mode`` "uniform": U(low, high). "up_or_inverse": U(1, high), replaced with probability 1/2 by exactly
    1 / high (the KITTI release). "up_or_reciprocal": U(1, high), replaced with probability 1/2 by its
    reciprocal (the nuScenes release).
    """

    low: float
    high: float
    mode: str = "uniform"
    z: bool = True

    def factor(self, rng: np.random.Generator) -> float:
        if self.mode == "uniform":
            return float(rng.uniform(self.low, self.high))
        up = float(rng.uniform(1.0, self.high))
        if rng.random() < 0.5:
            return 1.0 / self.high if self.mode == "up_or_inverse" else 1.0 / up
        return up

    def affine(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        s = self.factor(rng)
        return np.diag([s, s, s if self.z else 1.0]), np.zeros(3)

    def __call__(self, scan: Scan, rng: np.random.Generator) -> Scan:
        return affine_scan(scan, *self.affine(rng))


@dataclass(frozen=True)
class RandomTranslate:
    """Shift the whole scan by one vector drawn from N(0, sigma^2) per axis and clipped to +-3 sigma (what the
    LaserMix release calls "jitter"). Reads/writes ``points[:, :3]``."""

    sigma: float

    def affine(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        t = np.clip(rng.normal(0.0, self.sigma, 3), -3.0 * self.sigma, 3.0 * self.sigma)
        return np.eye(3), t

    def __call__(self, scan: Scan, rng: np.random.Generator) -> Scan:
        return affine_scan(scan, *self.affine(rng))


@dataclass(frozen=True)
class PointNoise:
    """Add independent gaussian noise of std ``sigma`` metres to every point's x, y, z.
    Reads/writes ``points[:, :3]``."""

    sigma: float

    def __call__(self, scan: Scan, rng: np.random.Generator) -> Scan:
        pts = scan.points.copy()
        pts[:, :3] += rng.normal(0.0, self.sigma, size=(len(pts), 3)).astype(np.float32)
        return replace(scan, points=pts)


def _keep(scan: Scan, keep: np.ndarray) -> Scan:
    return replace(
        scan,
        points=scan.points[keep],
        ring=None if scan.ring is None else scan.ring[keep],
        labels=None if scan.labels is None else scan.labels[keep],
    )


@dataclass(frozen=True)
class PointDropout:
    """Drop up to a share ``max_share`` of the points, as the KITTI release does: a count drawn uniformly from
    ``[0, max_share * N)``, that many indices drawn with replacement, the distinct ones dropped. Reads ``points``;
    writes ``points``, ``ring`` and ``labels`` (the same points removed from each)."""

    max_share: float

    def __call__(self, scan: Scan, rng: np.random.Generator) -> Scan:
        n = len(scan.points)
        most = int(n * self.max_share)
        if most < 1:
            return scan
        keep = np.ones(n, bool)
        keep[rng.integers(0, n, size=int(rng.integers(0, most)))] = False
        return _keep(scan, keep)


@dataclass(frozen=True)
class MinDistance:
    """Drop the points closer than ``radius`` metres to the sensor in the horizontal plane (the nuScenes
    release drops those within 0.9 m: returns from the ego vehicle). Reads ``points[:, :2]``; writes
    ``points``, ``ring`` and ``labels``. Draws nothing."""

    radius: float

    def __call__(self, scan: Scan, rng: np.random.Generator) -> Scan:
        xy = scan.points[:, :2]
        return _keep(scan, np.einsum("ij,ij->i", xy, xy) >= self.radius**2)


Transform = (
    MinDistance | PointDropout | RandomFlip | RandomScale | RandomRotate | RandomTranslate | PointNoise
)
AFFINE = (RandomFlip, RandomScale, RandomRotate, RandomTranslate)


@dataclass(frozen=True)
class Compose:
    """Apply transforms in order. Consecutive affine transforms (flip, scale, rotate, translate) are composed into
    one matrix and offset (float64) and applied in one pass: the same draws and the same geometry as applying them
    one by one, up to float32 rounding, at a fraction of the cost (each pass allocates a fresh copy of the points).
    """

    transforms: tuple[Transform, ...]

    def __call__(self, scan: Scan, rng: np.random.Generator) -> Scan:
        m = t = None
        for tr in self.transforms:
            if isinstance(tr, AFFINE):
                m2, t2 = tr.affine(rng)
                m, t = (m2, t2) if m is None else (m2 @ m, m2 @ t + t2)
                continue
            if m is not None:
                scan, m, t = affine_scan(scan, m, t), None, None
            scan = tr(scan, rng)
        return scan if m is None else affine_scan(scan, m, t)


def build_augment(cfg: AugmentConfig) -> Compose:
    """The point transforms an :class:`AugmentConfig` asks for, in the release's order: minimum distance, drop,
    flip, scale, rotate, translate, point noise. (The column roll is image space: see the dataset.)"""
    ts: list[Transform] = []
    if cfg.min_distance > 0:
        ts.append(MinDistance(cfg.min_distance))
    if cfg.dropout > 0:
        ts.append(PointDropout(cfg.dropout))
    if cfg.flip:
        ts.append(RandomFlip())
    if cfg.scale_mode != "uniform" or tuple(cfg.scale) != (1.0, 1.0):
        ts.append(RandomScale(*cfg.scale, mode=cfg.scale_mode, z=cfg.scale_z))
    if cfg.rotate:
        ts.append(RandomRotate())
    if cfg.translate > 0:
        ts.append(RandomTranslate(cfg.translate))
    if cfg.point_noise > 0:
        ts.append(PointNoise(cfg.point_noise))
    return Compose(tuple(ts))
