"""The torch dataset of range images, and the collate function that batches it.

A sample is one scan read from disk, augmented (training only), projected and normalised. Its keys:

| key            | dtype, shape          | meaning                                                              |
|----------------|-----------------------|----------------------------------------------------------------------|
| ``input``      | float32 (C, H, W)     | C = 6: range, x, y, z, intensity (normalised), mask; 0 where empty |
| ``label``      | int64 (H, W)          | train id of the point that won each pixel; 0 = ignore or empty       |
| ``mask``       | bool (H, W)           | the pixel holds a point                                              |
| ``rows``       | int64 (N,)            | pixel row of every point (occluded ones included); -1 without pixel  |
| ``cols``       | int64 (N,)            | pixel column of every point; -1 without pixel                       |
| ``depth``      | float32 (N,)          | range of every point (m)                                             |
| ``point_label``| int64 (N,)            | train id of every point; 0 = ignore (also for unlabeled scans)       |
| ``num_points`` | int                   | N                                                                    |
| ``index``      | int                   | position in the dataset                                             |
| ``scan_id``    | str                   | ``SS/NNNNNN`` or the nuScenes sample token                           |

:func:`collate` stacks the images to (B, ...) and pads the per-point arrays to the longest scan of the batch
(rows/cols -1, depth -1, labels 0), so ``num_points`` (B,) tells where each scan's points end. Training datasets
are built with ``with_points=False`` and carry the pixel keys only.
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
from rangecps.data.index import Geometry, ScanRecord, read_scan
from rangecps.io import Scan
from rangecps.labels import LabelMap
from rangecps.projection import Projection, gather_channels, pixel_labels, project_rings, project_spherical

CHANNELS = ("range", "x", "y", "z", "intensity", "mask")
NORMALISED = CHANNELS[:5]


@dataclass(frozen=True)
class InputStats:
    """Per-channel mean and std of range, x, y, z, intensity over the training scans, and the number of training
    points of each train class (for class weights; index 0 counts ignored points)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_scans: int = 0
    class_counts: tuple[int, ...] = ()

    def save(self, path: str | Path) -> None:
        data = {
            "channels": list(NORMALISED),
            "mean": list(self.mean),
            "std": list(self.std),
            "scans": self.num_scans,
            "class_counts": list(self.class_counts),
        }
        with atomic_write(path, "w") as f:
            json.dump(data, f, indent=1)

    @classmethod
    def load(cls, path: str | Path) -> InputStats:
        data = json.loads(Path(path).read_text())
        if data.get("channels") != list(NORMALISED) or any(s <= 0 for s in data["std"]):
            raise ValueError(f"{path}: statistics must list channels {NORMALISED} with positive std")
        return cls(
            tuple(data["mean"]),
            tuple(data["std"]),
            int(data.get("scans", 0)),
            tuple(int(c) for c in data.get("class_counts", ())),
        )


def project_scan(scan: Scan, geometry: Geometry) -> Projection:
    """Project a scan onto the range image of ``geometry`` (rings for nuScenes, pitch otherwise)."""
    if geometry.rings:
        if scan.ring is None:
            raise ValueError(f"{scan.meta.get('points', 'scan')}: ring-based projection needs ring indices")
        return project_rings(scan.points, scan.ring, height=geometry.height, width=geometry.width)
    return project_spherical(
        scan.points,
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
        seed: base seed; item ``i`` in epoch ``e`` draws from ``default_rng([seed, e, i])``, so augmentations do not
            depend on which worker loads the item.
        with_points: return the per-point arrays (``rows``, ``cols``, ``depth``, ``point_label``). Training reads
            pixels only and turns them off: they would triple what loader workers pass to the main process.
        cache_dir: folder of cached range images (``rangecps-prep --cache``) at this geometry; used whenever the
            augmentations have exact range-image equivalents (see :mod:`rangecps.data.cache`).
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
    ) -> None:
        self.root = Path(root)
        self.records = list(records)
        self.file_format = file_format
        self.geometry = geometry
        self.label_map = label_map
        self.augment = augment
        self.seed = seed
        self.with_points = with_points
        self.cache_dir = cache_dir if cache_dir is not None and usable(augment) else None
        self.epoch = 0
        self.mean = np.asarray(stats.mean, np.float32).reshape(5, 1, 1)
        self.std = np.asarray(stats.std, np.float32).reshape(5, 1, 1)
        self.inv_std = 1.0 / self.std

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> dict[str, Any]:
        record = self.records[i]
        augment = self.augment is not None and self.augment.transforms
        rng = np.random.default_rng([self.seed, self.epoch, i])
        if self.cache_dir is not None:
            c = read_cached(cache_file(self.cache_dir, record.scan_id))
            if c.channels.shape[1:] != (self.geometry.height, self.geometry.width):
                raise ValueError(
                    f"{self.cache_dir}: cached images are {c.channels.shape[1:]}, not this geometry"
                )
            if augment:
                c = augment_cached(c, self.augment, rng)
            if self.label_map is None:
                c.label, c.point_label = np.zeros_like(c.label), np.zeros_like(c.point_label)
            image = c.channels
            mask = image[5] > 0
            image[:5] = (image[:5] - self.mean) * self.inv_std * mask
            return self._sample(i, image, c.label, c.rows, c.cols, c.depth, c.point_label)
        scan = read_scan(self.root, record, self.file_format, self.label_map)
        if augment:
            scan = self.augment(scan, rng)
        proj = project_scan(scan, self.geometry)
        labels = scan.labels if scan.labels is not None else np.zeros(scan.num_points, np.int64)
        image = gather_channels(scan.points, proj, self.mean, self.std)  # normalised
        return self._sample(i, image, pixel_labels(labels, proj), proj.rows, proj.cols, proj.depth, labels)

    def _sample(
        self,
        i: int,
        image: np.ndarray,
        pixel_label: np.ndarray,
        rows: np.ndarray,
        cols: np.ndarray,
        depth: np.ndarray,
        labels: np.ndarray,
    ) -> dict[str, Any]:
        """Pack the sample dict (see the module docstring) around the normalised (6, H, W) ``image``."""
        sample: dict[str, Any] = {
            "input": torch.from_numpy(image),
            "label": torch.from_numpy(pixel_label),
            "mask": torch.from_numpy(image[5] > 0),
            "num_points": len(rows),
            "index": i,
            "scan_id": self.records[i].scan_id,
        }
        if self.with_points:
            sample["rows"] = torch.from_numpy(rows.astype(np.int64))
            sample["cols"] = torch.from_numpy(cols.astype(np.int64))
            sample["depth"] = torch.from_numpy(depth)
            sample["point_label"] = torch.from_numpy(labels)
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
    out["scan_id"] = [s["scan_id"] for s in samples]
    return out
