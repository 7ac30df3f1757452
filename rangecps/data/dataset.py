"""The torch dataset of range images, and the collate function that batches it.

A sample is one scan read from disk, augmented (training only), projected and normalised. Its keys:

| key              | dtype, shape      | meaning                                                             |
|------------------|-------------------|---------------------------------------------------------------------|
| ``input``        | float32 (C, H, W) | C = 6: range, x, y, z, intensity, mask, encoded (see encoding.py)   |
| ``label``        | int64 (H, W)      | train id of the point that won each pixel; 0 = ignore or empty      |
| ``mask``         | bool (H, W)       | the pixel holds a point                                             |
| ``rows``         | int64 (N,)        | pixel row of every point (occluded ones included); -1 without pixel |
| ``cols``         | int64 (N,)        | pixel column of every point; -1 without pixel                       |
| ``depth``        | float32 (N,)      | range of every point (m)                                            |
| ``point_label``  | int64 (N,)        | train id of every point; 0 = ignore (also for unlabeled scans)      |
| ``points``       | float32 (N, 4)    | point inputs only: x, y, z, intensity of every point, as augmented  |
| ``point_valid``  | bool (N,)         | point inputs only: the point has a pixel (``rows >= 0``)            |
| ``extra_points`` | float32 (E, 4)    | interpolating evaluation only (below): added points with a pixel    |
| ``extra_rows``   | int64 (E,)        | ... their pixel row                                                 |
| ``extra_cols``   | int64 (E,)        | ... their pixel column                                              |
| ``num_points``   | int               | N                                                                   |
| ``index``        | int               | position in the dataset                                             |
| ``draw``         | int               | the key of this draw's augmentation (see ``__getitem__``)           |
| ``scan_id``      | str               | ``SS/NNNNNN`` or the nuScenes sample token                          |
| ``non_finite``   | int               | points with a NaN / infinite value (no pixel; see ``project_scan``) |

:func:`collate` stacks the images to (B, ...) and pads the per-point arrays to the longest scan of the batch
(rows/cols -1, depth -1, labels 0), so ``num_points`` (B,) tells where each scan's points end. Training datasets
are built with ``with_points=False`` and carry the pixel keys only.

Point inputs (``RangeDataset(point_inputs=True)``, for point-based range-view networks such as FRNet, whose
``forward(points, coors, batch_size, grid)`` wants every scan's points concatenated with their frustum pixel). A
sample then also holds ``points``, the very array that was projected (after augmentation, before the optional
column roll, which moves ``cols`` only), and always the per-point arrays, whatever ``with_points`` says. Points
without a pixel (a non-finite value, or ``r == 0``: see :func:`project_scan`) are *flagged*, not dropped: the
per-point arrays keep all N points in file order, so evaluation still labels every point, and ``point_valid`` is
False for them (their ``points`` row is kept as read, NaN included). :func:`collate` then adds, beside the padded
arrays above:

| key              | dtype, shape       | meaning                                                            |
|------------------|--------------------|--------------------------------------------------------------------|
| ``points``       | float32 (P + E, 4) | scan by scan: its P_b points with a pixel in file order, then its  |
|                  |                    | E_b interpolated ones (evaluation-time RangeInterpolation, below)  |
| ``coors``        | int64 (P + E, 3)   | (batch index, row, col) of each of them: FRNet's ``coors``         |
| ``point_valid``  | bool (B, N_max)    | padded ``point_valid`` (False in the padding)                      |
| ``point_counts`` | int64 (B,)         | P_b, the points with a pixel of scan b                             |
| ``point_extra``  | int64 (B,)         | E_b, scan b's interpolated points; only in a batch with them       |
| ``point_offsets``| int64 (B + 1,)     | scan b's P_b + E_b rows: ``point_offsets[b]:point_offsets[b + 1]``  |

The batch's ``points`` are all finite. Without interpolation (E = 0) ``P = point_valid.sum()``, and the
concatenation follows the row-major order of the padded mask, so a per-point output of the network goes back to
every point with ``padded[batch["point_valid"]] = out`` (points without a pixel keep what ``padded`` was filled
with, e.g. the fallback class), and its training targets are ``batch["point_label"][batch["point_valid"]]``.
With the option off the samples and batches are exactly the keys above (no ``point_extra``). Cached range images
(``rangecps-prep --cache``) hold no points: a point-input dataset ignores the cache and reads and projects the
scans (the cache's augmentations equal the point ones, so the images are the same either way, up to points lying
exactly on a column edge).

Evaluation-time RangeInterpolation (``RangeDataset(interpolation=...)``, point inputs of a run trained with
``data.augment.range_interpolation``; the FRNet release's val / test pipelines): the network also sees the points
:func:`~rangecps.data.scan_mixing.interpolated_points` adds, but every per-point key above still covers the N
points of the file, in order, and the added points are never labelled or scored. The sample's ``extra_*`` keys
hold the added points that have a pixel, in the order interpolation adds them; its images are the scan's own.
:func:`~rangecps.data.point_batch.original_rows` picks the own rows of a batch's ``points``:
``padded[batch["point_valid"]] = out[original_rows(batch)]``.
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
from rangecps.data.point_batch import collate_points, interpolation_keys
from rangecps.data.scan_mixing import ScanMixing, SphericalImage
from rangecps.io import Scan, ScanFormatError
from rangecps.labels import LabelMap
from rangecps.projection import Projection, pixel_labels, project_rings, project_spherical

CHANNELS = ("range", "x", "y", "z", "intensity", "mask")
NORMALISED = CHANNELS[:5]


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


def non_finite(points: np.ndarray) -> np.ndarray:
    """``(N,) bool``: points whose x, y, z or intensity is NaN or infinite."""
    return ~np.isfinite(points[:, :4]).all(axis=1)


def project_scan(scan: Scan, geometry: Geometry) -> Projection:
    """Project a scan onto the range image of ``geometry`` (rings for nuScenes, pitch otherwise).

    A point with any non-finite value gets no pixel (rows/cols -1): a NaN intensity in a pixel would spread
    through the network's convolutions to a third of the image. Such points still get a prediction later (the
    fallback class), as every point without a pixel does."""
    points = scan.points
    bad = non_finite(points)
    if bad.any():
        points = points.copy()
        points[bad, :3] = np.nan  # the projection places no point with a non-finite coordinate
    if geometry.rings:
        if scan.ring is None:
            raise ValueError(f"{scan.meta.get('points', 'scan')}: ring-based projection needs ring indices")
        return project_rings(points, scan.ring, height=geometry.height, width=geometry.width)
    return project_spherical(
        points,
        height=geometry.height,
        width=geometry.width,
        fov_up=geometry.fov_up,
        fov_down=geometry.fov_down,
    )


class RangeDataset(Dataset):
    """Scans of one split as range-image samples (see the module docstring for the keys).

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
    ) -> None:
        if interpolation is not None and (not point_inputs or mixing is not None):
            raise ValueError("RangeDataset: interpolation needs point_inputs and no mixing (evaluation)")
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
        self.cache_dir = cache_dir if usable(augment) and self.mixing is None and not point_inputs else None
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
        proj = project_scan(scan, self.geometry)
        labels = scan.labels if scan.labels is not None else np.zeros(scan.num_points, np.int64)
        image = self.encode(scan.points, proj)
        bad = int(non_finite(scan.points).sum())
        points = scan.points if self.point_inputs else None
        pixel_label = pixel_labels(labels, proj)
        extra = interpolation_keys(scan, self.interpolation, self.geometry)
        return self._sample(
            i, draw, image, pixel_label, proj.rows, proj.cols, proj.depth, labels, rng, bad, points, extra
        )

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
        """Pack the sample dict (see the module docstring) around the encoded (6, H, W) ``image``, rolling the
        columns of the images (and the points' columns) when ``roll``; ``points``: the projected (N, 4) points of a
        point-input sample; ``extra``: its :func:`interpolation_keys`."""
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


