"""Range-view projection of LiDAR scans: every point's pixel, and the nearest point of every pixel.

Geometry (RangeNet++): ``yaw = -atan2(y, x)``, ``pitch = asin(z / r)``,
``col = floor(0.5 (yaw / pi + 1) W)``, ``row = floor((1 - (pitch - fov_down) / (fov_up - fov_down)) H)``, both
clamped into the image, so points above or below the vertical field of view land in the first or last row. The
ring projection (nuScenes) keeps the column and takes ``row = H - 1 - ring``. Each pixel holds the nearest of its
points (z-buffer, ties to the lower point index). Points with a non-finite coordinate or ``r == 0`` get no pixel.

How it is fast (under 1 ms for a 120,000-point 64 x 2048 scan on one core, tens of times faster than
:mod:`rangecps.projection_reference`; ``benchmarks/bench_projection.py`` measures both): one vectorised pass
computes the angles in float32, eight points per AVX2 instruction, with a polynomial arctangent instead of libm;
one scalar pass runs the z-buffer on packed ``(depth bits << 32) | index`` keys, O(N), no sort; one pass decodes
the keys into images.

Why it still matches the float64 reference exactly: float32 angles could flip a ``floor`` where a point lies
within ~1e-4 pixel of a pixel edge. The fast pass flags every point whose float32 row or column lies within a
proven error bound of an edge (about 0.2 % of a real scan), and points outside the range where float32 is safe;
the z-buffer pass recomputes those with the same float64 libm formulas as the NumPy reference. Results are
identical on every scan tried; only a libm that rounds ``atan2``/``asin`` differently from NumPy's (e.g. NumPy's
AVX-512 SVML loops) could still move a point lying within ~1e-15 pixel of an edge by one pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

__all__ = [
    "Projection",
    "gather_channels",
    "labels_from_pixels",
    "pixel_labels",
    "project_rings",
    "project_spherical",
]

# ``contract`` lets LLVM fuse multiply-adds and ``arcp`` turns divisions by constants into products. No ``nnan``,
# ``ninf`` or ``nsz``: the kernels test for NaN/inf and atan2 needs signed zeros (y = -0 puts a point in the last
# column, y = +0 in the first). ``error_model="numpy"`` drops the zero-division checks that block vectorisation.
_FAST = {"cache": True, "nogil": True, "error_model": "numpy", "fastmath": {"contract", "arcp"}}
# Plain IEEE float64, like NumPy. ``fastmath=False`` must be explicit: numba compiles a callee that leaves it unset
# with its caller's flags, and ``arcp`` alone moves points lying exactly on a pixel edge (x = -y, say).
_EXACT = {"cache": True, "nogil": True, "error_model": "numpy", "fastmath": False}

_EMPTY_KEY = np.iinfo(np.int64).max
_MINUS_ONE_F32_BITS = np.int32(np.array(-1.0, np.float32).view(np.int32))
_NEEDS_EXACT = -2  # row marker left by the fast pass for points the z-buffer pass must recompute in float64
_MAX_POINTS = 2**31 - 1  # point indices are stored as int32

_f32 = np.float32
# atan(u) ~ u P(u^2) on |u| <= tan(pi/8): a minimax fit made for this module (Lawson iteration, 4th degree in
# u^2); its error in float32 arithmetic is below 4.1e-8 rad.
_A0, _A1, _A2, _A3, _A4 = (_f32(0.9999998807907104), _f32(-0.3333219587802887), _f32(0.1996176391839981),
                           _f32(-0.13753007352352142), _f32(0.0772927775979042))  # fmt: skip
_TAN_PI_8 = _f32(math.tan(math.pi / 8))
_PI_4, _PI_2, _PI = _f32(math.pi / 4), _f32(math.pi / 2), _f32(math.pi)
_ONE, _ZERO, _HALF = _f32(1.0), _f32(0.0), _f32(0.5)
# Worst-case error of the float32 column value: angle error <= 4.7e-7 rad (polynomial, the ratio's three
# roundings, three offset additions near pi) times W / 2 pi, plus two roundings of a value <= W: < 1.7e-7 W.
# The row value adds the rxy rounding: < 7e-7 rad times H / fov, plus roundings of a value near H: < 1.2e-7 H.
# The margins below are 2-3x those bounds; measured errors on 2e7 random points are 6.5e-8 W and 2.2e-7 H / fov.
_COL_MARGIN = 4e-7  # times W
_ROW_MARGIN_ANGLE, _ROW_MARGIN_LINEAR = 2e-6, 3e-7  # times H / fov, times H
# Beyond r in [1e-15, 1e15] m float32 squares and sums could under/overflow: such points take the exact path.
_SAFE_R2_MIN, _SAFE_R2_MAX = 1e-30, 1e30


@dataclass(frozen=True, eq=False)
class Projection:
    """A scan projected onto an ``H x W`` range image (arrays are read as-is; do not modify them).

    Attributes:
        rows, cols: ``(N,) int32`` pixel of every point, occluded points included; -1 for points without one
            (a non-finite coordinate, or ``r == 0``).
        depth: ``(N,) float32`` range ``sqrt(x^2 + y^2 + z^2)`` of every point (float64 sum, rounded); -1 for
            points without a pixel.
        index: ``(H, W) int32`` index of the nearest point of each pixel, -1 where empty.
        range: ``(H, W) float32`` that point's depth, -1 where empty.
        mask: ``(H, W) bool``, ``index >= 0``.
        height, width: the image size.
    """

    rows: np.ndarray
    cols: np.ndarray
    depth: np.ndarray
    index: np.ndarray
    range: np.ndarray
    mask: np.ndarray
    height: int
    width: int

    @property
    def num_points(self) -> int:
        return int(self.rows.shape[0])


# ---------------------------------------------------------------------------------------------- fast float32 pass


@numba.njit(**_FAST)
def _atan_ratio_f32(mn: float, mx: float) -> float:
    """atan(mn / mx) in [0, pi/4] for 0 <= mn <= mx; 0 for 0 / 0. One division, no branch."""
    # atan(t) = pi/4 + atan((t - 1) / (t + 1)) keeps the polynomial's argument below tan(pi/8)
    big = mn > _TAN_PI_8 * mx
    num = mn - mx if big else mn
    den = mn + mx if big else mx
    den = den if den > _ZERO else _ONE
    u = num / den
    s = u * u
    return u * ((((_A4 * s + _A3) * s + _A2) * s + _A1) * s + _A0) + (_PI_4 if big else _ZERO)


@numba.njit(**_FAST)
def _atan2_f32(y: float, x: float) -> float:
    """atan2(y, x) in float32 with libm's signed-zero conventions; abs error < 5e-7 rad."""
    ax, ay = abs(x), abs(y)
    a = _atan_ratio_f32(min(ax, ay), max(ax, ay))
    a = _PI_2 - a if ay > ax else a
    a = _PI - a if math.copysign(_ONE, x) < _ZERO else a
    return math.copysign(a, y)


