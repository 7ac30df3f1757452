"""What turns bare points into a network input, and network classes back into dataset ids: the part of a run's
data that a trained model needs wherever it goes.

:class:`ScanPipeline` holds the range-image geometry, the input encoding (with the training set's statistics),
the dataset's file format and its classes (names, colours, train id -> raw id). Training stores it in every
checkpoint (``derived["pipeline"]``), so that :class:`rangecps.deploy.Segmenter` and the ONNX sidecar need no
dataset root; :meth:`ScanPipeline.sample` makes a sample exactly as a :class:`~rangecps.data.dataset.RangeDataset`
of the run's validation split makes it (same projection, same encoding, same keys), from points alone. For a
point model (FRNet) ``sample(..., point_inputs=True)`` adds the points themselves, as a dataset with
``point_inputs=True`` does: collated, they give the network's ``points`` and ``coors`` (the range image's grid is
the model's frustum grid, so the pipeline serves both kinds of model unchanged). A point model trained with
``data.augment.range_interpolation`` records the image of its evaluation-time RangeInterpolation
(``interpolation``, see :func:`rangecps.data.build.eval_interpolation`): its samples then carry the interpolated
points too (the ``extra_*`` keys of :mod:`rangecps.data.sample`), exactly as the run's evaluation datasets do.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from rangecps.data.encoding import InputEncoding
from rangecps.data.index import Geometry
from rangecps.data.point_batch import added_point_keys
from rangecps.data.sample import CHANNELS, non_finite, pack_sample, project_scan
from rangecps.data.scan_mixing import SphericalImage, interpolated_points
from rangecps.data.tta import View, view_sample
from rangecps.io import Scan

if TYPE_CHECKING:
    from rangecps.data.build import DataBundle


@dataclass(frozen=True)
class ScanPipeline:
    """A run's geometry, encoding and classes. ``train_to_raw[k]`` is the dataset id written for train id k.
    ``interpolation``: the image of a point model's evaluation-time RangeInterpolation, None for none; absent from
    :meth:`to_dict` when None, so the pipelines of every other run are stored as they were."""

    geometry: Geometry
    encoding: InputEncoding
    file_format: str  # "kitti" or "nuscenes": which official prediction layout the raw ids belong to
    label_map: str
    class_names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    train_to_raw: tuple[int, ...]
    interpolation: SphericalImage | None = None

    @classmethod
    def from_bundle(cls, data: DataBundle) -> ScanPipeline:
        lm = data.label_map
        return cls(
            geometry=data.geometry,
            encoding=InputEncoding.make(
                data.encoding, data.dataset_cls.file_format, data.stats.mean, data.stats.std
            ),
            file_format=data.dataset_cls.file_format,
            label_map=lm.name,
            class_names=tuple(lm.names),
            colors=tuple(tuple(int(v) for v in c) for c in lm.colors),
            train_to_raw=tuple(int(v) for v in lm.train_to_raw),
            interpolation=data.interpolation,
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> tuple[str, ...]:
        return CHANNELS

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (checkpoints are loaded with ``weights_only=True``: no custom classes)."""
        d = _lists(asdict(self))
        if d["interpolation"] is None:
            del d["interpolation"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScanPipeline:
        g = dict(d["geometry"])
        g["rings"] = bool(g["rings"])
        g["elevations"] = tuple(g["elevations"]) if g.get("elevations") is not None else None
        return cls(
            geometry=Geometry(**g),
            encoding=InputEncoding(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in d["encoding"].items()}
            ),
            file_format=d["file_format"],
            label_map=d["label_map"],
            class_names=tuple(d["class_names"]),
            colors=tuple(tuple(c) for c in d["colors"]),
            train_to_raw=tuple(d["train_to_raw"]),
            interpolation=SphericalImage(**d["interpolation"]) if d.get("interpolation") else None,
        )

    def with_geometry(self, geometry: Geometry) -> ScanPipeline:
        return replace(self, geometry=geometry)

    def to_raw(self, train_ids: np.ndarray) -> np.ndarray:
        """Dataset ids (uint8 when they all fit, as nuScenes lidarseg, else uint16 as SemanticKITTI) of train ids."""
        table = np.asarray(self.train_to_raw)
        return table.astype(np.uint8 if table.max() < 256 else np.uint16)[np.asarray(train_ids)]

    def sample(
        self,
        points: np.ndarray,
        ring: np.ndarray | None = None,
        index: int = 0,
        name: str = "",
        point_inputs: bool = False,
        views: tuple[View, ...] = (),
    ) -> dict:
        """The sample of one scan, as a dataset makes it without augmentation (keys in ``rangecps.data.sample``).

        Args:
            points: ``(N, 4)`` float32 x, y, z, intensity (intensity as the training data stored it).
            ring: ``(N,)`` laser index, needed when the geometry's rows are rings.
            point_inputs: also ``points`` (the ``(N, 4)`` array as given) and ``point_valid``, what a point
                model (FRNet) reads; :func:`~rangecps.data.sample.collate` turns them into ``points``/``coors``.
                With ``interpolation`` also the ``extra_*`` keys of the interpolated points, which the network
                sees and the per-point outputs leave out.
            views: test-time views (:mod:`rangecps.data.tta`): the sample also holds ``views``, the points seen
                through each (no labels; interpolated points made once, before the views move them), as a
                dataset with ``views`` makes it.
        Points with a non-finite value get no pixel (see :func:`~rangecps.data.sample.project_scan`).
        """
        points = np.ascontiguousarray(points, dtype=np.float32)
        if points.ndim != 2 or points.shape[1] != 4:
            raise ValueError(
                f"{name or 'points'}: expected (N, 4) x, y, z, intensity, got shape {points.shape}"
            )
        if self.geometry.rings and ring is None:
            raise ValueError(f"{name or 'points'}: this model's rows are laser rings; pass ring=(N,) indices")
        scan = Scan(points, None if ring is None else np.asarray(ring, np.int64), meta={"points": name})
        bad_points = non_finite(points)
        proj = project_scan(scan, self.geometry, bad_points)
        image = self.encoding(points, proj)
        empty = np.zeros(len(points), np.int64)
        label = np.zeros((self.geometry.height, self.geometry.width), np.int64)
        bad = int(bad_points.sum())
        interpolate = point_inputs and self.interpolation is not None
        added = interpolated_points(scan, self.interpolation) if interpolate else None
        sample = pack_sample(
            image, label, proj.rows, proj.cols, proj.depth, empty, index, index, name, non_finite=bad,
            points=points if point_inputs else None, extra=added_point_keys(added, self.geometry),
        )  # fmt: skip
        if views:
            geometry, encoding = self.geometry, self.encoding
            sample["views"] = [
                view_sample(scan, v, geometry, encoding, added, point_inputs, index, name) for v in views
            ]
        return sample


def _lists(value: Any) -> Any:
    """Tuples to lists, recursively: YAML's safe dumper and JSON both want lists."""
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return value
