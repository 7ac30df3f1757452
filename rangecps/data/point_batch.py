"""The point-input side of samples and batches, for point-based range-view networks such as FRNet: the keys of
evaluation-time RangeInterpolation (:func:`interpolation_keys`) and the point keys of a batch
(:func:`collate_points`, :func:`original_rows`). The contract is the tables of :mod:`rangecps.data.sample`, which
calls these; they live apart so that the dataset module stays about reading, projecting and packing scans.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from rangecps.data.index import Geometry
from rangecps.data.scan_mixing import SphericalImage, interpolated_points
from rangecps.io import Scan


def interpolation_keys(
    scan: Scan, image: SphericalImage | None, geometry: Geometry
) -> dict[str, torch.Tensor] | None:
    """The sample keys of evaluation-time RangeInterpolation (see :mod:`rangecps.data.sample`), None without ``image``:
    the points :func:`~rangecps.data.scan_mixing.interpolated_points` adds to ``scan`` on ``image`` that get a
    pixel of ``geometry`` (:func:`added_point_keys`)."""
    return added_point_keys(interpolated_points(scan, image) if image is not None else None, geometry)


def added_point_keys(
    added: Scan | None, geometry: Geometry, move: Callable[[Scan], Scan] | None = None
) -> dict[str, torch.Tensor] | None:
    """``extra_points`` (E, 4), ``extra_rows`` / ``extra_cols`` (E,): the points of ``added`` (a scan's
    interpolated points; None: no keys) that get a pixel of ``geometry``, moved first by ``move`` (a test-time
    view, :class:`rangecps.data.tta.View`: the FRNet release's test pipeline interpolates before its views). A
    point's pixel depends on that point alone, so the added points are projected by themselves."""
    if added is None:
        return None
    from rangecps.data.sample import project_scan  # the sample module imports this one

    extra = move(added) if move is not None else added
    proj = project_scan(extra, geometry)
    keep = proj.rows >= 0
    return {
        "extra_points": torch.from_numpy(np.ascontiguousarray(extra.points[keep, :4], dtype=np.float32)),
        "extra_rows": torch.from_numpy(proj.rows[keep].astype(np.int64)),
        "extra_cols": torch.from_numpy(proj.cols[keep].astype(np.int64)),
    }


def _empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """``torch.empty``, in shared memory inside a loader worker (as ``dataset._stack`` allocates its result), so
    that sending the batch to the main process needs no further copy."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    first = torch.empty(0, dtype=dtype)
    storage = first._typed_storage()._new_shared(max(1, int(np.prod(shape))), device=first.device)
    return first.new(storage)[: int(np.prod(shape))].view(shape)


def collate_points(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The point-input keys of a batch (see :mod:`rangecps.data.sample`): the points with a pixel of every sample
    concatenated, with their ``coors`` (batch index, row, col), counts, offsets and the padded ``point_valid``.

    Samples with evaluation-time RangeInterpolation (``extra_points``, ``extra_rows``, ``extra_cols``) have their
    interpolated points placed right after their own, inside their scan's ``point_offsets`` span, and the batch
    gets ``point_extra`` (B,), their count per scan; without such samples the batch holds no ``point_extra`` and is
    exactly what it was before the option existed (training batches never carry it).

    Written straight into its outputs with NumPy (torch's boolean indexing is several times slower on the one
    thread a worker has), skipping the mask where every point has a pixel, as in nearly every real scan."""
    n_max = max(s["num_points"] for s in samples)
    valid = [s["point_valid"].numpy() for s in samples]
    counts = torch.tensor([int(np.count_nonzero(v)) for v in valid], dtype=torch.int64)
    dense = any("extra_points" in s for s in samples)
    extra = torch.tensor([len(s["extra_points"]) if "extra_points" in s else 0 for s in samples])
    every = [int(n) == len(v) for n, v in zip(counts, valid, strict=True)]
    offsets = torch.zeros(len(samples) + 1, dtype=torch.int64)
    torch.cumsum(counts + extra, 0, out=offsets[1:])
    total = int(offsets[-1])
    points, coors = _empty((total, 4), torch.float32), _empty((total, 3), torch.int64)
    mask = torch.zeros((len(samples), n_max), dtype=torch.bool)
    p, c, m = points.numpy(), coors.numpy(), mask.numpy()
    for b, s in enumerate(samples):
        start, own_end, end = int(offsets[b]), int(offsets[b] + counts[b]), int(offsets[b + 1])
        v = valid[b]
        m[b, : len(v)] = v
        c[start:end, 0] = b
        for column, array in ((1, s["rows"].numpy()), (2, s["cols"].numpy())):
            c[start:own_end, column] = array if every[b] else array[v]
        p[start:own_end] = s["points"].numpy() if every[b] else s["points"].numpy()[v]
        if own_end < end:  # the scan's interpolated points, after its own
            p[own_end:end] = s["extra_points"].numpy()
            c[own_end:end, 1] = s["extra_rows"].numpy()
            c[own_end:end, 2] = s["extra_cols"].numpy()
    out = {
        "points": points,
        "coors": coors,
        "point_valid": mask,
        "point_counts": counts,
        "point_offsets": offsets,
    }
    if dense:
        out["point_extra"] = extra.to(torch.int64)
    return out


def original_rows(batch: dict[str, Any]) -> torch.Tensor:
    """``(P + E,) bool``: which rows of ``batch["points"]`` are the scans' own points (False for the points that
    evaluation-time RangeInterpolation added). A per-point output ``out`` of the network goes back to every point
    with ``padded[batch["point_valid"]] = out[original_rows(batch)]``; all True in a batch without
    ``point_extra``."""
    keep = torch.ones(int(batch["point_offsets"][-1]), dtype=torch.bool)
    extra = batch.get("point_extra")
    if extra is not None:
        ends = batch["point_offsets"][1:]
        for end, e in zip(ends.tolist(), extra.tolist(), strict=True):
            keep[end - e : end] = False
    return keep


__all__ = ["added_point_keys", "collate_points", "interpolation_keys", "original_rows"]
