"""One performance suite: simulator, projection, kNN, loader, training, evaluation and inference, one process each.

For every stage: the median time per scan (or per step), scans/s, the stage process's peak memory (max RSS; on a
GPU also the peak allocated GPU memory) and the speed ratio to its in-run baseline where it has one: brute-force
raycasting, the NumPy projection, the published unfold kNN, the loader with NumPy projection, a ``sup_only``
step. Stages run one after another in child processes, so that one stage's memory and threads never colour
another's figures.

Sizes are the real ones where a CPU can afford them: HDL-64E scans of about 120,000 points and 64x2048 images for
the simulator, projection, kNN and loader. On a CPU the training step and evaluation are the CPU-sized run's
(FIDNet width 0.125 at 64x512, the ``configs/synthetic`` default); on a GPU both use the published FIDNet (width
1.0) at 64x2048 with AMP, and kNN on the GPU and plain inference are added. About 3 minutes on 2 CPU cores.

    python benchmarks/run_all.py [--out benchmarks] [--stages projection knn ...]
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import torch
from common import machine, peak_rss_mib, timed_ms

from rangecps.atomic import atomic_write
from rangecps.checkpoint import code_revision

HERE = Path(__file__).resolve().parent
Row = dict[str, Any]


def _bench(name: str) -> Any:
    """A sibling benchmark module, imported only by the stage that uses it (``benchmarks/`` is already on the
    path: ``common`` above comes from there)."""
    return importlib.import_module(name)


def timed(fn: Callable[[], object], repeats: int, cuda: bool = False) -> list[float]:
    """Milliseconds of ``repeats`` calls after one untimed call that warms caches, allocators and kernels."""
    return timed_ms(fn, repeats, 1, cuda)


def row(name: str, times_ms: list[float], scans: float = 1.0, baseline: str | None = None,
        baseline_ms: list[float] | None = None, **extra: Any) -> Row:  # fmt: skip
    """One table row from raw timings of one unit (a scan, or a step of ``scans`` scans)."""
    ms = statistics.median(times_ms)
    out = {"name": name, "median_ms": ms, "scans_per_s": 1000.0 * scans / ms, "runs": len(times_ms)}
    if baseline is not None and baseline_ms:
        base = statistics.median(baseline_ms)
        out |= {"baseline": baseline, "baseline_ms": base, "ratio": base / ms}
    return out | extra


def stage_projection(device: torch.device) -> list[Row]:
    from rangecps.projection import project_spherical
    from rangecps.projection_reference import project_spherical_reference

    points = _bench("bench_projection").synthetic_scan(120_000)
    numba.set_num_threads(1)  # per scan, in a loader worker: one core
    return [
        row("projection 64x2048 (numba, 1 thread)", timed(lambda: project_spherical(points), 30),
            baseline="NumPy projection", baseline_ms=timed(lambda: project_spherical_reference(points), 5))
    ]  # fmt: skip


def stage_knn(device: torch.device) -> list[Row]:
    from rangecps.eval.knn import knn_numba, knn_torch

    bench = _bench("bench_knn")
    scan = bench.synthetic_scan(0)
    tensors = {k: torch.from_numpy(v) for k, v in scan.items()}
    params = dict(num_classes=bench.NUM_CLASSES, knn=5, search=5, sigma=1.0, cutoff=1.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the unfold baseline as the published code runs it: one scan per worker
    unfold = timed(lambda: bench.knn_unfold(**tensors, **params), 5)
    torch.set_num_threads(threads)
    rows = [
        row(f"kNN k=S=5, 120k points (numba, {numba.get_num_threads()} threads)",
            timed(lambda: knn_numba(**scan, **params), 20), baseline="unfold kNN", baseline_ms=unfold)
    ]  # fmt: skip
    if device.type == "cuda":
        on_gpu = {k: v.to(device) for k, v in tensors.items()}
        rows.append(row("kNN k=S=5, 120k points (torch, GPU)",
                        timed(lambda: knn_torch(**on_gpu, **params), 20, cuda=True)))  # fmt: skip
    return rows


def stage_simulator(device: torch.device) -> list[Row]:
    numba.set_num_threads(1)
    r = _bench("bench_sim").bench_sensor("hdl64", seed=0, sequence=0, repeats=5, brute_stride=32)
    # The baseline is the same scan with its grid raycast swapped for brute force (every ray, every primitive).
    brute_scan = r["scan_ms"]["wall"] - r["cast_ms"]["wall"] + r["brute_cast_ms_full_scan"]["wall"]
    return [
        row(f"simulator, HDL-64E scan ({r['points_per_scan']:,.0f} points, 1 thread)", r["runs_ms"]["scan_wall"],
            baseline="brute-force raycasting", baseline_ms=[brute_scan])
    ]  # fmt: skip


def _small_dataset(tmp: Path) -> tuple[Any, ...]:
    from rangecps.data import DATASETS
    from rangecps.data.prep import prepare
    from rangecps.labels import load_label_map
    from rangecps.sim.generate import generate_dataset

    root = generate_dataset("semantickitti", tmp / "kitti", sequences=2, scans_per_sequence=8, progress=False)
    cls = DATASETS["synthetic_kitti"]
    index, stats, _ = prepare(cls, root, progress=False)
    return root, cls, index, stats, load_label_map(cls.label_map)


def stage_loader(device: torch.device) -> list[Row]:
    from rangecps.config import AugmentConfig
    from rangecps.data.augment import build_augment
    from rangecps.data.dataset import RangeDataset

    bench = _bench("bench_loader")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root, cls, index, stats, label_map = _small_dataset(Path(tmp))
        ds = RangeDataset(root, index.split("train"), cls.file_format, cls.geometry, label_map, stats,
                          build_augment(AugmentConfig()), seed=0, with_points=False)  # fmt: skip
        ds[0]
        scans, repeats = 64, 3
        with bench.numpy_projection():
            base, _ = bench.time_loader(ds, 0, scans, repeats)
        base_ms = [1000.0 / r for r in base]
        rows = []
        for workers in (0, 2):
            rates, _ = bench.time_loader(ds, workers, scans, repeats)
            label = "1 process" if workers == 0 else f"{workers} workers"
            rows.append(row(f"loader 64x2048, full pipeline ({label})", [1000.0 / r for r in rates],
                            baseline="NumPy projection, 1 process", baseline_ms=base_ms))  # fmt: skip
    return rows


def stage_train(device: torch.device) -> list[Row]:
    bench = _bench("bench_train")
    gpu = device.type == "cuda"
    size = bench.step_args(model_width=1.0, height=64, width_px=2048, batch=1, warmup=2, repeats=10) if gpu else (
        bench.step_args(model_width=0.125, height=64, width_px=512, batch=1, warmup=1, repeats=5))  # fmt: skip
    sup, cps = (bench.time_steps(m, size, device) for m in ("sup_only", "cps"))
    what = f"FIDNet width {size.model_width}, {size.height}x{size.width_px}, 1+1 scans" + (
        ", AMP" if gpu else ""
    )
    return [
        row(f"CPS training step ({what})", [1000 * t for t in cps["runs_s"]], scans=2 * size.batch,
            baseline="sup_only step", baseline_ms=[1000 * t for t in sup["runs_s"]],
            peak_gpu_mib=cps["peak_memory_mib"] if gpu else None)
    ]  # fmt: skip


def stage_eval(device: torch.device) -> list[Row]:
    """Per scan as ``rangecps-eval`` runs it: read, project, infer, kNN to every point, confusion matrices."""
    from rangecps.data.build import resolve_geometry
    from rangecps.data.dataset import RangeDataset
    from rangecps.data.sample import CHANNELS, collate
    from rangecps.device import amp_dtype
    from rangecps.eval.metrics import ConfusionMatrix
    from rangecps.eval.predict import point_labels, predict_pixels
    from rangecps.models import build_model

    gpu = device.type == "cuda"
    width, image_width = (1.0, 2048) if gpu else (0.125, 512)
    amp = amp_dtype("auto", device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root, cls, index, stats, label_map = _small_dataset(Path(tmp))
        geometry = resolve_geometry(cls, None, image_width)
        ds = RangeDataset(root, index.split("val"), cls.file_format, geometry, label_map, stats, None)
        k = label_map.num_classes
        net = build_model("fidnet", len(CHANNELS), k, width).to(device).eval()
        cms = [ConfusionMatrix(k) for _ in range(3)]
        knn = {"knn": 5, "search": 5, "sigma": 1.0, "cutoff": 1.0}

        def one(i: int) -> None:
            batch = {key: v.to(device) if torch.is_tensor(v) else v for key, v in collate([ds[i]]).items()}
            pred = predict_pixels([net], batch["input"], amp)
            n = int(batch["num_points"][0])
            rows_, cols, depth = batch["rows"][0, :n], batch["cols"][0, :n], batch["depth"][0, :n]
            plain, voted = point_labels(pred[0], batch["mask"][0], rows_, cols, depth, k, knn)
            gt = batch["point_label"][0, :n]
            cms[0].update(batch["label"][batch["mask"]], pred[batch["mask"]])
            cms[1].update(gt, plain)
            cms[2].update(gt, voted)

        one(0)
        times = []
        for i in range(len(ds)):
            times += timed(lambda i=i: one(i), 1, cuda=gpu)
        rows.append(row(f"evaluation per scan (FIDNet width {width}, 64x{image_width}, kNN{', AMP' if gpu else ''})",
                        times))  # fmt: skip
        if gpu:
            x = collate([ds[0]])["input"].to(device).contiguous(memory_format=torch.channels_last)
            net = net.to(memory_format=torch.channels_last)
            rows.append(row("inference (FIDNet width 1.0, 64x2048, AMP, channels_last)",
                            timed(lambda: predict_pixels([net], x, amp), 20, cuda=True),
                            peak_gpu_mib=torch.cuda.max_memory_allocated(device) / 2**20))  # fmt: skip
    return rows


def stage_infer(device: torch.device) -> list[Row]:
    """Per scan as ``rangecps-infer`` runs it: read the .bin, project + encode, FIDNet, kNN to every point; torch
    against onnxruntime on the validation scans of ``data/synthetic_kitti`` (``bench_infer``: random weights, one
    child process per row, so each row's peak RSS is its own). On a GPU also the published FIDNet there."""
    bench, models_of = _bench("bench_infer"), _bench("infer_models")
    args = Namespace(root=models_of.DEFAULT_ROOT, repeats=20, warmup=2, threads=1, amp="auto")
    configs = [("small", "torch", "onnxruntime")]
    if device.type == "cuda":
        configs.append(("published", "torch-cuda", "onnxruntime-cuda"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size_name, torch_backend, ort_backend in configs:
            size = models_of.SIZES[size_name]
            gpu = torch_backend != "torch"
            what = (f"inference end to end per scan (read, project, FIDNet width {size.model_width} "
                    f"{size.height}x{size.width_px}, kNN{', GPU' if gpu else ', 1 thread'})")  # fmt: skip
            skip = bench.unavailable(ort_backend)
            # Makes the dataset on first use; calibrates the net and exports it (skip: not), outside the timings.
            models = models_of.prepare_models(size_name, args.root, Path(tmp), onnx=skip is None)
            base = bench.time_in_child(size_name, torch_backend, args, models, None)
            note = f"; {ort_backend} row skipped: {skip}" if skip is not None else ""
            rows.append(row(f"{what}, torch{' AMP' if gpu else ''}{note}", base["runs_ms"]["total"],
                            peak_rss_mib=base["peak_rss_mib"], peak_gpu_mib=base["peak_gpu_mib"],
                            parts_ms=base["parts_ms"]))  # fmt: skip
            if skip is None:
                r = bench.time_in_child(size_name, ort_backend, args, models, None)
                rows.append(row(f"{what}, onnxruntime{' CUDA provider' if gpu else ''}", r["runs_ms"]["total"],
                                baseline="torch AMP" if gpu else "torch",
                                baseline_ms=base["runs_ms"]["total"], peak_rss_mib=r["peak_rss_mib"],
                                parts_ms=r["parts_ms"]))  # fmt: skip
    return rows


STAGES: dict[str, Callable[[torch.device], list[Row]]] = {
    "simulator": stage_simulator,
    "projection": stage_projection,
    "knn": stage_knn,
    "loader": stage_loader,
    "train": stage_train,
    "eval": stage_eval,
    "infer": stage_infer,
}


def run_stage(name: str) -> None:
    """Child process: run one stage and print its rows as the last line of output, as JSON."""
    from rangecps.device import select_device

    device = select_device()
    rows = STAGES[name](device)
    peak = peak_rss_mib()
    # A row that ran in a process of its own brings that process's peak RSS.
    print(json.dumps([{"stage": name, "device": str(device), "peak_rss_mib": peak} | r for r in rows]))


def table(rows: list[Row]) -> str:
    lines = [
        "| stage | median ms | scans/s | peak RSS MiB | baseline | ratio |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        base = f"{r['baseline']} ({r['baseline_ms']:.1f} ms)" if "baseline" in r else "–"
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "–"
        lines.append(
            f"| {r['name']} | {r['median_ms']:.2f} | {r['scans_per_s']:.2f} | {r['peak_rss_mib']:.0f} | {base} "
            f"| {ratio} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder for PERFORMANCE.json / PERFORMANCE.md")
    parser.add_argument("--stages", nargs="+", choices=list(STAGES), default=list(STAGES))
    parser.add_argument("--stage", choices=list(STAGES), help=argparse.SUPPRESS)  # a child's one stage
    args = parser.parse_args()
    if args.stage:
        run_stage(args.stage)
        return 0
    start, rows, seconds = time.time(), [], {}
    for name in args.stages:
        t0 = time.time()
        done = subprocess.run([sys.executable, __file__, "--stage", name], capture_output=True, text=True)
        if done.returncode != 0:
            sys.stderr.write(done.stdout + done.stderr)
            raise SystemExit(f"run_all: stage '{name}' failed (exit {done.returncode}); its output is above")
        seconds[name] = round(time.time() - t0, 1)
        rows += json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{name}: {seconds[name]:.0f} s", flush=True)
    result = {
        "benchmark": "run_all",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "revision": code_revision(),
        "total_seconds": round(time.time() - start, 1),
        "stage_seconds": seconds,
        "rows": rows,
        "machine": machine(),
    }
    m = result["machine"]
    text = (
        f"# Performance\n\nGenerated by `python benchmarks/run_all.py` on {result['date']} at revision "
        f"`{result['revision']}` in {result['total_seconds'] / 60:.1f} minutes. Machine: {m['processor']}, "
        f"{m['cpu_count']} cores, {m['memory_gib']} GiB, {m['cuda'] or 'no GPU'}; torch {m['versions']['torch']}."
        f"\nMedian over repeated runs; ratio = baseline time / time (above 1: faster than the baseline).\n\n"
        f"{table(rows)}\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out / "PERFORMANCE.json", "w") as f:
        json.dump(result, f, indent=1)
    with atomic_write(args.out / "PERFORMANCE.md", "w") as f:
        f.write(text)
    print(text)
    print(f"wrote {args.out / 'PERFORMANCE.json'} and {args.out / 'PERFORMANCE.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