@numba.njit(**_FAST)
def _pitch_f32(z: float, rxy: float) -> float:
    """asin(z / r) computed as atan2(z, rxy) with rxy >= 0."""
    az = abs(z)
    a = _atan_ratio_f32(min(az, rxy), max(az, rxy))
    a = _PI_2 - a if az > rxy else a
    return math.copysign(a, z)


@numba.njit(**_FAST)
def _near_edge(value: float, fl: float, limit: float) -> bool:
    """True when ``value`` lies within ``0.5 - limit`` of ``fl`` or ``fl + 1`` (``fl = floor(value)``)."""
    return abs(value - fl - _HALF) > limit


@numba.njit(**_FAST)
def _fast_pass(
    flat: np.ndarray,
    ring: np.ndarray | None,
    height: int,
    width: int,
    fov_up: float,
    fov_down: float,
    rows: np.ndarray,
    cols: np.ndarray,
    depth: np.ndarray,
) -> None:
    """Fill rows/cols/depth from ``flat (4 N,) float32`` points; rows = _NEEDS_EXACT where float32 cannot decide.

    Branch-free so that LLVM vectorises it; the constant stride 4 lets it load four points per pair of vector
    loads instead of gathering.
    """
    fov = fov_up - fov_down
    col_scale, col_offset = _f32(width / (2.0 * math.pi)), _f32(width / 2.0)
    row_scale, row_offset = _f32(height / fov), _f32(height * fov_up / fov)
    col_limit = _f32(0.5 - _COL_MARGIN * width)
    row_limit = _f32(0.5 - _ROW_MARGIN_ANGLE * height / fov - _ROW_MARGIN_LINEAR * height)
    last_col, last_row = _f32(width - 1), _f32(height - 1)
    for i in range(rows.shape[0]):
        x, y, z = flat[4 * i], flat[4 * i + 1], flat[4 * i + 2]
        xd, yd, zd = np.float64(x), np.float64(y), np.float64(z)
        rxy2 = xd * xd + yd * yd  # float32 squares are exact in float64
        r2 = rxy2 + zd * zd
        depth[i] = np.float32(math.sqrt(r2))
        safe = (r2 > _SAFE_R2_MIN) & (r2 < _SAFE_R2_MAX)  # also False for NaN/inf and r == 0
        col_value = col_offset - _atan2_f32(y, x) * col_scale
        col_floor = np.floor(col_value)
        doubtful = _near_edge(col_value, col_floor, col_limit) | ~safe
        cols[i] = np.int32(min(max(col_floor, _ZERO), last_col))
        if ring is not None:  # numba compiles one version per case and drops the other branch
            row = np.int32(height - 1 - ring[i])
        else:
            row_value = row_offset - _pitch_f32(z, math.sqrt(np.float32(rxy2))) * row_scale
            row_floor = np.floor(row_value)
            doubtful |= _near_edge(row_value, row_floor, row_limit)
            row = np.int32(min(max(row_floor, _ZERO), last_row))
        rows[i] = _NEEDS_EXACT if doubtful else row