def pack_sample(
    image: np.ndarray,
    pixel_label: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    depth: np.ndarray,
    labels: np.ndarray,
    index: int,
    draw: int,
    scan_id: str,
    with_points: bool = True,
    non_finite: int = 0,
    points: np.ndarray | None = None,
    extra: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """The sample dict of the module docstring around an encoded ``(6, H, W)`` image: what datasets and
    :class:`rangecps.data.pipeline.ScanPipeline` (inference on bare points) both hand to :func:`collate`.

    ``points``: the ``(N, >=4)`` points that were projected, for a point-input sample (adds ``points`` and
    ``point_valid``, and the per-point arrays whatever ``with_points`` says); ``extra``: the
    :func:`interpolation_keys` of such a sample, added as they are."""
    sample: dict[str, Any] = {
        "input": torch.from_numpy(image),
        "label": torch.from_numpy(pixel_label),
        "mask": torch.from_numpy(image[5] > 0),
        "num_points": len(rows),
        "index": index,
        "draw": draw,
        "scan_id": scan_id,
        "non_finite": int(non_finite),
    }
    if with_points or points is not None:
        sample["rows"] = torch.from_numpy(rows.astype(np.int64))
        sample["cols"] = torch.from_numpy(cols.astype(np.int64))
        sample["depth"] = torch.from_numpy(depth)
        sample["point_label"] = torch.from_numpy(labels)
    if points is not None:
        if points.ndim != 2 or points.shape[0] != len(rows) or points.shape[1] < 4:
            raise ValueError(f"pack_sample: points must be ({len(rows)}, >=4), got {points.shape}")
        sample["points"] = torch.from_numpy(np.ascontiguousarray(points[:, :4], dtype=np.float32))
        sample["point_valid"] = sample["rows"] >= 0
    if extra is not None:
        if points is None:
            raise ValueError("pack_sample: interpolated points need the sample's own points")
        sample.update(extra)
    return sample


_PAD = {"rows": -1, "cols": -1, "depth": -1.0, "point_label": 0}


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack`` for loader batches. In a loader worker the result is allocated in shared memory, so that
    sending it to the main process needs no further copy (what torch's default collate does too); np.stack does
    the copy because torch.stack is several times slower on the one thread a worker has."""
    first = tensors[0]
    shape = (len(tensors), *first.shape)
    if torch.utils.data.get_worker_info() is not None:
        storage = first._typed_storage()._new_shared(first.numel() * len(tensors), device=first.device)
        out = first.new(storage).resize_(shape)
    else:
        out = torch.empty(shape, dtype=first.dtype)
    np.stack([t.numpy() for t in tensors], out=out.numpy())
    return out


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples: images stacked to (B, ...), per-point arrays (when present) padded to (B, N_max)."""
    out: dict[str, Any] = {k: _stack([s[k] for s in samples]) for k in ("input", "label", "mask")}
    if "rows" in samples[0]:
        n_max = max(s["num_points"] for s in samples)
        for key, fill in _PAD.items():
            first = samples[0][key]
            padded = torch.full((len(samples), n_max), fill, dtype=first.dtype)
            for b, s in enumerate(samples):
                padded[b, : s["num_points"]] = s[key]
            out[key] = padded
    out["num_points"] = torch.tensor([s["num_points"] for s in samples])
    out["index"] = torch.tensor([s["index"] for s in samples])
    out["draw"] = torch.tensor([s["draw"] for s in samples])
    out["scan_id"] = [s["scan_id"] for s in samples]
    out["non_finite"] = torch.tensor([s.get("non_finite", 0) for s in samples])
    if "points" in samples[0]:
        out.update(collate_points(samples))
    return out
