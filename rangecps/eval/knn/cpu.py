"""kNN post-processing on CPU: a numba kernel, parallel over points, that returns ``knn_reference``'s labels."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numba
import numpy as np

from rangecps.eval.knn.rules import FLOAT32_INF_BITS, INDEX_BITS, check_inputs, inverse_gaussian_weights


def pad_images(
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


@numba.njit(cache=True, nogil=True)
def _segments(n_chunks: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
    """``front, back`` (workers,) int64: segment ``s`` of the chunks is ``[front[s], back[s])``, sizes within one."""
    front = np.empty(workers, dtype=np.int64)
    back = np.empty(workers, dtype=np.int64)
    for s in range(workers):
        front[s] = s * n_chunks // workers
        back[s] = (s + 1) * n_chunks // workers
    return front, back


@numba.njit(cache=True, nogil=True)
def _claim(front: np.ndarray, back: np.ndarray, segment: int, own: bool) -> int:
    """Claim the next chunk of ``segment``: from its front for its owner, else from its back; -1 when none is left.

    ``front``/``back`` (workers,) int64 hold each segment's unclaimed range ``[front, back)``. Workers call this
    without atomics, so two may claim the same chunk; that only duplicates work. Every value written to
    ``front[s]`` (``back[s]``) means the chunks before (from) it are claimed, and claims are always finished,
    so no chunk is ever skipped.
    """
    if own:
        chunk = front[segment]
        if chunk >= back[segment]:
            return -1
        front[segment] = chunk + 1
        return chunk
    chunk = back[segment] - 1
    if chunk < front[segment]:
        return -1
    back[segment] = chunk
    return chunk


@functools.cache
def numba_kernel(knn: int, search: int) -> Callable[..., None]:
    """The numba kernel specialised for one ``(knn, search)``; it reads images padded by ``pad_images``.

    Constant trip counts let LLVM unroll the window and the k-slot insertion (measured about 1.6x faster than
    runtime bounds). numba's on-disk cache keys closures on their captured values, so each pair compiles once
    per machine. Branch mispredictions dominated earlier versions that rejected candidates early (a plain
    insertion with early rejection was 2-3x slower), so the hot loops are branch-free: invalid candidates are
    not packed, and the k best keys are kept by a min/max insertion network. Indices are unsigned because
    numba wraps negative signed indices, which cost two extra instructions per load (unsigned: 15% faster).

    Points are split into chunks, and the chunks into one segment per thread. Each thread labels its own
    segment from the front and then steals chunks from the back of the others (``_claim``). A static split
    waits for the slowest thread; on 2-vCPU VMs, a thread whose idle vCPU the hypervisor must first wake
    starts 4-6 ms late, which cost a static split 2.5 ms per scan (measured: 6.5 instead of 9 ms).
    """
    area = search * search
    center = area // 2
    no_candidate = np.int64(FLOAT32_INF_BITS) << INDEX_BITS  # every key >= this is "no candidate"
    u64 = np.uint64
    size = u64(search)
    chunk = 1024

    @numba.njit(parallel=True, cache=True, nogil=True, boundscheck=False)
    def kernel(
        padded_range: np.ndarray,
        padded_label: np.ndarray,
        unproj_range: np.ndarray,
        rows: np.ndarray,
        cols: np.ndarray,
        weights: np.ndarray,
        limit: np.float32,
        workers: int,
        out: np.ndarray,
    ) -> None:
        stride = u64(padded_range.shape[1])
        flat_range = padded_range.reshape(-1)
        flat_label = padded_label.reshape(-1)
        inf = np.float32(np.inf)
        n = rows.shape[0]
        n_chunks = (n + chunk - 1) // chunk
        front, back = _segments(n_chunks, workers)
        for worker in numba.prange(workers):
            # Per-worker scratch, reused for every point.
            dist = np.empty(area, dtype=np.float32)
            dist_bits = dist.view(np.int32)  # non-negative float32s order like their bit patterns
            keys = np.empty(area, dtype=np.int64)
            best = np.empty(knn, dtype=np.int64)
            labels = np.empty(knn, dtype=np.int64)
            hop = 0  # 0: the worker's own segment; then the following ones
            while hop < workers:
                ci = _claim(front, back, (worker + hop) % workers, hop == 0)
                if ci < 0:
                    hop += 1
                    continue
                for i in range(ci * chunk, min(n, (ci + 1) * chunk)):
                    if rows[i] < 0:
                        out[i] = 0
                        continue
                    rp = unproj_range[i]
                    corner = u64(rows[i]) * stride + u64(cols[i])  # window's top-left pixel, padded image
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
                    # Keys of the real candidates, packed to the front without branches; then the insertion
                    # network.
                    m = u64(0)
                    for j in range(area):
                        keys[m] = (np.int64(dist_bits[j]) << INDEX_BITS) | j
                        m += u64(dist_bits[j] != FLOAT32_INF_BITS)
                    for t in range(m):
                        key = keys[t]
                        for s in range(knn):
                            kept = best[s]
                            best[s] = min(kept, key)
                            key = max(kept, key)
                    for s in range(knn):
                        key = best[s]
                        j = u64(key & ((1 << INDEX_BITS) - 1))
                        labels[s] = flat_label[corner + (j // size) * stride + j % size] * (
                            key < no_candidate
                        )
                    # Winner = most votes, then lowest class: maximise (count << 16) | (0xFFFF - class) over
                    # the chosen labels, counted pairwise (k*k compares beat a votes array's load-store chains).
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
    """kNN post-processing on CPU (numba; the threads share the points by work stealing).

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
    check_inputs(proj_range, proj_argmax, unproj_range, rows, cols, num_classes, knn, search, sigma, cutoff)
    out = np.empty(len(unproj_range), dtype=np.int64)
    padded_range, padded_label = pad_images(proj_range, proj_argmax, search // 2, bool(wrap))
    weights = inverse_gaussian_weights(search, sigma)
    limit = np.float32(cutoff) if cutoff > 0 else np.float32(np.inf)
    kernel = numba_kernel(int(knn), int(search))
    # One worker per thread: numba's prange gives each thread one of `workers` iterations. The count is passed
    # in because numba cannot cache a kernel that calls numba.get_num_threads().
    workers = numba.get_num_threads()
    kernel(padded_range, padded_label, unproj_range, rows, cols, weights, limit, workers, out)
    return out
