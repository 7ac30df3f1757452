"""The torch dataset of range images: :class:`RangeDataset` reads each scan of a split, augments it (training),
projects and encodes it into the sample of :mod:`rangecps.data.sample` (whose docstring lists its keys and how
:func:`~rangecps.data.sample.collate` batches them); and :class:`InputStats`, the normalisation statistics.

With ``point_inputs`` a sample also carries the points that were projected, for point-based range-view networks
(FRNet). Points without a pixel are flagged, not dropped, so evaluation still labels every point of the file. The
range-image cache (``rangecps-prep --cache``) holds no points: a point-input dataset reads and projects the scans.
With ``interpolation`` (evaluation of a point model trained with RangeInterpolation) the network also sees the
added points, which are never labelled or scored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from rangecps.atomic import atomic_write
from rangecps.data.augment import Compose
from rangecps.data.cache import augment_cached, cache_file, read_cached, usable
from rangecps.data.encoding import InputEncoding
from rangecps.data.index import Geometry, ScanRecord, read_scan
from rangecps.data.point_batch import added_point_keys
from rangecps.data.sample import CHANNELS, non_finite, pack_sample, project_scan
from rangecps.data.scan_mixing import ScanMixing, SphericalImage, interpolated_points
from rangecps.data.tta import View, view_sample
from rangecps.io import Scan, ScanFormatError
from rangecps.labels import LabelMap
from rangecps.projection import pixel_labels

NORMALISED = CHANNELS[:5]  # the channels InputStats normalises (the mask is not)


@dataclass(frozen=True)
class InputStats:
    """Per-channel mean and std of range, x, y, z, intensity over the training scans, and the number of training
    points of each train class (for class weights; index 0 counts ignored points).

    ``split`` is the split they were computed on: ``train``, unless the root has no training scans (a root that
    holds only the validation sequence, to evaluate a model). ``source`` is the ``files`` digest of the index
    they were computed with (see :func:`rangecps.data.index.source_key`), so that statistics are never paired
    with an index of other files."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_scans: int = 0
    class_counts: tuple[int, ...] = ()
    split: str = "train"
    source: str = ""

    def save(self, path: str | Path) -> None:
        data = {
            "channels": list(NORMALISED),
            "mean": list(self.mean),
            "std": list(self.std),
            "scans": self.num_scans,
            "class_counts": list(self.class_counts),
            "split": self.split,
            "source": self.source,
        }
        with atomic_write(path, "w") as f:
            json.dump(data, f, indent=1)

    @classmethod
    def load(cls, path: str | Path) -> InputStats:
        try:
            data = json.loads(Path(path).read_text())
            ok = data.get("channels") == list(NORMALISED) and all(s > 0 for s in data["std"])
            if ok:
                return cls(
                    tuple(float(m) for m in data["mean"]),
                    tuple(float(s) for s in data["std"]),
                    int(data.get("scans", 0)),
                    tuple(int(c) for c in data.get("class_counts", ())),
                    str(data.get("split", "train")),
                    str(data.get("source", "")),
                )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(
                f"{path}: not a statistics file ({type(e).__name__}: {e}); run rangecps-prep again"
            ) from e
        raise ValueError(f"{path}: statistics must list channels {NORMALISED} with positive std")