# ------------------------------------------------------------------------------- exact float64 path and z-buffer


@numba.njit(**_EXACT)
def _exact_col(x: float, y: float, width: int) -> int:
    """The reference's column, same float64 operations in the same order (must not be compiled with fastmath)."""
    yaw = -math.atan2(y, x)
    col = np.floor(0.5 * (yaw / math.pi + 1.0) * np.float64(width))
    return np.int32(min(max(col, 0.0), width - 1.0))


@numba.njit(**_EXACT)
def _exact_row(z: float, r: float, height: int, fov_up: float, fov_down: float) -> int:
    pitch = math.asin(z / r)
    row = np.floor((1.0 - (pitch - fov_down) / (fov_up - fov_down)) * np.float64(height))
    return np.int32(min(max(row, 0.0), height - 1.0))


@numba.njit(**_FAST)
def _zbuffer_pass(
    flat: np.ndarray,
    ring: np.ndarray | None,
    height: int,
    width: int,
    fov_up: float,
    fov_down: float,
    rows: np.ndarray,
    cols: np.ndarray,
    depth: np.ndarray,
    depth_bits: np.ndarray,
    key: np.ndarray,
    index: np.ndarray,
    range_bits: np.ndarray,
    mask: np.ndarray,
) -> None:
    """Settle flagged points exactly, then keep the nearest point of each pixel.

    ``depth_bits`` is ``depth`` viewed as uint32, ``key`` an ``(H W,) int64`` scratch buffer, ``index``,
    ``range_bits`` (the range image viewed as int32) and ``mask`` flat ``(H W,)`` outputs. Views are made by the
    caller: NumPy makes them for free, and numba compiles slowly for ``view``/``reshape``.
    """
    key[:] = _EMPTY_KEY
    for i in range(rows.shape[0]):
        if rows[i] == _NEEDS_EXACT:
            x, y, z = np.float64(flat[4 * i]), np.float64(flat[4 * i + 1]), np.float64(flat[4 * i + 2])
            r = math.sqrt(x * x + y * y + z * z)
            if not (math.isfinite(x) and math.isfinite(y) and math.isfinite(z) and r > 0.0):
                rows[i], cols[i], depth[i] = -1, -1, -1.0
                continue
            cols[i] = _exact_col(x, y, width)
            rows[i] = height - 1 - ring[i] if ring is not None else _exact_row(z, r, height, fov_up, fov_down)
        p = rows[i] * width + cols[i]
        # one 64-bit min decides depth first (non-negative float32s order like their bits), then the lower index;
        # an unconditional store beats a branch
        key[p] = min(key[p], (np.int64(depth_bits[i]) << 32) | i)
    for p in range(key.shape[0]):
        k = key[p]
        empty = k == _EMPTY_KEY
        index[p] = -1 if empty else np.int32(k & 0xFFFFFFFF)
        range_bits[p] = _MINUS_ONE_F32_BITS if empty else np.int32(k >> 32)
        mask[p] = not empty


# --------------------------------------------------------------------------------------------------- public API


def _project(
    points: np.ndarray, ring: np.ndarray | None, height: int, width: int, up: float, down: float
) -> Projection:
    n, height, width = points.shape[0], int(height), int(width)
    rows, cols, depth = np.empty(n, np.int32), np.empty(n, np.int32), np.empty(n, np.float32)
    index = np.empty((height, width), np.int32)
    range_image = np.empty((height, width), np.float32)
    mask = np.empty((height, width), np.bool_)
    flat = points.reshape(-1)
    _fast_pass(flat, ring, height, width, up, down, rows, cols, depth)
    _zbuffer_pass(
        flat, ring, height, width, up, down, rows, cols, depth, depth.view(np.uint32),
        np.empty(height * width, np.int64), index.reshape(-1), range_image.reshape(-1).view(np.int32),
        mask.reshape(-1),
    )  # fmt: skip
    return Projection(rows, cols, depth, index, range_image, mask, height, width)


