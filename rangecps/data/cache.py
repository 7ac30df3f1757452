"""Cached range images (``rangecps-prep ... --cache``), so that loading a scan skips reading and projecting it.

A cache file holds one scan projected at its dataset's native range image, before normalisation: the six channels,
the pixel labels and the per-point pixel, range and label. Augmentations that move points rigidly have exact
range-image equivalents, so cached scans can still be augmented:

- a yaw rotation by ``2 pi k / W`` shifts every column by ``k`` (and rotates the x, y channels);
- mirroring y (``y -> -y``) maps column ``c`` to ``W - 1 - c``; mirroring x maps it to ``W / 2 - 1 - c`` (mod W);
- scaling x, y and z alike multiplies range, x, y and z and moves no point to another pixel.

The nearest point of each pixel stays the nearest, so these equal projecting the transformed points (up to points
lying exactly on a column edge). Point dropout, translation, point noise and scaling of x and y alone change which
point wins a pixel or which row a point falls in: with them, the dataset reads and projects the points as usual.
So it does with FRNet's scan mixing and range interpolation (:mod:`rangecps.data.scan_mixing`), which add points.
Rotations are drawn on the grid of ``W`` column shifts.

A cache is keyed by what made it (``key.json``, written after the last scan): the dataset kind, its label map,
each split's label source (ScribbleKITTI trains on ``scribbles/``, SemanticKITTI on ``labels/``), the range image,
and the digest of the indexed files' sizes and modification times. A run whose data differ does not use it and says
once why (:func:`cache_mismatch`). The input encoding is not part of the key: the cache holds raw channels, and
both encodings are computed from them when a scan is read.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from rangecps.atomic import atomic_write
from rangecps.data.augment import Compose, RandomFlip, RandomRotate, RandomScale
from rangecps.io import Scan, ScanFormatError
from rangecps.projection import Projection, gather_channels, pixel_labels

IMAGE_TRANSFORMS = (RandomRotate, RandomFlip, RandomScale)
CACHE_VERSION = 1
CACHED_SPLITS = ("train", "val")
KEY_FILE = "key.json"


@dataclass
class CachedScan:
    """One cached scan. ``channels`` (6, H, W) float32 range, x, y, z, intensity, mask (not normalised);
    ``label`` (H, W) int64; ``rows``, ``cols`` (N,) int64 (-1 without pixel); ``depth`` (N,) float32;
    ``point_label`` (N,) int64."""

    channels: np.ndarray
    label: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    depth: np.ndarray
    point_label: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        return self.channels[5] > 0

    @property
    def num_points(self) -> int:
        return len(self.rows)


def cache_file(cache_dir: Path, scan_id: str) -> Path:
    return cache_dir / f"{scan_id.replace('/', '_')}.npz"


def write_cached(path: Path, scan: Scan, proj: Projection) -> None:
    """Store ``scan`` projected as ``proj`` (labels as train ids, 0 where the scan has none)."""
    labels = scan.labels if scan.labels is not None else np.zeros(scan.num_points, np.int64)
    with atomic_write(path, "wb") as f:
        np.savez(
            f,
            channels=gather_channels(scan.points, proj),
            label=pixel_labels(labels, proj).astype(np.uint8),
            rows=proj.rows.astype(np.int16),
            cols=proj.cols.astype(np.int16),
            depth=proj.depth,
            point_label=labels.astype(np.uint8),
        )


def read_cached(path: Path) -> CachedScan:
    try:
        with np.load(path) as z:
            return CachedScan(
                channels=z["channels"], label=z["label"].astype(np.int64), rows=z["rows"].astype(np.int64),
                cols=z["cols"].astype(np.int64), depth=z["depth"], point_label=z["point_label"].astype(np.int64),
            )  # fmt: skip
    except (OSError, KeyError, ValueError) as e:
        raise ScanFormatError(f"{path}: unreadable cache file ({e}); run rangecps-prep --cache again") from e


def usable(augment: Compose | None) -> bool:
    """Whether ``augment`` has an exact range-image equivalent (or is empty)."""
    return augment is None or all(
        isinstance(t, IMAGE_TRANSFORMS) and (not isinstance(t, RandomScale) or t.z)
        for t in augment.transforms
    )


def _remap_columns(c: CachedScan, new_col: np.ndarray) -> None:
    """Move every column ``j`` of the images to ``new_col[j]`` and update the points' columns, in place."""
    order = np.argsort(new_col)
    c.channels = c.channels[:, :, order]
    c.label = c.label[:, order]
    held = c.cols >= 0
    c.cols[held] = new_col[c.cols[held]]


