"""FRNet's three mixing/densifying augmentations on a :class:`~rangecps.io.Scan`, with train ids (0 = ignore).

Reimplemented from the behaviour of the FRNet release (``frnet/datasets/transforms/transforms_3d.py``, the classes
FrustumMix, InstanceCopy and RangeInterpolation, and their use in ``configs/_base_/datasets/semantickitti_seg.py``
and ``nuscenes_seg.py``); no code is copied. The release's train pipeline is: load, flip, global rotate/scale/
translate, FrustumMix (p = 1), InstanceCopy (p = 1), RangeInterpolation. FrustumMix and InstanceCopy each draw a
*fresh* random scan of the training set and put it through the same load/flip/rotate/scale/translate
pre-transform before mixing; here the caller passes that second, already augmented, labeled scan.

Released settings (``fov`` in degrees):

=============  =====================================  =====================================
               SemanticKITTI                          nuScenes
=============  =====================================  =====================================
FrustumMix     H 64, W 512, fov 3 / -25,              H 32, W 480, fov 10 / -30,
               areas (3, 4, 5, 6), p 1                areas (3, 4, 5, 6), p 1
InstanceCopy   :data:`KITTI_INSTANCE_CLASSES`, p 1    :data:`NUSCENES_INSTANCE_CLASSES`, p 1
RangeInterp.   H 64, W 2048, fov 3 / -25              H 32, W 1920, fov 10 / -30 (spherical)
=============  =====================================  =====================================

Angles follow :mod:`rangecps.projection`: ``yaw = -atan2(y, x)``, ``pitch = asin(z / r)``,
``col = floor(0.5 (yaw / pi + 1) W)``, ``row = floor((1 - (pitch - fov_down) / (fov_up - fov_down)) H)``, both
clamped into the image. The release writes the row as ``1 - (pitch + |fov_down|) / (|fov_down| + |fov_up|)``,
the same whenever ``fov_down <= 0 <= fov_up`` (every released setting); this module requires that. Rows and
columns are computed in float32 as the release does (it runs them on float32 coordinates). Points with a
non-finite coordinate or ``r == 0`` have no defined pitch: the release sends them to an undefined index; here
FrustumMix treats them as row 0 / column 0 and RangeInterpolation leaves them out of its image (they are kept).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from rangecps.io import Scan

# Release train ids (ignore = last) -> ours (ignore = 0) is ``release + 1``; names from
# ``rangecps.labels.load_label_map(...).names``.
#: SemanticKITTI InstanceCopy classes: release ids [1, 2, 3, 4, 5, 6, 7, 11, 15, 17, 18] = bicycle, motorcycle,
#: truck, other-vehicle, person, bicyclist, motorcyclist, other-ground, trunk, pole, traffic-sign (car is not
#: copied) -> our "semantickitti" train ids.
KITTI_INSTANCE_CLASSES: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8, 12, 16, 18, 19)
#: nuScenes InstanceCopy classes: release ids 0..9 = barrier, bicycle, bus, car, construction_vehicle,
#: motorcycle, pedestrian, traffic_cone, trailer, truck -> our "nuscenes" train ids.
NUSCENES_INSTANCE_CLASSES: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
#: The released InstanceCopy list of each label map (``rangecps.labels.LabelMap.name``).
RELEASED_INSTANCE_CLASSES: dict[str, tuple[int, ...]] = {
    "semantickitti": KITTI_INSTANCE_CLASSES,
    "nuscenes": NUSCENES_INSTANCE_CLASSES,
}


def _check_prob(name: str, value: float) -> None:
    if not (0.0 <= float(value) <= 1.0):
        raise ValueError(f"{name} must lie in [0, 1], got {value}")


def _check_image(
    fn: str, height: int, width: int, fov_up: float, fov_down: float, min_width: int = 1
) -> None:
    if int(height) != height or height < 1 or int(width) != width or width < min_width:
        raise ValueError(f"{fn}: need integer height >= 1 and width >= {min_width}, got {height} x {width}")
    if not (-90.0 <= fov_down <= 0.0 <= fov_up <= 90.0 and fov_down < fov_up):
        raise ValueError(
            f"{fn}: need -90 <= fov_down <= 0 <= fov_up <= 90 (degrees, fov_down < fov_up), "
            f"got fov_up={fov_up}, fov_down={fov_down}"
        )


def _check_labeled(fn: str, name: str, scan: Scan) -> None:
    if not isinstance(scan, Scan):
        raise ValueError(f"{fn}: {name} must be a Scan, got {type(scan).__name__}")
    if scan.labels is None:
        raise ValueError(f"{fn}: {name} has no labels; this augmentation mixes labeled scans only")


def _angles(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float32 ``(depth, yaw, pitch)`` of ``points (N, >=3)``; pitch is NaN where ``r == 0`` or not finite."""
    xyz = np.asarray(points[:, :3], np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        depth = np.linalg.norm(xyz, 2, axis=1)
        yaw = -np.arctan2(xyz[:, 1], xyz[:, 0])
        pitch = np.arcsin(xyz[:, 2] / depth)
    return depth, yaw, pitch


def _rows(pitch: np.ndarray, height: int, fov_up: float, fov_down: float) -> np.ndarray:
    """(N,) int64 image row of each pitch (float32 arithmetic, clamped); undefined pitch -> row 0."""
    up, down = np.float32(fov_up / 180.0 * np.pi), np.float32(fov_down / 180.0 * np.pi)
    with np.errstate(invalid="ignore"):
        row = np.floor((np.float32(1.0) - (pitch - down) / (up - down)) * np.float32(height))
    row = np.where(np.isfinite(row), row, 0.0)
    return np.clip(row, 0, height - 1).astype(np.int64)


def _cols(yaw: np.ndarray, width: int) -> np.ndarray:
    """(N,) int64 image column of each yaw (float32 arithmetic, clamped); undefined yaw -> column 0."""
    with np.errstate(invalid="ignore"):
        col = np.floor(np.float32(0.5) * (yaw / np.float32(np.pi) + np.float32(1.0)) * np.float32(width))
    col = np.where(np.isfinite(col), col, 0.0)
    return np.clip(col, 0, width - 1).astype(np.int64)


def _concat(base: Scan, parts: Sequence[tuple[Scan, np.ndarray]], meta: dict) -> Scan:
    """One scan of ``scan[mask]`` for each ``(scan, mask)`` in order; rings kept only when every scan has them."""
    rings = all(s.ring is not None for s, _ in parts)
    return replace(
        base,
        points=np.ascontiguousarray(np.concatenate([s.points[m] for s, m in parts]), np.float32),
        ring=np.concatenate([s.ring[m] for s, m in parts]).astype(np.int32) if rings else None,
        labels=np.concatenate([s.labels[m] for s, m in parts]).astype(np.int64),
        meta=meta,
    )


def frustum_mix(
    a: Scan,
    b: Scan,
    rng: np.random.Generator,
    *,
    height: int = 64,
    width: int = 512,
    fov_up: float = 3.0,
    fov_down: float = -25.0,
    num_areas: Sequence[int] = (3, 4, 5, 6),
    p: float = 1.0,
    p_vertical: float = 0.5,
) -> Scan:
    """Mix two labeled scans by frustum regions, as the FRNet release's FrustumMix does.

    Reads ``a`` and ``b``: ``points`` (N, 4) float32 and ``labels`` (N,) int64 (both required), ``ring`` (N,)
    int32 when both have one. Writes a new Scan with ``a.meta`` (plus ``meta["frustum_mix"]``) whose points,
    labels and rings are whole subsets of ``a``'s and ``b``'s, each label staying with its point.

    Released behaviour (transforms_3d.py, FrustumMix): with probability ``p`` (else ``a`` is returned unchanged),
    then with probability ``p_vertical`` (released: 1/2) a *vertical* mix, else a *horizontal* one.

    * vertical: draw ``n`` uniformly from ``num_areas``; split the ``height`` rows at
      ``linspace(0, height, n + 1)`` truncated to integers; band ``i`` (rows ``[r_i, r_{i+1})``) takes its
      points from ``a`` when ``i`` is even, from ``b`` when odd. Output is ordered band by band.
    * horizontal: draw ``start`` uniformly from ``[0, width // 2)``; the columns ``[start, start + width // 2)``
      take ``b``'s points, all other columns ``a``'s. Output is ``a``'s kept points, then ``b``'s.

    Draws (always, in this order): one ``rng.random()`` for ``p``; if mixing, one for the direction, then
    ``rng.choice(num_areas)`` or ``rng.integers(0, width // 2)``.
    """
    fn = "frustum_mix"
    _check_labeled(fn, "a", a)
    _check_labeled(fn, "b", b)
    _check_image(fn, height, width, fov_up, fov_down, min_width=2)
    _check_prob("frustum_mix p", p)
    _check_prob("frustum_mix p_vertical", p_vertical)
    areas = tuple(num_areas)
    if not areas or any(int(n) != n or not 1 <= n <= height for n in areas):
        raise ValueError(
            f"{fn}: num_areas must be a non-empty list of integers in [1, height={height}], got {areas}"
        )
    if rng.random() >= p:
        return a
    meta = dict(a.meta)
    if rng.random() < p_vertical:
        n = int(rng.choice(np.asarray(areas, np.int64)))
        bounds = np.linspace(0, height, n + 1).astype(np.int64)
        row_a = _rows(_angles(a.points)[2], height, fov_up, fov_down)
        row_b = _rows(_angles(b.points)[2], height, fov_up, fov_down)
        parts = []
        for i in range(n):
            src, row = (a, row_a) if i % 2 == 0 else (b, row_b)
            parts.append((src, (row >= bounds[i]) & (row < bounds[i + 1])))
        meta["frustum_mix"] = {"direction": "vertical", "row_bounds": bounds.tolist()}
    else:
        start = int(rng.integers(0, width // 2))
        end = start + width // 2
        col_a = _cols(_angles(a.points)[1], width)
        col_b = _cols(_angles(b.points)[1], width)
        parts = [(a, (col_a < start) | (col_a >= end)), (b, (col_b >= start) & (col_b < end))]
        meta["frustum_mix"] = {"direction": "horizontal", "col_range": [start, end]}
    return _concat(a, parts, meta)


def instance_copy(
    scan: Scan,
    bank: Scan,
    classes: Sequence[int],
    rng: np.random.Generator,
    *,
    p: float = 1.0,
) -> Scan:
    """Paste every point of ``bank`` labelled with one of ``classes`` into ``scan``, as the FRNet release's
    InstanceCopy does.

    Reads ``scan`` and ``bank``: ``points`` (N, 4) float32, ``labels`` (N,) int64 train ids (both required),
    ``ring`` (N,) int32 when both have one. Writes a new Scan with ``scan.meta`` (plus
    ``meta["instance_copy"]``): all of ``scan``'s points first, unchanged and in order, then ``bank``'s points of
    ``classes[0]``, then of ``classes[1]``, ... with their labels (and rings).

    Released behaviour (transforms_3d.py, InstanceCopy): with probability ``p`` (released: 1), the points of the
    listed semantic classes of another randomly drawn training scan (after its own flip/rotate/scale/translate)
    are appended as they are: whole classes, not single instances; no placement, no collision or occlusion
    check, nothing removed from the target. Released class lists: :data:`KITTI_INSTANCE_CLASSES`,
    :data:`NUSCENES_INSTANCE_CLASSES`. Draws one ``rng.random()`` (always).
    """
    fn = "instance_copy"
    _check_labeled(fn, "scan", scan)
    _check_labeled(fn, "bank", bank)
    _check_prob("instance_copy p", p)
    cls = tuple(classes)
    if not cls or any(isinstance(c, bool) or int(c) != c or c < 1 for c in cls) or len(set(cls)) != len(cls):
        raise ValueError(f"{fn}: classes must be distinct integer train ids >= 1 (0 is ignore), got {cls}")
    if rng.random() >= p:
        return scan
    meta = dict(scan.meta)
    meta["instance_copy"] = {"classes": list(cls), "source": bank.meta.get("frame", bank.meta.get("token"))}
    parts = [(scan, np.ones(len(scan.points), bool))] + [(bank, bank.labels == c) for c in cls]
    return _concat(scan, parts, meta)


def range_interpolation(
    scan: Scan,
    rng: np.random.Generator | None = None,
    *,
    height: int = 64,
    width: int = 2048,
    fov_up: float = 3.0,
    fov_down: float = -25.0,
) -> Scan:
    """Fill one-pixel horizontal gaps of the range image with interpolated points, as the FRNet release's
    RangeInterpolation does. Deterministic: ``rng`` is accepted for a uniform signature and not used.

    Reads ``scan.points`` (N, 4) float32, ``labels`` (N,) int64 or None, ``ring`` (N,) int32 or None. Writes a new
    Scan: the N original points unchanged and first, then M interpolated points (row-major pixel order);
    ``labels``/``ring`` grow to N + M when present; ``meta["num_points_before_interpolation"] = N`` (the release
    keeps N to drop the added points' predictions at inference).

    Released behaviour (transforms_3d.py, RangeInterpolation): project onto a ``height x width`` spherical image,
    each pixel holding its nearest point. An *empty* pixel at column ``1 <= x <= width - 2`` whose left and right
    neighbours in the same row both hold a point gets a new point: the mean of those two points in all four
    channels (x, y, z, intensity). Its label is the neighbours' label when they agree (ignore, 0, if both are
    ignore), else ignore (0): a class boundary. No wrap-around at the image edges; an interpolated pixel never
    feeds another (the left neighbour of a filled pixel is never itself filled).
    Its ring (no release counterpart) is the left neighbour's ring.

    Differences from the release: its "occupied" mask is ``point index > 0``, so the pixel of point 0 counts as
    empty and may get an extra point; here it counts as occupied. Equal depths in one pixel go to the lower point
    index. Points with ``r == 0`` or a non-finite coordinate are kept but take no pixel.
    """
    del rng
    fn = "range_interpolation"
    if not isinstance(scan, Scan):
        raise ValueError(f"{fn}: scan must be a Scan, got {type(scan).__name__}")
    _check_image(fn, height, width, fov_up, fov_down)
    n = len(scan.points)
    depth, yaw, pitch = _angles(scan.points)
    ok = np.flatnonzero(np.isfinite(scan.points[:, :3]).all(axis=1) & (depth > 0) & np.isfinite(pitch))
    pix = _rows(pitch[ok], height, fov_up, fov_down) * width + _cols(yaw[ok], width)
    # Nearest point per pixel: sort by (pixel, depth, index) and keep each pixel's first.
    order = np.lexsort((ok, depth[ok], pix))
    first = np.ones(len(order), bool)
    first[1:] = pix[order][1:] != pix[order][:-1]
    index = np.full(height * width, -1, np.int64)
    index[pix[order][first]] = ok[order][first]
    index = index.reshape(height, width)
    occupied = index >= 0
    fill = np.zeros_like(occupied)
    fill[:, 1:-1] = ~occupied[:, 1:-1] & occupied[:, :-2] & occupied[:, 2:]
    ys, xs = np.nonzero(fill)
    meta = dict(scan.meta)
    meta["num_points_before_interpolation"] = n
    left, right = index[ys, xs - 1], index[ys, xs + 1]
    new_points = ((scan.points[left] + scan.points[right]) / np.float32(2.0)).astype(np.float32)
    labels = ring = None
    if scan.labels is not None:
        ll, rl = scan.labels[left], scan.labels[right]
        labels = np.concatenate([scan.labels, np.where(ll == rl, ll, 0)]).astype(np.int64)
    if scan.ring is not None:
        ring = np.concatenate([scan.ring, scan.ring[left]]).astype(np.int32)
    return replace(
        scan,
        points=np.ascontiguousarray(np.concatenate([scan.points, new_points]), np.float32),
        ring=ring,
        labels=labels,
        meta=meta,
    )