def _xyz4(xyz: np.ndarray, name: str) -> np.ndarray:
    """``(N, >=3)`` floats -> ``(N, 4) float32`` C-contiguous (zero-copy for the usual ``(N, 4) float32``)."""
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] < 3:
        raise ValueError(f"{name}: points must have shape (N, >=3), got {xyz.shape}")
    if not np.issubdtype(xyz.dtype, np.floating):
        raise TypeError(f"{name}: points must be floating point, got {xyz.dtype}")
    if xyz.shape[0] > _MAX_POINTS:
        raise ValueError(f"{name}: {xyz.shape[0]} points exceed the int32 point index")
    if xyz.shape[1] == 4 and xyz.dtype == np.float32 and xyz.flags.c_contiguous:
        return xyz
    out = np.zeros((xyz.shape[0], 4), np.float32)  # the kernels read a constant stride of 4 floats
    out[:, :3] = xyz[:, :3]
    return out


def _check_image(height: int, width: int, name: str) -> None:
    if int(height) != height or int(width) != width or height < 1 or width < 1:
        raise ValueError(f"{name}: image size must be positive integers, got {height} x {width}")
    if height * width > _MAX_POINTS:
        raise ValueError(f"{name}: image {height} x {width} has too many pixels for int32 pixel indices")


def project_spherical(
    xyz: np.ndarray, height: int = 64, width: int = 2048, fov_up: float = 3.0, fov_down: float = -25.0
) -> Projection:
    """Project points by yaw and pitch (SemanticKITTI, HDL-64E defaults).

    Args:
        xyz: ``(N, >=3)`` floats, x y z in the first three columns (other float dtypes are cast to float32).
        height, width: image size.
        fov_up, fov_down: vertical field of view in degrees, ``fov_down < fov_up``.
    """
    _check_image(height, width, "project_spherical")
    if not (-90.0 <= fov_down < fov_up <= 90.0):
        raise ValueError(f"project_spherical: need -90 <= fov_down < fov_up <= 90, got {fov_down}, {fov_up}")
    points = _xyz4(xyz, "project_spherical")
    up, down = fov_up / 180.0 * math.pi, fov_down / 180.0 * math.pi  # same float64 values as the reference
    return _project(points, None, height, width, up, down)


def project_rings(xyz: np.ndarray, ring: np.ndarray, height: int = 32, width: int = 1920) -> Projection:
    """Project points by yaw and laser ring, ``row = height - 1 - ring`` (nuScenes: ring 0 is the lowest beam).

    Args:
        xyz: ``(N, >=3)`` floats, x y z in the first three columns.
        ring: ``(N,)`` integers in ``[0, height)``, or floats holding such whole numbers (the float32 ring column of
            a nuScenes ``.pcd.bin``); other values raise ValueError naming them.
        height, width: image size.
    """
    _check_image(height, width, "project_rings")
    points = _xyz4(xyz, "project_rings")
    ring = np.asarray(ring)
    if ring.shape != (points.shape[0],):
        raise ValueError(f"project_rings: ring must have shape ({points.shape[0]},), got {ring.shape}")
    if np.issubdtype(ring.dtype, np.floating):
        # a nuScenes .pcd.bin stores the ring as its fifth float32 column: whole numbers are taken as they are
        whole = np.isfinite(ring) & (ring == np.floor(ring))
        if not whole.all():
            first = int(np.argmax(~whole))
            raise ValueError(
                f"project_rings: ring must hold whole numbers; {int((~whole).sum())} of {ring.size} {ring.dtype} "
                f"values are not (first: {float(ring[first])} at point {first})"
            )
    elif not np.issubdtype(ring.dtype, np.integer) or ring.dtype == np.bool_:
        raise TypeError(f"project_rings: ring must be integers (or whole floats), got {ring.dtype}")
    if ring.size and (ring.min() < 0 or ring.max() >= height):
        bad = np.unique(ring[(ring < 0) | (ring >= height)])
        shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if bad.size > 10 else "")
        raise ValueError(
            f"project_rings: ring values outside [0, {height}): {shown} ({bad.size} distinct values)"
        )
    # the fov arguments are unused with rings; any valid pair keeps the unused constants finite (the range check
    # above also keeps whole floats within int32)
    return _project(points, np.ascontiguousarray(ring, dtype=np.int32), height, width, 1.0, 0.0)


