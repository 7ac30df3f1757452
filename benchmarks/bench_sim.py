"""Benchmark the LiDAR simulator: scans per second on one core, grid raycaster against brute force.

For each sensor (HDL-64E, HDL-32E) one simulated street is built (scene build time reported apart), then whole
scans are rendered (rays, grid raycast, materials, return model, labels) with numba on one thread. The baseline
is the same raycast without the acceleration structure: every ray against every primitive. It runs on every
``--brute-stride``-th ray of a scan (the hits must equal the grid's), and its per-ray time is scaled to a full
scan. Compile time is measured in a fresh process with an empty numba cache. Wall and CPU times are both
reported: on a shared machine the CPU time is the steadier of the two. The kernels are single-threaded; numba
is still pinned to one thread so that no library runs a parallel region behind the timings.

    python benchmarks/bench_sim.py [--repeats 7] [--brute-stride 16] [--json benchmarks/results/sim.json]
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

from rangecps.sim import SENSORS, sequence_scene
from rangecps.sim.raycast import cast, cast_brute_force
from rangecps.sim.sensors import sensor_rays
from rangecps.sim.simulate import render_scan

COLD_COMPILE = """
import time
t0 = time.perf_counter()
from rangecps.sim import simulate_sequence
t1 = time.perf_counter()
next(simulate_sequence("hdl32", 1, 0))
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def cold_compile_seconds() -> dict[str, float]:
    """Import and first scan in a fresh interpreter with an empty numba cache (compiles every kernel)."""
    import_s, first_scan_s = fresh_numba_timings(COLD_COMPILE, {"NUMBA_NUM_THREADS": "1"})
    return {"import": import_s, "first_scan_including_compile": first_scan_s}


def timed(fn: Callable[[int], object], repeats: int) -> tuple[list[float], list[float]]:
    """Wall and CPU milliseconds of ``fn(k)`` for ``k = 0 .. repeats - 1`` after one warm-up call."""
    fn(0)
    wall, cpu = [], []
    for k in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn(k)
        wall.append((time.perf_counter() - w0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return wall, cpu


def bench_sensor(sensor: str, seed: int, sequence: int, repeats: int, brute_stride: int) -> dict:
    model = SENSORS[sensor]
    scans = repeats + 1
    builds = []
    for _ in range(3):
        t0 = time.perf_counter()
        scene = sequence_scene(sensor, scans, seed, sequence)
        builds.append(time.perf_counter() - t0)
    rng = np.random.default_rng(seed)
    points = []

    def scan(k: int) -> None:
        points.append(render_scan(scene, model, k * model.scan_interval, rng).points.shape[0])

    scan_wall, scan_cpu = timed(scan, repeats)

    dirs, _ = sensor_rays(model)
    pose = scene.ego.pose(0.0)
    world = dirs @ pose[:3, :3].T
    table = scene.cast_table(0.0)
    tmax = model.max_range + 1.0
    cast_wall, cast_cpu = timed(lambda k: cast(table, pose[:3, 3], world, tmax, 99), repeats)

    sub = np.arange(0, len(world), brute_stride)
    brute = lambda k: cast_brute_force(table, pose[:3, 3], world[sub], tmax, 99, ray_ids=sub)  # noqa: E731
    brute_wall, brute_cpu = timed(brute, max(2, repeats // 3))
    t, prim, _ = cast(table, pose[:3, 3], world, tmax, 99)
    tb, pb, _ = cast_brute_force(table, pose[:3, 3], world[sub], tmax, 99, ray_ids=sub)
    scale = len(world) / len(sub)
    return {
        "rays": len(world),
        "primitives": scene.num_prims,
        "moving_primitives": scene.num_prims - scene.num_static,
        "grid_cells": scene.grid.nx * scene.grid.ny,
        "points_per_scan": float(np.mean(points)),
        "scene_build_s": statistics.median(builds),
        "scan_ms": {"wall": statistics.median(scan_wall), "cpu": statistics.median(scan_cpu)},
        "cast_ms": {"wall": statistics.median(cast_wall), "cpu": statistics.median(cast_cpu)},
        "brute_cast_ms_full_scan": {
            "wall": statistics.median(brute_wall) * scale,
            "cpu": statistics.median(brute_cpu) * scale,
        },
        "brute_rays_timed": len(sub),
        "brute_matches_grid": bool(np.array_equal(pb, prim[sub]) and np.allclose(tb, t[sub], atol=1e-9)),
        "runs_ms": {
            "scan_wall": scan_wall,
            "scan_cpu": scan_cpu,
            "cast_wall": cast_wall,
            "cast_cpu": cast_cpu,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="scans timed per sensor")
    parser.add_argument("--brute-stride", type=int, default=16, help="brute force casts every n-th ray")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sequence", type=int, default=1)
    parser.add_argument(
        "--no-cold-compile", action="store_true", help="skip the fresh-process compile timing"
    )
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "sim.json")
    args = parser.parse_args()
    numba.set_num_threads(1)

    compile_s = None if args.no_cold_compile else cold_compile_seconds()
    t0 = time.perf_counter()
    bench_sensor("hdl32", 0, 0, 1, 64)  # compile, or load numba's on-disk cache, before timing anything
    warm_s = time.perf_counter() - t0
    results = {s: bench_sensor(s, args.seed, args.sequence, args.repeats, args.brute_stride) for s in SENSORS}

    print(f"LiDAR simulator, 1 thread, median of {args.repeats} scans (wall / CPU ms)")
    header = (
        f"{'sensor':<7} {'rays':>7} {'points':>7} {'prims':>6} {'build s':>8} {'scan ms':>15} {'scans/s':>8}"
    )
    print(header + f" {'cast ms':>15} {'brute ms':>17} {'speedup':>8} {'same':>5}")
    for name, r in results.items():
        scan, cst, brute = r["scan_ms"], r["cast_ms"], r["brute_cast_ms_full_scan"]
        print(
            f"{name:<7} {r['rays']:>7} {r['points_per_scan']:>7.0f} {r['primitives']:>6} "
            f"{r['scene_build_s']:>8.2f} {scan['wall']:>7.1f} /{scan['cpu']:>6.1f} {1e3 / scan['wall']:>8.1f} "
            f"{cst['wall']:>7.1f} /{cst['cpu']:>6.1f} {brute['wall']:>8.0f} /{brute['cpu']:>7.0f} "
            f"{brute['wall'] / cst['wall']:>7.0f}x {r['brute_matches_grid']!s:>5}"
        )
    if compile_s:
        print(
            f"numba compile (empty cache): first scan {compile_s['first_scan_including_compile']:.1f} s, "
            f"import {compile_s['import']:.1f} s; warm-up here {warm_s:.2f} s"
        )

    result = {
        "benchmark": "sim",
        "sensors": results,
        "scans_per_s_wall": {n: 1e3 / r["scan_ms"]["wall"] for n, r in results.items()},
        "scans_per_s_cpu": {n: 1e3 / r["scan_ms"]["cpu"] for n, r in results.items()},
        "speedup_vs_brute_force": {
            n: r["brute_cast_ms_full_scan"]["wall"] / r["cast_ms"]["wall"] for n, r in results.items()
        },
        "numba_compile_s": compile_s,
        "numba_warmup_s": warm_s,
        "numba_threads": numba.get_num_threads(),
    }
    write_result(args.json, result)


if __name__ == "__main__":
    main()
