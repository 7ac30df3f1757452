"""kNN post-processing of range-image predictions (RangeNet++ style), exact in three implementations.

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

``knn_reference`` states these rules in plain Python loops; ``knn_numba`` (CPU) and ``knn_torch`` (any torch
device) are tested to return exactly the same labels. Skipping candidates beyond the cutoff before the top-k
selection, as ``knn_numba`` does, is exact: such a candidate is farther than every candidate that votes, so
it can only displace candidates that would not vote either.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numba
import numpy as np
import torch

# Candidates are ranked in knn_torch by one int64 key: float32 distance bits, then the window index.
_INDEX_BITS = 16
_FLOAT32_INF_BITS = 0x7F800000
# Ranges beyond this are rejected so that every |range difference| stays finite in float32.
_MAX_RANGE = 1e30


def inverse_gaussian_weights(search: int, sigma: float) -> np.ndarray:
    """``(search * search,) float32`` weights ``1 - G`` in row-major window order, ``G`` the normalised Gaussian."""
    x = np.arange(search, dtype=np.float64) - (search - 1) / 2.0
    sq = x[:, None] ** 2 + x[None, :] ** 2
    g = np.exp(-sq / (2.0 * sigma**2))
    return (1.0 - g / g.sum()).astype(np.float32).reshape(-1)


def _check_inputs(
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
    if search < 1 or search % 2 == 0 or search * search >= 1 << _INDEX_BITS:
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
    if h * w and not (proj_range.min() > -_MAX_RANGE and proj_range.max() < _MAX_RANGE):
        raise ValueError("kNN: proj_range must be finite (negative marks empty pixels)")
    if n == 0:
        return
    if ((rows < 0) != (cols < 0)).any():
        raise ValueError("kNN: rows and cols must be -1 for the same points")
    if rows.min() < -1 or rows.max() >= h or cols.min() < -1 or cols.max() >= w:
        raise ValueError(f"kNN: rows/cols outside the {h}x{w} image (and not -1)")
    held = unproj_range[rows >= 0]
    if held.shape[0] and not (held.min() > -_MAX_RANGE and held.max() < _MAX_RANGE):
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
    _check_inputs(proj_range, proj_argmax, unproj_range, rows, cols, num_classes, knn, search, sigma, cutoff)
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


def _pad_images(
    proj_range: np.ndarray, proj_argmax: np.ndarray, pad: int, wrap: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``(H + 2 pad, W + 2 pad)`` copies of the range and label images whose border holds what the window sees.

    Rows beyond the image are empty (range -1, label 0). Columns beyond it repeat the other side of the seam
    when ``wrap``, else they are empty too. With this border every window is in bounds, so the kernel needs no
    bounds or seam branches.
    """
    h, w = proj_range.shape
    ranges = np.full((h + 2 * pad, w + 2 * pad), -1.0, dtype=np.float32)
    labels = np.zeros((h + 2 * pad, w + 2 * pad), dtype=np.int64)
    for padded, image in ((ranges, proj_range), (labels, proj_argmax)):
        padded[pad : pad + h, pad : pad + w] = image
        if wrap and pad:
            padded[pad : pad + h, :pad] = image[:, w - pad :]
            padded[pad : pad + h, w + pad :] = image[:, :pad]
    return ranges, labels