# ------------------------------------------------------------------------------------------ per-pixel features


@numba.njit(**_EXACT)
def _gather_kernel(
    points: np.ndarray,
    index: np.ndarray,
    range_image: np.ndarray,
    mean: np.ndarray,
    inv_std: np.ndarray,
    out: np.ndarray,
) -> None:
    """Flat views: ``index``/``range_image (H W,)``, ``out (6, H W)``; every element written once, no zero fill.
    Filled pixels get ``(value - mean[c]) * inv_std[c]`` in channels 0-4 (mean 0, inv_std 1: raw values)."""
    for p in range(index.shape[0]):
        j = index[p]
        if j >= 0:
            out[0, p] = (range_image[p] - mean[0]) * inv_std[0]
            for c in range(4):
                out[c + 1, p] = (points[j, c] - mean[c + 1]) * inv_std[c + 1]
            out[5, p] = 1.0
        else:
            for c in range(6):
                out[c, p] = 0.0


def gather_channels(
    points: np.ndarray, proj: Projection, mean: np.ndarray | None = None, std: np.ndarray | None = None
) -> np.ndarray:
    """The network input: ``(6, H, W) float32`` = range, x, y, z, intensity, mask.

    ``points`` is the ``(N, >=4)`` array that was projected (intensity in column 3). Every channel holds 0 at
    empty pixels (mask 0.0, filled 1.0). With ``mean`` and ``std`` (5 values each, for range, x, y, z,
    intensity) filled pixels hold ``(value - mean) * (1 / std)`` in float32, normalised in the same pass
    (numpy's strided normalisation afterwards cost more than the gather itself); without them, raw values.
    """
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] < 4 or points.shape[0] != proj.num_points:
        raise ValueError(
            f"gather_channels: points must have shape ({proj.num_points}, >=4), got {points.shape}"
        )
    if (mean is None) != (std is None):
        raise ValueError("gather_channels: give both mean and std, or neither")
    m = np.zeros(5, np.float32) if mean is None else np.asarray(mean, np.float32).reshape(5)
    inv = np.ones(5, np.float32) if std is None else (1.0 / np.asarray(std, np.float32)).reshape(5)
    out = np.empty((6, proj.height, proj.width), np.float32)
    points = np.ascontiguousarray(points, dtype=np.float32)
    _gather_kernel(points, proj.index.reshape(-1), proj.range.reshape(-1), m, inv, out.reshape(6, -1))
    return out


@numba.njit(**_EXACT)
def _labels_from_pixels_kernel(
    image: np.ndarray, rows: np.ndarray, cols: np.ndarray, out: np.ndarray
) -> None:
    for i in range(rows.shape[0]):
        out[i] = image[rows[i], cols[i]] if rows[i] >= 0 else 0


def labels_from_pixels(pixel_labels: np.ndarray, proj: Projection) -> np.ndarray:
    """Read ``(H, W)`` integer pixel labels back onto the points: ``(N,) int64``, 0 (ignore) without a pixel.

    Occluded points take the label of the pixel they fall in; see :mod:`rangecps.eval.knn` for the kNN vote.
    """
    image = np.asarray(pixel_labels)
    if image.shape != (proj.height, proj.width) or not np.issubdtype(image.dtype, np.integer):
        raise ValueError(
            f"labels_from_pixels: need an integer ({proj.height}, {proj.width}) image, got {image.dtype} {image.shape}"
        )
    out = np.empty(proj.num_points, np.int64)
    _labels_from_pixels_kernel(np.ascontiguousarray(image, dtype=np.int64), proj.rows, proj.cols, out)
    return out


@numba.njit(**_EXACT)
def _pixel_labels_kernel(labels: np.ndarray, index: np.ndarray, out: np.ndarray) -> None:
    for p in range(index.shape[0]):
        out[p] = labels[index[p]] if index[p] >= 0 else 0


def pixel_labels(point_labels: np.ndarray, proj: Projection) -> np.ndarray:
    """The label image ``(H, W) int64``: each pixel takes its nearest point's label, 0 where empty."""
    labels = np.asarray(point_labels)
    if labels.shape != (proj.num_points,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"pixel_labels: need ({proj.num_points},) integer labels, got {labels.dtype} {labels.shape}"
        )
    out = np.empty((proj.height, proj.width), np.int64)
    _pixel_labels_kernel(
        np.ascontiguousarray(labels, dtype=np.int64), proj.index.reshape(-1), out.reshape(-1)
    )
    return out
