"""One scan as a sample, and samples as a batch: the keys every dataset and pipeline hands to the model.

A sample is one scan read from disk, augmented (training only), projected and normalised (by
:class:`~rangecps.data.dataset.RangeDataset`, or by :class:`~rangecps.data.pipeline.ScanPipeline` for bare points
at inference): :func:`pack_sample` makes it. Its keys:

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
| ``views``        | list of samples   | test-time augmentation only: the scan through each view (tta.py)    |

:func:`collate` stacks the images to (B, ...) and pads the per-point arrays to the longest scan of the batch
(rows/cols -1, depth -1, labels 0), so ``num_points`` (B,) tells where each scan's points end; ``views`` becomes
one collated batch per view. Training datasets
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

from typing import Any

import numba
import numpy as np
import torch

from rangecps.data.index import Geometry
from rangecps.data.point_batch import collate_points
from rangecps.io import Scan
from rangecps.projection import Projection, project_rings, project_spherical

# The image channels in order; the encoding's sixth channel is the mask (see encoding.py).
CHANNELS = ("range", "x", "y", "z", "intensity", "mask")


@numba.njit(cache=True, nogil=True)
def _non_finite_kernel(points: np.ndarray, columns: int, out: np.ndarray) -> None:
    for i in range(points.shape[0]):
        bad = False
        for c in range(columns):
            bad |= not np.isfinite(points[i, c])
        out[i] = bad


def non_finite(points: np.ndarray) -> np.ndarray:
    """``(N,) bool``: points whose x, y, z or intensity is NaN or infinite.

    A loop, not ``~isfinite(points[:, :4]).all(1)``: NumPy's reduction over an axis of 4 took 2 ms of a
    120,000-point scan, half the loader's time per scan; this loop takes an eighth of that."""
    out = np.empty(points.shape[0], np.bool_)
    _non_finite_kernel(points, min(points.shape[1], 4), out)
    return out


def project_scan(scan: Scan, geometry: Geometry, bad: np.ndarray | None = None) -> Projection:
    """Project a scan onto the range image of ``geometry`` (rings for nuScenes, pitch otherwise).

    A point with any non-finite value gets no pixel (rows/cols -1): a NaN intensity in a pixel would spread
    through the network's convolutions to a third of the image. Such points still get a prediction later (the
    fallback class), as every point without a pixel does. ``bad`` is ``non_finite(scan.points)`` where the
    caller has it already."""
    points = scan.points
    bad = non_finite(points) if bad is None else bad
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
    if "views" in samples[0]:  # test-time augmentation: one batch per view, scans in the same order
        out["views"] = [collate([s["views"][v] for s in samples]) for v in range(len(samples[0]["views"]))]
    return out
