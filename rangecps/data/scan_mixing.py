"""FRNet's FrustumMix, InstanceCopy and RangeInterpolation as a step of the train-time augmentation of a
:class:`~rangecps.data.dataset.RangeDataset` (the functions themselves are in :mod:`rangecps.data.frnet_augment`).

Reads one training scan after the point transforms of :mod:`rangecps.data.augment` (``points`` (N, 4) float32,
``labels`` (N,) int64 train ids or None, ``ring`` (N,) int32 or None) and, for each mixing, a second labeled scan
that the dataset draws from its own records (any of them, the scan itself included, as the release draws from its
whole dataset) and puts through the same point transforms (the release's ``pre_transform``). Writes a new Scan of
N' points; labels and rings stay with their points:

- FrustumMix replaces frustum regions (vertical bands of rows, or a half turn of columns) with the second scan's;
- InstanceCopy appends every point of a second scan labelled with one of the instance classes;
- RangeInterpolation appends a point in every empty pixel between two occupied ones of the same row.

Order and draws (the release's train pipeline: flip, rotate/scale/translate, FrustumMix, InstanceCopy,
RangeInterpolation): every draw comes from the sample's generator, after the point transforms' draws, so a sample
stays keyed by ``(seed, epoch, draw)`` whatever the loader workers. A mixing with probability p draws one number
first and reads a second scan only when it mixes (the release checks its ``prob`` before it loads one); a
mixing that is off draws nothing, and with every option off the dataset holds no :class:`ScanMixing` at all.

A point model trained with RangeInterpolation is evaluated on scans densified the same way, as the release's val
and test pipelines do (:func:`interpolated_points`; the batch keys are in :mod:`rangecps.data.sample`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from rangecps.config import AugmentConfig
from rangecps.data.frnet_augment import (
    RELEASED_INSTANCE_CLASSES,
    frustum_mix,
    instance_copy,
    range_interpolation,
)
from rangecps.data.index import Geometry
from rangecps.io import Scan
from rangecps.labels import LabelMap


@dataclass(frozen=True)
class SphericalImage:
    """The ``height x width`` image a mixing bins points in by pitch (``fov_up`` .. ``fov_down``, degrees) and
    yaw, as :mod:`rangecps.data.frnet_augment` does."""

    height: int
    width: int
    fov_up: float
    fov_down: float

    def kwargs(self) -> dict[str, float]:
        return {"height": self.height, "width": self.width, "fov_up": self.fov_up, "fov_down": self.fov_down}


@dataclass(frozen=True)
class ScanMixing:
    """FRNet's three scan-level steps with their settings (see the module docstring). ``frustum_mix`` and
    ``instance_copy`` are probabilities (0: off); ``interpolation`` None: no RangeInterpolation."""

    frustum_mix: float
    frustum_areas: tuple[int, ...]
    frustum_image: SphericalImage
    instance_copy: float
    instance_classes: tuple[int, ...]
    interpolation: SphericalImage | None

    @property
    def active(self) -> bool:
        return self.frustum_mix > 0 or self.instance_copy > 0 or self.interpolation is not None

    def without_labels(self) -> ScanMixing | None:
        """What applies to unlabeled scans: RangeInterpolation only (the mixings need labels), or None."""
        out = replace(self, frustum_mix=0.0, instance_copy=0.0)
        return out if out.active else None

    def __call__(self, scan: Scan, rng: np.random.Generator, second: Callable[[], Scan]) -> Scan:
        """``scan`` mixed and interpolated. ``second()`` reads a random labeled scan of the dataset and puts it
        through the point transforms, drawing from ``rng``; it is called once per mixing that happens."""
        # The probability is drawn here, so that no scan is read for a mixing that does not happen; the function
        # is then called with p = 1 (its own draw always passes).
        if self.frustum_mix > 0 and rng.random() < self.frustum_mix:
            scan = frustum_mix(
                scan, second(), rng, num_areas=self.frustum_areas, p=1.0, **self.frustum_image.kwargs()
            )
        if self.instance_copy > 0 and rng.random() < self.instance_copy:
            scan = instance_copy(scan, second(), self.instance_classes, rng, p=1.0)
        if self.interpolation is not None:
            scan = range_interpolation(scan, **self.interpolation.kwargs())
        return scan


def _image(geometry: Geometry, fov: tuple[float, float] | None) -> SphericalImage:
    up, down = fov if fov is not None else (geometry.fov_up, geometry.fov_down)
    return SphericalImage(geometry.height, geometry.width, float(up), float(down))


def interpolation_image(cfg: AugmentConfig, native: Geometry) -> SphericalImage | None:
    """The image RangeInterpolation works on (``native``, the dataset's full-resolution range image, with
    ``cfg.frustum_fov`` when set), or None when ``cfg.range_interpolation`` is off. Training's step and the
    evaluation of a point model trained with it (:func:`interpolated_points`) use the same one."""
    return _image(native, cfg.frustum_fov) if cfg.range_interpolation else None


def interpolated_points(scan: Scan, image: SphericalImage) -> Scan:
    """The points :func:`~rangecps.data.frnet_augment.range_interpolation` adds to ``scan`` on ``image``, alone.

    Reads ``scan.points`` (N, 4) float32 and ``scan.ring`` (N,) or None; writes a Scan of the M added points in
    their order (``points`` (M, 4) float32, ``ring`` (M,) int32 when ``scan`` has rings, ``labels`` None). This is
    the release's evaluation-time RangeInterpolation (its val and test pipelines apply it and drop the added
    points' predictions): the network sees them beside the scan's own points, the scores never count them."""
    dense = range_interpolation(replace(scan, labels=None), **image.kwargs())
    n = len(scan.points)
    ring = dense.ring[n:] if dense.ring is not None else None
    return replace(dense, points=dense.points[n:], ring=ring, labels=None)


def build_mixing(
    cfg: AugmentConfig, label_map: LabelMap, geometry: Geometry, native: Geometry
) -> ScanMixing | None:
    """The :class:`ScanMixing` an :class:`AugmentConfig` asks for, or None when all three are off.

    ``geometry``: the run's range image (``data.height`` / ``data.width`` applied); FrustumMix bins by it, as the
    release bins by FRNet's frustum image (64x512 KITTI, 32x480 nuScenes: the FRNet configs' data.width). Its
    width only sets the grid the half-turn split is drawn on. ``native``: the dataset's own range image;
    RangeInterpolation fills gaps of the sensor's scan lines, so it works at full resolution whatever the
    network's image, as the release does (64x2048, 32x1920). ``cfg.frustum_fov`` replaces both fields of view.
    Settings that only the dataset can check (areas <= height, class ids < num_classes) raise a one-line
    ValueError naming the setting."""
    if not (cfg.frustum_mix > 0 or cfg.instance_copy > 0 or cfg.range_interpolation):
        return None
    fov = cfg.frustum_fov
    areas = tuple(int(n) for n in cfg.frustum_mix_areas)
    if cfg.frustum_mix > 0 and max(areas) > geometry.height:
        raise ValueError(
            f"data.augment.frustum_mix_areas: {list(areas)} has more bands than the range image's "
            f"{geometry.height} rows"
        )
    classes = tuple(int(c) for c in cfg.instance_classes)
    if cfg.instance_copy > 0:
        if not classes:
            if label_map.name not in RELEASED_INSTANCE_CLASSES:
                raise ValueError(
                    f"data.augment.instance_classes: no released list for label map {label_map.name!r}; "
                    "list the train ids"
                )
            classes = RELEASED_INSTANCE_CLASSES[label_map.name]
        if max(classes) >= label_map.num_classes:
            raise ValueError(
                f"data.augment.instance_classes: {list(classes)} names train ids beyond label map "
                f"{label_map.name!r} (ids 1..{label_map.num_classes - 1})"
            )
    return ScanMixing(
        frustum_mix=float(cfg.frustum_mix),
        frustum_areas=areas,
        frustum_image=_image(geometry, fov),
        instance_copy=float(cfg.instance_copy),
        instance_classes=classes,
        interpolation=interpolation_image(cfg, native),
    )