@functools.cache
def _numba_kernel(knn: int, search: int) -> Callable[..., None]:
    """The numba kernel specialised for one ``(knn, search)``; it reads images padded by ``_pad_images``.

    Constant trip counts let LLVM unroll the window and the k-slot insertion (measured about 1.6x faster than
    runtime bounds). numba's on-disk cache keys closures on their captured values, so each pair compiles once
    per machine. Branch mispredictions dominated earlier versions that rejected candidates early (a plain
    insertion with early rejection was 2-3x slower), so the hot loops are branch-free: invalid candidates are
    not packed, and the k best keys are kept by a min/max insertion network. Indices are unsigned because
    numba wraps negative signed indices, which cost two extra instructions per load (unsigned: 15% faster).
    """
    area = search * search
    center = area // 2
    no_candidate = np.int64(_FLOAT32_INF_BITS) << _INDEX_BITS  # every key >= this is "no candidate"
    u64 = np.uint64
    size = u64(search)

    @numba.njit(parallel=True, cache=True, nogil=True, boundscheck=False)
    def kernel(
        padded_range: np.ndarray,
        padded_label: np.ndarray,
        unproj_range: np.ndarray,
        rows: np.ndarray,
        cols: np.ndarray,
        weights: np.ndarray,
        limit: np.float32,
        out: np.ndarray,
    ) -> None:
        stride = u64(padded_range.shape[1])
        flat_range = padded_range.reshape(-1)
        flat_label = padded_label.reshape(-1)
        inf = np.float32(np.inf)
        n = rows.shape[0]
        chunk = 1024
        for ci in numba.prange((n + chunk - 1) // chunk):
            # Per-chunk scratch, reused for every point of the chunk.
            dist = np.empty(area, dtype=np.float32)
            dist_bits = dist.view(np.int32)  # non-negative float32s order like their bit patterns
            keys = np.empty(area, dtype=np.int64)
            best = np.empty(knn, dtype=np.int64)
            labels = np.empty(knn, dtype=np.int64)
            for i in range(ci * chunk, min(n, (ci + 1) * chunk)):
                if rows[i] < 0:
                    out[i] = 0
                    continue
                rp = unproj_range[i]
                corner = u64(rows[i]) * stride + u64(cols[i])  # the window's top-left pixel, padded image
                for a in range(search):
                    row_start = corner + u64(a) * stride
                    for b in range(search):
                        j = a * search + b
                        nr = flat_range[row_start + u64(b)]
                        d = abs(nr - rp) * weights[j]
                        # `&`, not `and`: short-circuit operators compile to branches that the random
                        # validity pattern mispredicts (measured 2x slower).
                        dist[j] = d if (nr >= 0) & (d <= limit) else inf
                dist[center] = 0.0  # the point against its own range; 0 <= limit always
                for s in range(knn):
                    best[s] = no_candidate
                # Keys of the real candidates, packed to the front without branches; then the insertion network.
                m = u64(0)
                for j in range(area):
                    keys[m] = (np.int64(dist_bits[j]) << _INDEX_BITS) | j
                    m += u64(dist_bits[j] != _FLOAT32_INF_BITS)
                for t in range(m):
                    key = keys[t]
                    for s in range(knn):
                        kept = best[s]
                        best[s] = min(kept, key)
                        key = max(kept, key)
                for s in range(knn):
                    key = best[s]
                    j = u64(key & ((1 << _INDEX_BITS) - 1))
                    pixel = corner + (j // size) * stride + j % size
                    labels[s] = flat_label[pixel] * (key < no_candidate)
                # Winner = most votes, then lowest class: maximise (count << 16) | (0xFFFF - class) over the
                # chosen labels, counted pairwise (k*k compares beat a votes array's load-store chains).
                top = 0
                for s in range(knn):
                    lab = labels[s]
                    count = 0
                    for t in range(knn):
                        count += labels[t] == lab
                    top = max(top, ((np.int64(count) << 16) | (0xFFFF - lab)) * (lab > 0))
                own = flat_label[corner + u64(search // 2) * (stride + u64(1))]
                out[i] = 0xFFFF - (top & 0xFFFF) if top > 0 else own

    return kernel


def knn_numba(
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
    """kNN post-processing on CPU (numba, parallel over points).

    Args:
        proj_range: ``(H, W) float32`` range image, negative where a pixel is empty.
        proj_argmax: ``(H, W) int64`` predicted train id of each pixel (0 = ignore).
        unproj_range: ``(N,) float32`` range of every point, occluded ones included.
        rows, cols: ``(N,) int32`` pixel of every point; -1 for points without one.
        num_classes: ``K``, including the ignore class 0.
        knn, search, sigma, cutoff: neighbours, odd window size, Gaussian sigma (pixels), range cutoff (metres;
            ``<= 0`` disables it).
        wrap: whether the window wraps across the azimuth seam (column 0 next to column ``W-1``).

    Returns:
        ``(N,) int64`` train id of every point.
    """
    proj_range = np.asarray(proj_range, dtype=np.float32)
    proj_argmax = np.asarray(proj_argmax, dtype=np.int64)
    unproj_range = np.ascontiguousarray(unproj_range, dtype=np.float32)
    rows = np.ascontiguousarray(rows, dtype=np.int32)
    cols = np.ascontiguousarray(cols, dtype=np.int32)
    _check_inputs(proj_range, proj_argmax, unproj_range, rows, cols, num_classes, knn, search, sigma, cutoff)
    out = np.empty(len(unproj_range), dtype=np.int64)
    padded_range, padded_label = _pad_images(proj_range, proj_argmax, search // 2, bool(wrap))
    weights = inverse_gaussian_weights(search, sigma)
    limit = np.float32(cutoff) if cutoff > 0 else np.float32(np.inf)
    kernel = _numba_kernel(int(knn), int(search))
    kernel(padded_range, padded_label, unproj_range, rows, cols, weights, limit, out)
    return out


def knn_torch(
    proj_range: torch.Tensor,
    proj_argmax: torch.Tensor,
    unproj_range: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    num_classes: int,
    knn: int = 5,
    search: int = 5,
    sigma: float = 1.0,
    cutoff: float = 1.0,
    wrap: bool = True,
    chunk: int = 1 << 16,
) -> torch.Tensor:
    """kNN post-processing in vectorised torch on the tensors' device; same arguments as ``knn_numba``.

    Works on ``chunk`` points at a time, to bound scratch memory to about ``chunk * S*S * 90`` bytes (150 MB
    at the default chunk for ``S = 5``). Returns ``(N,) int64`` on the input device.
    """
    device = proj_range.device
    proj_range = proj_range.to(torch.float32)
    proj_argmax = proj_argmax.to(device=device, dtype=torch.int64)
    unproj_range = unproj_range.to(device=device, dtype=torch.float32)
    rows = rows.to(device=device, dtype=torch.int64)
    cols = cols.to(device=device, dtype=torch.int64)
    _check_inputs(proj_range, proj_argmax, unproj_range, rows, cols, num_classes, knn, search, sigma, cutoff)
    h, w = proj_range.shape
    pad, area = search // 2, search * search
    weights = torch.from_numpy(inverse_gaussian_weights(search, sigma)).to(device)
    offsets = torch.arange(area, device=device)
    d_row, d_col = offsets // search - pad, offsets % search - pad
    flat_range, flat_label = proj_range.reshape(-1), proj_argmax.reshape(-1)
    limit = torch.tensor(cutoff, dtype=torch.float32, device=device)
    out = torch.zeros(len(unproj_range), dtype=torch.int64, device=device)
    for start in range(0, len(unproj_range), chunk):
        sl = slice(start, start + chunk)
        has_pixel = rows[sl] >= 0
        r, c, rp = rows[sl][has_pixel], cols[sl][has_pixel], unproj_range[sl][has_pixel]
        rr = r[:, None] + d_row  # (n, S*S)
        cc = c[:, None] + d_col
        if wrap:
            cc = torch.remainder(cc, w)
        inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        flat = rr.clamp(0, h - 1) * w + cc.clamp(0, w - 1)
        nr = flat_range[flat]
        nr[:, area // 2] = rp  # the centre uses the point's own range
        valid = inside & (nr >= 0)
        valid[:, area // 2] = True
        dist = (nr - rp[:, None]).abs() * weights
        dist = torch.where(valid, dist, torch.full_like(dist, math.inf))
        # Non-negative float32 values order like their int32 bit patterns; appending the window index makes
        # every key unique, so topk's choice is exactly "smallest distance, then lowest window index".
        key = (dist.view(torch.int32).to(torch.int64) << _INDEX_BITS) | offsets
        _, pick = torch.topk(key, knn, dim=1, largest=False, sorted=False)
        votes_ok = valid.gather(1, pick)
        if cutoff > 0:
            votes_ok &= dist.gather(1, pick) <= limit
        labels = flat_label[flat.gather(1, pick)]
        labels = torch.where(votes_ok, labels, torch.zeros_like(labels))  # bin 0 collects non-votes
        counts = torch.zeros(len(r), num_classes, dtype=torch.int32, device=device)
        counts.scatter_add_(1, labels, torch.ones_like(labels, dtype=torch.int32))
        top, winner = counts[:, 1:].max(dim=1)  # first maximum = lowest class id among ties
        own = flat_label[r * w + c]
        out[sl][has_pixel] = torch.where(top > 0, winner + 1, own)
    return out


def knn_postprocess(
    proj_range: np.ndarray | torch.Tensor,
    proj_argmax: np.ndarray | torch.Tensor,
    unproj_range: np.ndarray | torch.Tensor,
    rows: np.ndarray | torch.Tensor,
    cols: np.ndarray | torch.Tensor,
    num_classes: int,
    knn: int = 5,
    search: int = 5,
    sigma: float = 1.0,
    cutoff: float = 1.0,
    wrap: bool = True,
    device: str | torch.device | None = None,
) -> np.ndarray | torch.Tensor:
    """kNN post-processing where it is fastest; arguments as in ``knn_numba``.

    ``device=None`` means where ``proj_range`` lives (NumPy arrays: CPU). On CPU this runs ``knn_numba`` and
    returns what it was given: a NumPy array for NumPy input, a CPU tensor for tensor input. On any other
    device it runs ``knn_torch`` there and returns a tensor on that device.
    """
    is_tensor = isinstance(proj_range, torch.Tensor)
    if device is None:
        device = proj_range.device if is_tensor else torch.device("cpu")
    device = torch.device(device)
    args = (proj_range, proj_argmax, unproj_range, rows, cols)
    params = dict(num_classes=num_classes, knn=knn, search=search, sigma=sigma, cutoff=cutoff, wrap=wrap)
    if device.type == "cpu":
        arrays = [a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a) for a in args]
        labels = knn_numba(*arrays, **params)
        return torch.from_numpy(labels) if is_tensor else labels
    tensors = [torch.as_tensor(a).to(device) for a in args]
    return knn_torch(*tensors, **params)
