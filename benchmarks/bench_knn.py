"""Benchmark kNN post-processing: knn_numba and knn_torch against the published unfold approach.

The baseline follows RangeNet++'s published method: ``F.unfold`` the range and label images with zero padding,
gather each point's column, mark empty neighbours infinite, ``topk``, then vote with ``scatter_add``. It runs
in torch on CPU with one thread, as a scan is post-processed in a data-loader worker. The input is one seeded
synthetic 64 x 2048 scan of 120,000 points in scan order: 95,000 hold a pixel each (72% of the image filled)
and 25,000 lie behind them, sharing their pixels. The implementations run round-robin, so that load from other
processes falls on all of them alike.

    python benchmarks/bench_knn.py [--repeats 15] [--json benchmarks/results/knn.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numba
import numpy as np
import torch
import torch.nn.functional as F

from rangecps.atomic import atomic_write
from rangecps.eval.knn import inverse_gaussian_weights, knn_numba, knn_torch
from rangecps.eval.knn.cpu import numba_kernel, pad_images

NUM_CLASSES = 20


def synthetic_scan(
    seed: int = 0, h: int = 64, w: int = 2048, num_points: int = 120_000, visible: int = 95_000
) -> dict[str, np.ndarray]:
    """A seeded scan with a road/building/object structure, so neighbour ranges look like a real sensor's.

    Returns ``proj_range (H, W) float32`` (-1 empty), ``proj_argmax (H, W) int64``, ``unproj_range (N,)
    float32``, ``rows``/``cols (N,) int32``. ``visible`` points hold a pixel each; the rest lie behind them.
    """
    rng = np.random.default_rng(seed)
    elevation = np.deg2rad(np.linspace(3.0, -25.0, h))
    ground = np.where(elevation < -0.01, 1.73 / np.tan(-np.minimum(elevation, -0.01)), np.inf)
    walls = rng.uniform(12.0, 60.0, size=w // 64).repeat(64)  # building facades, 64 columns each
    rng_img = np.minimum(ground[:, None], walls[None, :])
    label = np.where(ground[:, None] < walls[None, :], 9, 13)  # road in front of building
    for _ in range(400):  # cars, poles, people, vegetation: boxes in front of the background
        r0, c0 = rng.integers(0, h - 4), rng.integers(0, w - 4)
        rh, cw = rng.integers(2, 20), rng.integers(2, 60)
        dist = rng.uniform(3.0, 40.0)
        box = np.s_[r0 : r0 + rh, c0 : c0 + cw]
        closer = rng_img[box] > dist
        rng_img[box] = np.where(closer, dist, rng_img[box])
        label[box] = np.where(closer, rng.choice([1, 6, 15, 18]), label[box])
    rng_img = rng_img * (1.0 + rng.normal(0.0, 0.01, size=rng_img.shape))
    noisy = rng.random(label.shape) < 0.05  # a network's scattered mistakes
    label = np.where(noisy, rng.integers(0, NUM_CLASSES, size=label.shape), label)

    finite = np.flatnonzero(np.isfinite(rng_img) & (rng_img < 80.0))
    held = np.sort(rng.choice(finite, size=visible, replace=False))
    proj_range = np.full(h * w, -1.0, dtype=np.float32)
    proj_range[held] = rng_img.reshape(-1)[held]
    proj_argmax = np.where(proj_range >= 0, label.reshape(-1), 0).astype(np.int64)

    behind = rng.choice(held, size=num_points - visible)
    pixel = np.concatenate([held, behind])
    point_range = proj_range[pixel].copy()
    point_range[visible:] += rng.uniform(0.2, 15.0, size=num_points - visible).astype(np.float32)
    order = np.argsort(pixel, kind="stable")  # scan order: ring by ring, azimuth within a ring
    pixel = pixel[order]
    return {
        "proj_range": proj_range.reshape(h, w),
        "proj_argmax": proj_argmax.reshape(h, w),
        "unproj_range": point_range[order].astype(np.float32),
        "rows": (pixel // w).astype(np.int32),
        "cols": (pixel % w).astype(np.int32),
    }


def knn_unfold(
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
) -> torch.Tensor:
    """The published unfold method (zero padding, no wrap, class 1 when nobody votes), as a baseline."""
    w = proj_range.shape[1]
    pad = search // 2
    area = search * search
    pixel = rows.long() * w + cols.long()
    ranges = F.unfold(proj_range[None, None], kernel_size=search, padding=pad)[0][:, pixel]  # (S*S, N)
    ranges[ranges < 0] = math.inf
    ranges[area // 2] = unproj_range
    weights = torch.from_numpy(inverse_gaussian_weights(search, sigma))[:, None]
    dist = (ranges - unproj_range[None]).abs() * weights
    near_dist, near = dist.topk(knn, dim=0, largest=False, sorted=False)
    labels = F.unfold(proj_argmax[None, None].float(), kernel_size=search, padding=pad)[0][:, pixel].long()
    near_labels = labels.gather(0, near)
    if cutoff > 0:
        near_labels[near_dist > cutoff] = num_classes  # an extra bin that cannot win
    votes = torch.zeros(num_classes + 1, len(unproj_range))
    votes.scatter_add_(0, near_labels, torch.ones_like(near_dist))
    return votes[1:-1].argmax(dim=0) + 1


def time_round_robin(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict[str, object]]:
    """Run every function once per round, ``repeats`` rounds, so that load from other processes sharing the
    cores falls on all of them alike. Per function: median wall ms, all wall ms, median process CPU ms (CPU
    time excludes time spent descheduled; for a multi-threaded run it sums the threads)."""
    for fn in fns.values():
        fn()  # warm caches and allocators
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append((time.perf_counter() - t0) * 1e3)
            cpu[name].append((time.process_time() - c0) * 1e3)
    return {
        name: {
            "median_ms": statistics.median(wall[name]),
            "runs_ms": wall[name],
            "cpu_ms": statistics.median(cpu[name]),
        }
        for name in fns
    }


def _with_numba_threads(n: int, fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        before = numba.get_num_threads()
        numba.set_num_threads(n)
        try:
            return fn()
        finally:
            numba.set_num_threads(before)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="rounds over all implementations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "knn.json")
    args = parser.parse_args()

    scan = synthetic_scan(args.seed)
    tensors = {k: torch.from_numpy(v) for k, v in scan.items()}
    params = dict(num_classes=NUM_CLASSES, knn=5, search=5, sigma=1.0, cutoff=1.0)

    # Compile time: a cache-less copy of the kernel compiles from scratch; the cached kernel's first call
    # (compile, or load from numba's on-disk cache) is reported beside it.
    tiny = synthetic_scan(1, h=8, w=64, num_points=300, visible=250)
    uncached = numba.njit(parallel=True, nogil=True, boundscheck=False)(numba_kernel(5, 5).py_func)
    padded = pad_images(tiny["proj_range"], tiny["proj_argmax"], 2, True)
    weights = inverse_gaussian_weights(5, 1.0)
    t0 = time.perf_counter()
    uncached(
        *padded, tiny["unproj_range"], tiny["rows"], tiny["cols"], weights, np.float32(1.0),
        numba.get_num_threads(), np.empty(300, dtype=np.int64),
    )  # fmt: skip
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    knn_numba(**tiny, **params)
    first_call_s = time.perf_counter() - t0

    # Both torch versions run with one thread: the unfold baseline as published use runs it (one scan per
    # data-loader worker), and knn_torch is meant for GPUs -- its CPU figure only shows the vectorised cost.
    threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    load_before = os.getloadavg()[0]
    torch.set_num_threads(1)
    timings = time_round_robin(
        {
            "unfold": lambda: knn_unfold(**tensors, **params),
            "knn_torch_cpu": lambda: knn_torch(**tensors, **params),
            "knn_numba_1thread": _with_numba_threads(1, lambda: knn_numba(**scan, **params)),
            "knn_numba": lambda: knn_numba(**scan, **params),
        },
        args.repeats,
    )
    torch.set_num_threads(threads)

    labels_numba = knn_numba(**scan, **params)
    labels_torch = knn_torch(**tensors, **params).numpy()
    labels_unfold = knn_unfold(**tensors, **params).numpy()
    if not np.array_equal(labels_numba, labels_torch):
        raise SystemExit("knn_numba and knn_torch disagree: a bug, not a benchmark result")
    differ = float(np.mean(labels_numba != labels_unfold))

    labels = {
        "unfold": "unfold (torch, 1 thread)",
        "knn_torch_cpu": "knn_torch (cpu, 1 thread)",
        "knn_numba_1thread": "knn_numba (1 thread)",
        "knn_numba": f"knn_numba ({numba_threads} threads)",
    }
    base = timings["unfold"]["median_ms"]
    print(f"kNN post-processing, {len(scan['rows'])} points, 64x2048, k=5 search=5, {args.repeats} rounds")
    print(f"{'implementation':<28} {'median ms':>10} {'min ms':>8} {'cpu ms':>8} {'speed-up':>9}")
    for name, t in timings.items():
        ms, runs, cpu = t["median_ms"], t["runs_ms"], t["cpu_ms"]
        print(f"{labels[name]:<28} {ms:10.2f} {min(runs):8.2f} {cpu:8.2f} {base / ms:8.1f}x")
    print(f"load average (1 min) before timing: {load_before:.2f} on {os.cpu_count()} CPUs")
    print(f"numba compile {compile_s:.2f} s (no cache); first cached-kernel call {first_call_s:.3f} s")
    print(f"labels differing from unfold (borders, empty-vote fallback, ties): {100 * differ:.3f}%")

    result = {
        "benchmark": "knn",
        "points": len(scan["rows"]),
        "image": [64, 2048],
        "params": params,
        "median_ms": {name: t["median_ms"] for name, t in timings.items()},
        "median_cpu_ms": {name: t["cpu_ms"] for name, t in timings.items()},
        "runs_ms": {name: t["runs_ms"] for name, t in timings.items()},
        "speedup_vs_unfold": {name: base / t["median_ms"] for name, t in timings.items()},
        "numba_compile_s": compile_s,
        "numba_first_call_s": first_call_s,
        "numba_threads": numba_threads,
        "torch_threads": 1,
        "load_average_before": load_before,
        "fraction_labels_differing_from_unfold": differ,
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    with atomic_write(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
