"""Plain NumPy range projection: the test oracle and benchmark baseline for :mod:`rangecps.projection`.

Written independently of the numba kernels and as directly as the definition allows: RangeNet++'s formulas with
float64 ``np.arctan2`` / ``np.arcsin`` over all points at once, then the nearest point of each pixel found by one
stable sort of ``(pixel, depth)`` keys instead of a z-buffer. Its cost is that of RangeNet++'s own NumPy code:
vectorised trigonometry plus one sort.

Conventions shared with the numba version: fov in degrees converted as ``deg / 180 * pi``; coordinates read as
float32; ``depth`` is the float64 range rounded to float32; points with a non-finite coordinate or ``r == 0``
have ``rows = cols = -1`` and ``depth = -1``; ties in depth go to the lower point index. The numba version agrees
exactly wherever NumPy's ``arctan2``/``arcsin`` round like the C library's; elsewhere (e.g. NumPy's AVX-512 loops)
only points within ~1e-15 pixel of a pixel edge may differ, by one pixel.
"""

from __future__ import annotations

import math

import numpy as np

from rangecps.projection import Projection

__all__ = [
    "project_rings_reference",
    "project_spherical_reference",
    "spherical_coordinates",
    "zbuffer_reference",
]


def _range_and_yaw(xyz: np.ndarray, width: int) -> tuple[np.ndarray, ...]:
    """``x, y, z, r (N,) float64``, ``valid (N,) bool`` and the column value before ``floor``."""
    xyz = np.asarray(xyz)
    x, y, z = (xyz[:, k].astype(np.float32).astype(np.float64) for k in range(3))
    with np.errstate(invalid="ignore"):
        r = np.sqrt(x * x + y * y + z * z)
        # float32 squares cannot overflow float64: r is finite exactly when all three coordinates are
        valid = np.isfinite(r) & (r > 0)
        yaw = -np.arctan2(y, x)
        col_value = 0.5 * (yaw / np.pi + 1.0) * width
    return x, y, z, r, valid, col_value


def spherical_coordinates(
    xyz: np.ndarray, height: int, width: int, fov_up: float, fov_down: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Continuous image coordinates before ``floor`` and clamping.

    Args:
        xyz: ``(N, >=3)`` points.
    Returns:
        ``row_value, col_value (N,) float64`` (NaN for invalid points), ``depth (N,) float32`` (-1 for invalid
        points) and ``valid (N,) bool``.
    """
    _, _, z, r, valid, col_value = _range_and_yaw(xyz, width)
    up, down = fov_up / 180.0 * math.pi, fov_down / 180.0 * math.pi
    with np.errstate(invalid="ignore", divide="ignore"):
        pitch = np.arcsin(z / r)
        row_value = (1.0 - (pitch - down) / (up - down)) * height
    return np.where(valid, row_value, np.nan), np.where(valid, col_value, np.nan), _depth(r, valid), valid


def _depth(r: np.ndarray, valid: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # ranges beyond float32 (coordinates near 3e38) become inf, as in numba
        return np.where(valid, r, -1.0).astype(np.float32)


def _floor_clamp(value: np.ndarray, size: int, valid: np.ndarray) -> np.ndarray:
    out = np.clip(np.floor(np.where(valid, value, 0.0)), 0, size - 1).astype(np.int32)
    out[~valid] = -1
    return out


def zbuffer_reference(
    rows: np.ndarray, cols: np.ndarray, depth: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest point per pixel by sorting: ``index (H, W) int32`` and ``range (H, W) float32``, -1 where empty.

    Args:
        rows, cols: ``(N,)`` pixel of every point, -1 for points without one.
        depth: ``(N,) float32``, >= 0 for points with a pixel.
    """
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    depth = np.asarray(depth, dtype=np.float32)
    points = np.flatnonzero(rows >= 0)
    pixel = rows[points] * width + cols[points]
    # One stable sort by (pixel, depth). Non-negative float32s order like their bit patterns, so one int64 key
    # holds both; equal keys keep index order, so the first point of a pixel is the nearest and, among equally
    # near ones, the lowest index.
    key = (pixel << 32) | depth[points].view(np.uint32).astype(np.int64)
    order = np.argsort(key, kind="stable")
    pixel, points = pixel[order], points[order]
    first = np.ones(pixel.size, dtype=bool)
    first[1:] = pixel[1:] != pixel[:-1]
    index = np.full(height * width, -1, dtype=np.int32)
    index[pixel[first]] = points[first]
    range_image = np.full(height * width, -1.0, dtype=np.float32)
    range_image[pixel[first]] = depth[points[first]]
    return index.reshape(height, width), range_image.reshape(height, width)


def _projection(rows: np.ndarray, cols: np.ndarray, depth: np.ndarray, height: int, width: int) -> Projection:
    index, range_image = zbuffer_reference(rows, cols, depth, height, width)
    return Projection(rows, cols, depth, index, range_image, index >= 0, height, width)


def project_spherical_reference(
    xyz: np.ndarray, height: int = 64, width: int = 2048, fov_up: float = 3.0, fov_down: float = -25.0
) -> Projection:
    """NumPy version of :func:`rangecps.projection.project_spherical` (no input checks)."""
    row_value, col_value, depth, valid = spherical_coordinates(xyz, height, width, fov_up, fov_down)
    rows, cols = _floor_clamp(row_value, height, valid), _floor_clamp(col_value, width, valid)
    return _projection(rows, cols, depth, height, width)


def project_rings_reference(
    xyz: np.ndarray, ring: np.ndarray, height: int = 32, width: int = 1920
) -> Projection:
    """NumPy version of :func:`rangecps.projection.project_rings` (no input checks)."""
    _, _, _, r, valid, col_value = _range_and_yaw(xyz, width)
    rows = np.where(valid, height - 1 - np.asarray(ring, dtype=np.int64), -1).astype(np.int32)
    return _projection(rows, _floor_clamp(col_value, width, valid), _depth(r, valid), height, width)
