"""Benchmark the numba range projection against the NumPy reference, one scan at a time on one core.

The input is a seeded synthetic HDL-64E-like scan: 64 beams at the sensor's elevations (+2 to -24.3 deg), each
ring swept in azimuth order as the sensor stores it, ranges from a ground plane, building walls and objects
(2-80 m), about 8 % dropped returns. Numba runs single-threaded (``numba.set_num_threads(1)``; the kernels are
not parallel anyway: data-loader workers run in parallel instead). Compile time is measured in a fresh process
with an empty numba cache and reported apart from the timings. The same run checks that both implementations
agree, on the synthetic scan and on the real scans in ``../shared/real_scans`` when they exist.

    python benchmarks/bench_projection.py [--n-points 120000] [--repeats 50] [--json benchmarks/results/projection.json]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numba
import numpy as np
from common import fresh_numba_timings, write_result

from rangecps.projection import Projection, project_rings, project_spherical
from rangecps.projection_reference import project_rings_reference, project_spherical_reference

REAL_SCANS = Path(__file__).resolve().parents[1].parent / "shared" / "real_scans"
# HDL-64E: an upper block of 32 lasers 1/3 deg apart, a lower block of 32 lasers 1/2 deg apart
ELEVATION_DEG = np.concatenate([np.linspace(2.0, -8.33, 32), np.linspace(-8.83, -24.33, 32)])


def synthetic_scan(n_points: int, seed: int = 0, sensor_height: float = 1.73) -> np.ndarray:
    """``(n_points, 4) float32`` x, y, z, intensity, ring by ring in azimuth order."""
    rng = np.random.default_rng(seed)
    per_ring = int(np.ceil(n_points / len(ELEVATION_DEG) / 0.92))
    sectors = rng.uniform(8.0, 60.0, 64)  # wall distance of 64 azimuth sectors
    rings = []
    for elevation in np.deg2rad(ELEVATION_DEG):
        azimuth = np.sort(rng.uniform(-np.pi, np.pi, per_ring))
        wall = sectors[((azimuth + np.pi) / (2 * np.pi) * 64).astype(int) % 64]
        ground = sensor_height / np.sin(-elevation) if elevation < -0.01 else np.inf
        r = np.minimum(wall / np.cos(elevation), ground)
        objects = rng.random(per_ring) < 0.15  # cars, poles, people in front of the background
        r = np.where(objects, rng.uniform(2.0, r), r) * (1 + rng.normal(0, 0.005, per_ring))
        keep = (rng.random(per_ring) > 0.08) & (r > 2.0) & (r < 80.0)
        e = elevation + rng.normal(0, 2e-4, per_ring)
        xyz = np.stack([r * np.cos(e) * np.cos(azimuth), r * np.cos(e) * np.sin(azimuth), r * np.sin(e)], -1)
        rings.append(np.concatenate([xyz, rng.uniform(0, 1, (per_ring, 1))], 1)[keep])
    points = np.concatenate(rings)
    if len(points) < n_points:
        raise ValueError(f"synthetic scan has {len(points)} points, fewer than the {n_points} asked for")
    keep = np.sort(rng.choice(len(points), n_points, replace=False))  # exact count, scan order kept
    return points[keep].astype(np.float32)


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    fn()  # warm caches and allocators
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def agreement(a: Projection, b: Projection) -> dict[str, float | bool]:
    """Fractions of equal per-point pixels and of equal pixel winners."""
    same_point = (a.rows == b.rows) & (a.cols == b.cols)
    return {
        "points": float(same_point.mean()) if same_point.size else 1.0,
        "pixels": float((a.index == b.index).mean()),
        "identical": all(
            np.array_equal(getattr(a, f), getattr(b, f)) for f in ("rows", "cols", "depth", "index")
        ),
    }


COLD_COMPILE = """
import time, numpy as np
t0 = time.perf_counter()
from rangecps.projection import project_spherical, project_rings
t1 = time.perf_counter()
project_spherical(np.ones((8, 4), np.float32))
t2 = time.perf_counter()
project_rings(np.ones((8, 4), np.float32), np.zeros(8, np.int32))
t3 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2)
"""


def cold_compile_seconds() -> dict[str, float]:
    """First calls in a fresh interpreter whose numba cache directory is empty: pure compile time."""
    import_s, spherical_s, rings_s = fresh_numba_timings(COLD_COMPILE)
    return {"import": import_s, "project_spherical": spherical_s, "project_rings": rings_s}


def real_scan_parity() -> dict[str, dict[str, float | bool]]:
    kitti, nuscenes = (
        REAL_SCANS / "kitti_object_000008_fov.bin",
        REAL_SCANS / "nuscenes_LIDAR_TOP_1532402927647951.pcd.bin",
    )
    if not (kitti.exists() and nuscenes.exists()):
        return {}
    k = np.fromfile(kitti, dtype=np.float32).reshape(-1, 4)
    raw = np.fromfile(nuscenes, dtype=np.float32).reshape(-1, 5)
    points, ring = np.ascontiguousarray(raw[:, :4]), raw[:, 4].astype(np.int32)
    sph = {"height": 32, "width": 1920, "fov_up": 10.0, "fov_down": -30.0}
    return {
        "kitti_spherical_64x2048": agreement(project_spherical(k), project_spherical_reference(k)),
        "nuscenes_rings_32x1920": agreement(
            project_rings(points, ring), project_rings_reference(points, ring)
        ),
        "nuscenes_spherical_32x1920": agreement(
            project_spherical(points, **sph), project_spherical_reference(points, **sph)
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-points", type=int, default=120_000)
    parser.add_argument(
        "--repeats", type=int, default=50, help="numba repetitions (NumPy runs a fifth as many)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-cold-compile", action="store_true", help="skip the fresh-process compile timing"
    )
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "projection.json")
    args = parser.parse_args()
    numba.set_num_threads(1)

    compile_s = None if args.no_cold_compile else cold_compile_seconds()
    t0 = time.perf_counter()
    project_spherical(np.ones((8, 4), np.float32))  # compile, or load numba's on-disk cache
    first_call_s = time.perf_counter() - t0

    points = synthetic_scan(args.n_points, args.seed)
    shuffled = points[np.random.default_rng(args.seed).permutation(len(points))]
    ring = np.repeat(np.arange(32, dtype=np.int32), -(-len(points) // 32))[: len(points)]  # any valid rings
    numpy_repeats = max(3, args.repeats // 5)
    runs = {
        "numpy reference": timed(lambda: project_spherical_reference(points), numpy_repeats),
        "numba": timed(lambda: project_spherical(points), args.repeats),
        "numba, shuffled points": timed(lambda: project_spherical(shuffled), args.repeats),
        "numba rings 32x1920": timed(lambda: project_rings(points, ring), args.repeats),
    }
    median = {name: statistics.median(t) for name, t in runs.items()}
    base = median["numpy reference"]

    parity = {"synthetic": agreement(project_spherical(points), project_spherical_reference(points))}
    parity.update(real_scan_parity())
    filled = float(project_spherical(points).mask.mean())

    print(f"range projection, {len(points)} points, 64x2048 ({100 * filled:.1f}% pixels filled), 1 thread")
    print(f"{'implementation':<26} {'median ms':>10} {'min ms':>8} {'scans/s':>9} {'vs numpy':>9}")
    for name, ms in median.items():
        print(f"{name:<26} {ms:10.3f} {min(runs[name]):8.3f} {1e3 / ms:9.0f} {base / ms:8.1f}x")
    if compile_s:
        print(f"numba compile (empty cache): spherical {compile_s['project_spherical']:.2f} s, "
              f"rings {compile_s['project_rings']:.2f} s; first call here {first_call_s:.3f} s")  # fmt: skip
    for name, p in parity.items():
        print(f"parity {name:<28} points {100 * p['points']:.4f}%  pixels {100 * p['pixels']:.4f}%  "
              f"identical {p['identical']}")  # fmt: skip

    result = {
        "benchmark": "projection",
        "points": len(points),
        "image": [64, 2048],
        "filled_fraction": filled,
        "median_ms": median,
        "runs_ms": runs,
        "speedup_vs_numpy": {name: base / ms for name, ms in median.items()},
        "numba_compile_s": compile_s,
        "numba_first_call_s": first_call_s,
        "numba_threads": numba.get_num_threads(),
        "parity": parity,
    }
    write_result(args.json, result)


if __name__ == "__main__":
    main()