class RangeDataset(Dataset):
    """Scans of one split as range-image samples (keys: :mod:`rangecps.data.sample`).

    Args:
        root: dataset root.
        records: the scans, from a :class:`~rangecps.data.index.DatasetIndex`.
        file_format: ``"kitti"`` or ``"nuscenes"``.
        geometry: range-image size and projection.
        label_map: converts raw labels to train ids; None reads no labels (unlabeled stream).
        stats: normalisation statistics.
        augment: train-time transforms, or None.
        seed: base seed of the augmentations (see ``__getitem__``).
        with_points: return the per-point arrays (``rows``, ``cols``, ``depth``, ``point_label``). Training reads
            pixels only and turns them off: they would triple what loader workers pass to the main process.
        cache_dir: folder of cached range images (``rangecps-prep --cache``) at this geometry; used whenever the
            augmentations have exact range-image equivalents (see :mod:`rangecps.data.cache`).
        encoding: ``"normalised"`` or ``"released"`` (see :mod:`rangecps.data.encoding`).
        roll: roll each image by a random number of columns in ``[100, W - 100]`` after projection (the
            release's ``sample_transform``; ``[0, W)`` for images narrower than 200 columns).
        mixing: FRNet's FrustumMix, InstanceCopy, RangeInterpolation after ``augment`` (see
            :mod:`rangecps.data.scan_mixing`); an unlabeled dataset (``label_map`` None) applies RangeInterpolation
            only, the mixings need labels. Adds points, so the cache is not used with it.
        interpolation: evaluation-time RangeInterpolation on this image (a point-input dataset without mixing:
            the evaluation of a point model trained with it); the added points ride beside the scan's own
            (``extra_*`` keys), which the per-point arrays still cover alone.
        views: test-time augmentation (evaluation, no ``augment``): each sample also holds ``views``, one
            :func:`~rangecps.data.tta.view_sample` of the scan per view; the sample itself stays the scan as read.
    """

    def __init__(
        self,
        root: str | Path,
        records: list[ScanRecord],
        file_format: str,
        geometry: Geometry,
        label_map: LabelMap | None,
        stats: InputStats,
        augment: Compose | None = None,
        seed: int = 0,
        with_points: bool = True,
        cache_dir: Path | None = None,
        encoding: str = "normalised",
        roll: bool = False,
        point_inputs: bool = False,
        mixing: ScanMixing | None = None,
        interpolation: SphericalImage | None = None,
        views: tuple[View, ...] = (),
    ) -> None:
        if interpolation is not None and (not point_inputs or mixing is not None):
            raise ValueError("RangeDataset: interpolation needs point_inputs and no mixing (evaluation)")
        if views and ((augment is not None and augment.transforms) or mixing is not None or roll):
            raise ValueError(
                "RangeDataset: test-time views are for evaluation, without train-time augmentation"
            )
        self.root = Path(root)
        self.records = list(records)
        self.file_format = file_format
        self.geometry = geometry
        self.label_map = label_map
        self.augment = augment
        self.seed = seed
        self.point_inputs = point_inputs
        self.with_points = with_points or point_inputs
        self.mixing = mixing if label_map is not None or mixing is None else mixing.without_labels()
        self.views = tuple(views)
        cached = usable(augment) and self.mixing is None and not point_inputs and not self.views
        self.cache_dir = cache_dir if cached else None  # cached images hold no points to move
        self.epoch = 0
        self.encode = InputEncoding.make(encoding, file_format, stats.mean, stats.std)
        self.roll = roll
        self.interpolation = interpolation

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """Item ``i`` for ``key = i``, or ``key = (i, draw)`` from the training samplers.

        Augmentations draw from ``default_rng([seed, epoch, draw])`` (``draw = i`` for a plain index). The
        samplers pass each item's position in the epoch's global stream as ``draw``, so every draw of a scan is
        augmented afresh (a labeled scan repeated within an epoch is never seen twice the same way), whatever the
        number of loader workers or processes, and a resumed run draws exactly what it would have drawn.
        """
        i, draw = (key, key) if isinstance(key, int) else key
        record = self.records[i]
        augment = self.augment is not None and self.augment.transforms
        rng = np.random.default_rng([self.seed, self.epoch, draw])
        if self.cache_dir is not None and not self.point_inputs:  # cached images hold no points
            path = cache_file(self.cache_dir, record.scan_id)
            c = read_cached(path)
            if c.channels.shape[1:] != (self.geometry.height, self.geometry.width):
                raise ScanFormatError(
                    f"{path}: cached image is {c.channels.shape[1]}x{c.channels.shape[2]}, not this run's "
                    f"{self.geometry.height}x{self.geometry.width}"
                )
            if augment:
                c = augment_cached(c, self.augment, rng)
            if self.label_map is None:
                c.label, c.point_label = np.zeros_like(c.label), np.zeros_like(c.point_label)
            image = self.encode.encode_raw(c.channels)
            return self._sample(i, draw, image, c.label, c.rows, c.cols, c.depth, c.point_label, rng)
        # read_scan raises ScanFormatError naming the file (a file missing or changed since prep); in a loader
        # worker torch re-raises it in the main process, where its message is that one line again
        scan = self._read(i, rng)
        if self.mixing is not None:
            scan = self.mixing(scan, rng, lambda: self._read(int(rng.integers(len(self.records))), rng))
        bad_points = non_finite(scan.points)
        proj = project_scan(scan, self.geometry, bad_points)
        labels = scan.labels if scan.labels is not None else np.zeros(scan.num_points, np.int64)
        image = self.encode(scan.points, proj)
        bad = int(bad_points.sum())
        points = scan.points if self.point_inputs else None
        pixel_label = pixel_labels(labels, proj)
        # RangeInterpolation once: the sample and every test-time view take the same added points.
        added = interpolated_points(scan, self.interpolation) if self.interpolation is not None else None
        extra = added_point_keys(added, self.geometry)
        sample = self._sample(
            i, draw, image, pixel_label, proj.rows, proj.cols, proj.depth, labels, rng, bad, points, extra
        )
        scan_id, point_inputs = self.records[i].scan_id, self.point_inputs
        views = [
            view_sample(scan, v, self.geometry, self.encode, added, point_inputs, i, scan_id)
            for v in self.views
        ]
        return {**sample, "views": views} if views else sample

    def _read(self, i: int, rng: np.random.Generator) -> Scan:
        """Scan ``i`` as read, put through the point transforms (drawing from ``rng``) when there are some."""
        scan = read_scan(self.root, self.records[i], self.file_format, self.label_map)
        return self.augment(scan, rng) if self.augment is not None and self.augment.transforms else scan

    def _sample(
        self,
        i: int,
        draw: int,
        image: np.ndarray,
        pixel_label: np.ndarray,
        rows: np.ndarray,
        cols: np.ndarray,
        depth: np.ndarray,
        labels: np.ndarray,
        rng: np.random.Generator,
        bad: int = 0,
        points: np.ndarray | None = None,
        extra: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, Any]:
        """Pack the sample dict (:func:`~rangecps.data.sample.pack_sample`) around the encoded (6, H, W)
        ``image``, rolling the columns of the images (and the points' columns) when ``roll``; ``points``: the
        projected (N, 4) points of a point-input sample; ``extra``: its :func:`added_point_keys`."""
        if self.roll:
            width = image.shape[-1]
            low, high = (100, width - 100) if width > 200 else (0, width - 1)
            shift = int(rng.integers(low, high + 1))
            # New column j holds old column (j + shift) mod W, as the release's concatenation does.
            image = np.roll(image, -shift, axis=-1)
            pixel_label = np.roll(pixel_label, -shift, axis=-1)
            cols = np.where(cols >= 0, (cols - shift) % width, cols)
            if extra is not None:
                extra = {**extra, "extra_cols": (extra["extra_cols"] - shift) % width}
        return pack_sample(
            image, pixel_label, rows, cols, depth, labels, i, draw, self.records[i].scan_id, self.with_points,
            non_finite=bad, points=points, extra=extra,
        )  # fmt: skip
