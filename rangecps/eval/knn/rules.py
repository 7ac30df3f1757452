"""The rules of kNN post-processing (RangeNet++ style), and ``knn_reference``, which states them in plain loops.

A range-view network labels pixels; every point then takes the label of its pixel, which smears labels across
depth edges and gives occluded points (several points in one pixel) the label of the nearest one. The kNN
step re-labels each point by a vote among range-image neighbours that are close to it in *depth*.

Semantics (one point ``p`` with pixel ``(r, c)`` and range ``R_p``), shared by every implementation here:

- Candidates are the ``S x S`` window positions ``j = a * S + b`` (row-major, ``a, b`` in ``0..S-1``) around
  ``(r, c)``. Rows outside the image are not candidates. Columns wrap around the azimuth seam when
  ``wrap=True`` (a 360 deg scan: column 0 and column ``W-1`` are neighbours), else they are not candidates
  either. Empty pixels (``proj_range < 0``) are never candidates. RangeNet++ instead zero-pads its
  ``F.unfold``, so out-of-image positions look like range 0 with label 0: a border artefact fixed here.
- The centre position ``j = S*S // 2`` is always a candidate and uses ``R_p`` itself (distance 0): the point's
  own pixel may hold a nearer, occluding point.
- Distance ``d_j = |range_j - R_p| * w_j`` in float32, with ``w = 1 - G`` and ``G`` the ``S x S`` Gaussian
  (``sigma``) normalised to sum 1, so spatially close pixels count as closer.
- The ``k`` candidates of smallest ``d`` are chosen, ties broken by lower window index ``j``. Only *then* are
  chosen candidates with ``d > cutoff`` removed from the vote (they keep their slot, as in RangeNet++);
  ``cutoff <= 0`` disables the cutoff, as in RangeNet++. Chosen candidates labelled 0 (ignore) vote for nobody.
- Each remaining candidate votes for its pixel's label; the class ``1..K-1`` with most votes wins, ties broken
  by lower class id. If no candidate votes, the point keeps the label of its own pixel ``proj_argmax[r, c]``
  (the plain unprojected prediction) -- RangeNet++ would output class 1 there, an artefact of its argmax.
- Points without a pixel (``rows == -1``) get label 0.

Defaults ``knn=5, search=5, sigma=1.0, cutoff=1.0`` are RangeNet++'s; CENet uses ``knn=7, search=7,
sigma=1.0, cutoff=2.0``.

``knn_reference`` states these rules in plain Python loops; ``knn_numba`` (``cpu.py``) and ``knn_torch``
(``tensor.py``, any torch device) are tested to return exactly the same labels. Skipping candidates beyond the
cutoff before the top-k selection, as ``knn_numba`` does, is exact: such a candidate is farther than every
candidate that votes, so it can only displace candidates that would not vote either.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# The fast implementations rank candidates by one int64 key: float32 distance bits, then the window index.
INDEX_BITS = 16
FLOAT32_INF_BITS = 0x7F800000
# Ranges beyond this are rejected so that every |range difference| stays finite in float32.
MAX_RANGE = 1e30


def inverse_gaussian_weights(search: int, sigma: float) -> np.ndarray:
    """``(search * search,) float32`` weights ``1 - G`` in row-major window order, ``G`` the normalised Gaussian."""
    x = np.arange(search, dtype=np.float64) - (search - 1) / 2.0
    sq = x[:, None] ** 2 + x[None, :] ** 2
    g = np.exp(-sq / (2.0 * sigma**2))
    return (1.0 - g / g.sum()).astype(np.float32).reshape(-1)


def check_inputs(
    proj_range: np.ndarray | torch.Tensor,
    proj_argmax: np.ndarray | torch.Tensor,
    unproj_range: np.ndarray | torch.Tensor,
    rows: np.ndarray | torch.Tensor,
    cols: np.ndarray | torch.Tensor,
    num_classes: int,
    knn: int,
    search: int,
    sigma: float,
    cutoff: float,
) -> None:
    """Raise ValueError for shapes, parameters or values that would make the vote meaningless.

    Works on NumPy arrays and torch tensors alike; for tensors the reductions run on their device.
    """
    range_shape, label_shape = tuple(proj_range.shape), tuple(proj_argmax.shape)
    if len(range_shape) != 2 or label_shape != range_shape:
        raise ValueError(
            f"kNN: proj_range {range_shape} and proj_argmax {label_shape} must be the same (H, W)"
        )
    n = unproj_range.shape[0] if unproj_range.ndim == 1 else -1
    if n < 0 or tuple(rows.shape) != (n,) or tuple(cols.shape) != (n,):
        raise ValueError(
            f"kNN: unproj_range {tuple(unproj_range.shape)}, rows {tuple(rows.shape)}, "
            f"cols {tuple(cols.shape)} must all be (N,)"
        )
    if search < 1 or search % 2 == 0 or search * search >= 1 << INDEX_BITS:
        raise ValueError(f"kNN: search must be a small odd number >= 1, got {search}")
    if not 1 <= knn <= search * search:
        raise ValueError(f"kNN: knn must be in 1..search*search = {search * search}, got {knn}")
    if not sigma > 0:
        raise ValueError(f"kNN: sigma must be > 0, got {sigma}")
    if math.isnan(cutoff):
        raise ValueError("kNN: cutoff must be a number (<= 0 disables it), got NaN")
    if not 2 <= num_classes <= 0xFFFF:
        raise ValueError(f"kNN: num_classes must be in 2..65535 (ignore class 0 included), got {num_classes}")
    h, w = range_shape
    if w < search:
        raise ValueError(f"kNN: image width {w} is smaller than the search window {search}")
    if h * w and (proj_argmax.min() < 0 or proj_argmax.max() >= num_classes):
        raise ValueError(f"kNN: proj_argmax holds labels outside 0..{num_classes - 1}")
    # NaN fails both comparisons, so these also reject NaN.
    if h * w and not (proj_range.min() > -MAX_RANGE and proj_range.max() < MAX_RANGE):
        raise ValueError("kNN: proj_range must be finite (negative marks empty pixels)")
    if n == 0:
        return
    if ((rows < 0) != (cols < 0)).any():
        raise ValueError("kNN: rows and cols must be -1 for the same points")
    if rows.min() < -1 or rows.max() >= h or cols.min() < -1 or cols.max() >= w:
        raise ValueError(f"kNN: rows/cols outside the {h}x{w} image (and not -1)")
    held = unproj_range[rows >= 0]
    if held.shape[0] and not (held.min() > -MAX_RANGE and held.max() < MAX_RANGE):
        raise ValueError("kNN: unproj_range must be finite for points with a pixel")


def knn_reference(
    proj_range: np.ndarray,
    proj_argmax: np.ndarray,
    unproj_range: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    num_classes: int,
    knn: int = 5,
    search: int = 5,
    sigma: float = 1.0,
    cutoff: float = 1.0,
    wrap: bool = True,
) -> np.ndarray:
    """The module's rules as plain Python loops; slow, for tests. Same arguments as ``knn_numba``."""
    proj_range = np.asarray(proj_range, dtype=np.float32)
    proj_argmax = np.asarray(proj_argmax, dtype=np.int64)
    unproj_range = np.asarray(unproj_range, dtype=np.float32)
    rows, cols = np.asarray(rows), np.asarray(cols)
    check_inputs(proj_range, proj_argmax, unproj_range, rows, cols, num_classes, knn, search, sigma, cutoff)
    h, w = proj_range.shape
    pad = search // 2
    weights = inverse_gaussian_weights(search, sigma)
    limit = np.float32(cutoff)
    out = np.zeros(len(unproj_range), dtype=np.int64)
    for i in range(len(unproj_range)):
        r, c, rp = int(rows[i]), int(cols[i]), unproj_range[i]
        if r < 0:
            continue
        candidates = []  # (distance, window index, label)
        for a in range(search):
            for b in range(search):
                j = a * search + b
                rr, cc = r + a - pad, c + b - pad
                if wrap:
                    cc %= w
                if not (0 <= rr < h and 0 <= cc < w):
                    continue
                if j == search * search // 2:
                    neighbour_range = rp
                elif proj_range[rr, cc] < 0:
                    continue
                else:
                    neighbour_range = proj_range[rr, cc]
                d = np.abs(neighbour_range - rp) * weights[j]  # float32 arithmetic
                candidates.append((d, j, int(proj_argmax[rr, cc])))
        candidates.sort(key=lambda t: (t[0], t[1]))
        votes = np.zeros(num_classes, dtype=np.int64)
        for d, _, label in candidates[:knn]:
            if (cutoff > 0 and d > limit) or label == 0:
                continue
            votes[label] += 1
        out[i] = int(np.argmax(votes)) if votes.max() > 0 else int(proj_argmax[r, c])
    return out