def augment_cached(c: CachedScan, augment: Compose, rng: np.random.Generator) -> CachedScan:
    """Apply ``augment``'s rotate / flip / scale to a cached scan in range-image space (see the module doc)."""
    width = c.channels.shape[2]
    cols = np.arange(width)
    x, y = c.channels[1].copy(), c.channels[2].copy()
    for t in augment.transforms:
        if isinstance(t, RandomRotate):
            k = int(rng.integers(width))
            yaw = 2.0 * np.pi * k / width  # points turn by +yaw: their yaw angle (= -azimuth) drops by yaw
            cos, sin = np.float32(np.cos(yaw)), np.float32(np.sin(yaw))
            x, y = cos * x - sin * y, sin * x + cos * y
            cols = (cols - k) % width
        elif isinstance(t, RandomFlip):
            flip_y, flip_x = rng.random(2) < 0.5
            if flip_x:
                x = -x
                cols = (width // 2 - 1 - cols) % width
            if flip_y:
                y = -y
                cols = width - 1 - cols
        elif isinstance(t, RandomScale):
            s = np.float32(t.factor(rng))
            c.channels = c.channels.copy()
            c.channels[[0, 3]] *= s
            x, y = x * s, y * s
    c.channels = c.channels.copy()
    c.channels[1], c.channels[2] = x, y
    c.rows, c.cols = c.rows.copy(), c.cols.copy()
    _remap_columns(c, cols)
    return c


def cache_key(dataset_cls: type, root: Path, index) -> dict[str, Any]:
    """What a cache of ``index`` holds (see the module doc); JSON-plain, so that it compares equal to a loaded one."""
    from rangecps.data.index import source_key

    source = index.source if index.source is not None else source_key(dataset_cls, root, index)
    key = {
        "version": CACHE_VERSION,
        "dataset": dataset_cls.name,
        "label_map": dataset_cls.label_map,
        "labels": {split: source["labels"].get(split, "") for split in CACHED_SPLITS},
        "geometry": asdict(dataset_cls.geometry),
        "files": source["files"],
    }
    return json.loads(json.dumps(key))


def _describe(key: dict[str, Any]) -> str:
    labels = key.get("labels") or {}
    return f"{key.get('dataset')} scans labeled from {labels.get('train') or 'nothing'} (train)"


def cache_mismatch(folder: Path, expected: dict[str, Any]) -> str | None:
    """Why the cache in ``folder`` cannot serve a run whose data are keyed ``expected`` (:func:`cache_key`), or
    None when it can."""
    try:
        saved = json.loads((folder / KEY_FILE).read_text())
    except FileNotFoundError:
        return "it does not record what it was made from (made by an older rangecps, or its build was interrupted)"
    except (OSError, ValueError) as e:
        return f"its {KEY_FILE} cannot be read ({e})"
    if not isinstance(saved, dict) or saved.get("version") != CACHE_VERSION:
        return "it was made by another version of rangecps"
    if (saved.get("dataset"), saved.get("labels"), saved.get("label_map")) != (
        expected["dataset"], expected["labels"], expected["label_map"],
    ):  # fmt: skip
        return f"it holds {_describe(saved)}, this run reads {_describe(expected)}"
    if saved.get("geometry") != expected["geometry"]:
        return "it was projected onto another range image"
    if saved.get("files") != expected["files"]:
        return "the dataset's files changed since it was made"
    return None


def build_cache(dataset_cls: type, root: Path, index, label_map, out_dir: Path, progress: bool = True) -> int:
    """Project and store every labeled-split scan (train, val) at the dataset's native range image, then the key
    of what the cache holds (:func:`cache_key`); a rebuild first removes the old key, so that a cache whose
    rebuild was interrupted is never used."""
    from rangecps.data.index import read_scan
    from rangecps.data.sample import project_scan

    out_dir = Path(out_dir)
    key = cache_key(dataset_cls, Path(root), index)
    with contextlib.suppress(FileNotFoundError):
        (out_dir / KEY_FILE).unlink()
    written = 0
    for split in CACHED_SPLITS:
        for rec in tqdm(
            index.splits.get(split, []), desc=f"cache {split}", disable=not progress, leave=False
        ):
            scan = read_scan(root, rec, dataset_cls.file_format, label_map)
            write_cached(cache_file(out_dir, rec.scan_id), scan, project_scan(scan, dataset_cls.geometry))
            written += 1
    with atomic_write(out_dir / KEY_FILE, "w") as f:
        json.dump(key, f, indent=1)
    return written
