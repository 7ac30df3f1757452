"""Benchmark the full training input pipeline: read, augment, project, normalise, collate, at 64x2048.

Scans/s of a DataLoader (batch 2, pixel keys only, as training loads them) over a synthetic SemanticKITTI-format
dataset with 0, 1 and 2 workers (and from cached range images with 0 and 2 workers), against
an in-run baseline: the same pipeline in one process with the NumPy reference projection instead of numba. Files
are read from the page cache after the first pass, as from a fast local disk. Each setting runs ``--repeats`` times
over ``--scans`` scans after an untimed warm-up pass (workers persist); medians are reported. Peak
resident memory is reported too, with its growth between the first and last repeat (the pipeline holds nothing
per scan beyond the index, so it should stay flat).

``--point-inputs`` adds the loader of point-based networks (FRNet): the same dataset with ``point_inputs=True``
(each sample also carries its augmented points and per-point pixels, and each batch the concatenated points and
their ``coors``), with 0 and 2 workers (``points_*``). The default settings are unchanged by it.

    python benchmarks/bench_loader.py [--scans 96] [--repeats 3] [--point-inputs] \\
        [--json benchmarks/results/loader.json]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from common import write_result
from torch.utils.data import DataLoader

import rangecps.data.sample as sample_module
from rangecps.config import AugmentConfig
from rangecps.data import DATASETS
from rangecps.data.augment import build_augment
from rangecps.data.cache import build_cache
from rangecps.data.dataset import RangeDataset
from rangecps.data.loader import RepeatedShardSampler
from rangecps.data.prep import prepare
from rangecps.data.sample import collate
from rangecps.labels import load_label_map
from rangecps.projection_reference import project_spherical_reference
from rangecps.sim.generate import generate_dataset


@contextlib.contextmanager
def numpy_projection() -> Iterator[None]:
    """Inside the block the loader projects with the NumPy reference, the baseline, instead of numba: it patches
    the name the sample builder calls (in this process only, so time the baseline with 0 workers)."""
    original = sample_module.project_spherical
    sample_module.project_spherical = project_spherical_reference
    try:
        yield
    finally:
        sample_module.project_spherical = original


def rate_entry(rates: list[float], mem: list[float]) -> dict:
    """One configuration's figures: median scans/s, the runs, peak memory and its growth over the runs."""
    return {"scans_per_s": statistics.median(rates), "runs": rates, "peak_rss_mib": mem[-1],
            "rss_growth_mib": mem[-1] - mem[0]}  # fmt: skip


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_loader(ds: RangeDataset, workers: int, scans: int, repeats: int) -> tuple[list[float], list[float]]:
    """Scans/s of each repeat, and the peak RSS (MiB) after each repeat.

    Workers persist across repeats and a first, untimed pass starts them and loads their numba kernels, so the
    timings are the steady state a long training run sees.
    """
    sampler = RepeatedShardSampler(len(ds), scans, seed=0)
    loader = DataLoader(
        ds,
        batch_size=2,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None,
    )
    for _ in loader:  # warm-up pass
        pass
    rates, memory = [], []
    for r in range(repeats):
        sampler.set_epoch(r + 1)
        start = time.perf_counter()
        n = sum(batch["input"].shape[0] for batch in loader)
        rates.append(n / (time.perf_counter() - start))
        memory.append(rss_mib())
    return rates, memory


def build_cache_dir(cls: type, root: Path, index, label_map, folder: Path) -> Path:
    build_cache(cls, root, index, label_map, folder, progress=False)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scans", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--point-inputs", action="store_true", help="also time point-input datasets (FRNet's batches)"
    )
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "loader.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = generate_dataset(
            "semantickitti", Path(tmp) / "kitti", sequences=2, scans_per_sequence=12, seed=0, progress=False
        )
        cls = DATASETS["synthetic_kitti"]
        index, stats, _ = prepare(cls, root, progress=False)
        ds = RangeDataset(
            root,
            index.split("train"),
            cls.file_format,
            cls.geometry,
            load_label_map(cls.label_map),
            stats,
            build_augment(AugmentConfig()),
            seed=0,
            with_points=False,
        )
        ds[0]  # compile / load the numba kernels outside the timings
        points = sum(ds[i]["num_points"] for i in range(len(ds))) / len(ds)
        results = {}
        with numpy_projection():
            rates, mem = time_loader(ds, 0, args.scans, args.repeats)
        results["baseline_numpy_0_workers"] = {"scans_per_s": statistics.median(rates), "runs": rates}
        for workers in (0, 1, 2):
            rates, mem = time_loader(ds, workers, args.scans, args.repeats)
            results[f"numba_{workers}_workers"] = rate_entry(rates, mem)
        if args.point_inputs:
            # Point-based networks (FRNet): the augmented points, their pixels and the concatenated batch keys.
            ds.point_inputs, ds.with_points = True, True
            for workers in (0, 2):
                rates, mem = time_loader(ds, workers, args.scans, args.repeats)
                results[f"points_{workers}_workers"] = rate_entry(rates, mem)
            ds.point_inputs, ds.with_points = False, False
        # The same pipeline from cached range images (rangecps-prep --cache; image-space rotate/flip/scale).
        ds.cache_dir = build_cache_dir(cls, root, index, ds.label_map, Path(tmp) / "cache")
        for workers in (0, 2):
            rates, mem = time_loader(ds, workers, args.scans, args.repeats)
            results[f"cache_{workers}_workers"] = {"scans_per_s": statistics.median(rates), "runs": rates}
    base = results["baseline_numpy_0_workers"]["scans_per_s"]
    print(f"full pipeline, 64x2048, {points:,.0f} points/scan on average, batch 2, median of {args.repeats}")
    print(f"{'setting':28s} {'scans/s':>9s} {'ms/scan':>9s} {'vs baseline':>12s}")
    for name, r in results.items():
        s = r["scans_per_s"]
        print(f"{name:28s} {s:9.1f} {1000 / s:9.2f} {s / base:11.2f}x")
    out = {
        "benchmark": "loader",
        "image": [64, 2048],
        "points_per_scan": points,
        "batch_size": 2,
        "repeats": args.repeats,
        "scans_per_run": args.scans,
        "point_inputs": args.point_inputs,
        "results": results,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
        },
    }
    write_result(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
