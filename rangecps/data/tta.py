"""Test-time augmentation: the views of a scan, as the FRNet release's test pipeline makes them, and the sample of
a scan seen through one view.

A :class:`View` moves a scan's points by one flip, then a yaw rotation, a uniform scale and a translation: the
FRNet release's ``tta_pipeline`` (``configs/_base_/datasets/*_seg.py`` at d3749c8) composes ``RandomFlip3D``
(each of its four views fixes one combination of the two bird's-eye-view flips) with ``GlobalRotScaleTrans`` (yaw
U(-pi, pi), scale U(0.95, 1.05), translation N(0, 0.1) per axis), after ``RangeInterpolation``. :func:`tta_views`
draws N such views from one seed: the flips cycle through the release's none, x -> -x (mmdet3d's vertical flip),
y -> -y (horizontal), both; each view's yaw, scale and translation come from ``default_rng([seed, view])``.
Every scan is seen through the same
views, so evaluation, :class:`rangecps.deploy.Segmenter` and ``rangecps-infer`` label a scan identically and a
result is reproducible from the seed alone (the release draws new ones for every scan).

:func:`view_sample` reads a :class:`~rangecps.io.Scan` (``points`` (N, 4), ``ring`` (N,) or None) and writes a
sample of :mod:`rangecps.data.sample` (per-point keys always, the point-input keys on request, no labels): the
moved points projected and encoded, in the scan's own point order, so that a view's per-point output lines up
with the scan's points. A point model's ``added`` points (RangeInterpolation's, made once on the scan as read) are
moved with it. The networks' outputs over the views are averaged by :mod:`rangecps.eval.tta`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from rangecps.data.augment import affine_scan
from rangecps.data.encoding import InputEncoding
from rangecps.data.index import Geometry
from rangecps.data.point_batch import added_point_keys
from rangecps.data.sample import non_finite, pack_sample, project_scan
from rangecps.io import Scan

# The FRNet release's GlobalRotScaleTrans of its tta_pipeline.
YAW_RANGE = (-np.pi, np.pi)
SCALE_RANGE = (0.95, 1.05)
TRANSLATION_STD = 0.1
# The tta_pipeline's four RandomFlip3D views in its order: none, vertical (x -> -x), horizontal (y -> -y), both;
# as (negate x, negate y).
FLIPS = ((False, False), (True, False), (False, True), (True, True))


@dataclass(frozen=True)
class View:
    """One test-time view: ``xyz -> scale * R(yaw) @ F @ xyz + shift``, ``F`` the flips. The default is the
    identity. Intensity, rings and the order of points are kept."""

    negate_x: bool = False
    negate_y: bool = False
    yaw: float = 0.0
    scale: float = 1.0
    shift: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """``(3, 3)`` matrix and ``(3,)`` offset, float64."""
        flip = np.diag([-1.0 if self.negate_x else 1.0, -1.0 if self.negate_y else 1.0, 1.0])
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        rotate = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        return self.scale * rotate @ flip, np.asarray(self.shift, dtype=np.float64)

    def __call__(self, scan: Scan) -> Scan:
        return affine_scan(scan, *self.affine())

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "shift": list(self.shift)}


def tta_views(n: int, seed: int = 0) -> tuple[View, ...]:
    """``n`` views as the FRNet release's ``tta_pipeline`` makes them (module docstring); ``n`` 0 gives none."""
    if n < 0:
        raise ValueError(f"test-time augmentation needs a number of views >= 0, got {n}")
    views = []
    for v in range(n):
        rng = np.random.default_rng([seed, v])
        negate_x, negate_y = FLIPS[v % len(FLIPS)]
        yaw = float(rng.uniform(*YAW_RANGE))
        scale = float(rng.uniform(*SCALE_RANGE))
        shift = tuple(float(t) for t in rng.normal(0.0, TRANSLATION_STD, size=3))
        views.append(View(negate_x, negate_y, yaw, scale, shift))
    return tuple(views)


def view_sample(
    scan: Scan,
    view: View,
    geometry: Geometry,
    encoding: InputEncoding,
    added: Scan | None = None,
    point_inputs: bool = False,
    index: int = 0,
    scan_id: str = "",
) -> dict:
    """The unlabeled sample of ``scan`` seen through ``view`` (keys of :mod:`rangecps.data.sample`; the per-point
    arrays always, ``points`` / ``point_valid`` and the ``extra_*`` keys of ``added``, the scan's interpolated
    points, with ``point_inputs``)."""
    moved = view(scan)
    bad = non_finite(moved.points)
    proj = project_scan(moved, geometry, bad)
    image = encoding(moved.points, proj)
    extra = added_point_keys(added, geometry, view) if point_inputs else None
    n = moved.num_points
    return pack_sample(
        image, np.zeros((geometry.height, geometry.width), np.int64), proj.rows, proj.cols, proj.depth,
        np.zeros(n, np.int64), index, index, scan_id, non_finite=int(bad.sum()),
        points=moved.points if point_inputs else None, extra=extra,
    )  # fmt: skip


__all__ = ["View", "tta_views", "view_sample"]
