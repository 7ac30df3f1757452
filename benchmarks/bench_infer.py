"""Benchmark ``rangecps-infer``'s path end to end, per scan: PyTorch against ONNX Runtime.

One scan is what :meth:`rangecps.deploy.Segmenter.predict` does for ``rangecps-infer``, plus reading the file:
read the ``.bin`` (``read_kitti_points``), project and encode it (``ScanPipeline.sample``, then ``collate``), run
the network, and label every point (argmax, the kNN vote of ``rangecps.eval.knn``, labels back to NumPy). The
loop here mirrors ``predict`` step by step so that each part is timed on its own: read, sample, network (the
``forward`` alone, synchronised on a GPU) and kNN (the rest of ``segment_batch``: argmax, gather, kNN vote, labels
back to the host; the kNN vote is nearly all of it). The first ``--warmup`` scans run through ``predict`` itself
and are not timed; the timed loop checks that it labels those scans exactly as ``predict`` did.

The nets are FIDNets with seeded random weights (no checkpoint needed: the time does not depend on the weights),
in a :class:`Segmenter` built directly around ``net_forward`` (torch) or an ``OnnxRunner`` (onnxruntime, the
``Segmenter.from_onnx`` forward). Their BatchNorm statistics are measured on one validation scan first: with the
initial ones a random FIDNet's logits reach the thousands and label nearly every pixel alike, with measured ones
they have a trained net's scale and vary, so that the kNN votes over varied labels and the label agreement between
backends means something. Two sizes: ``small``, the CPU-sized model (FIDNet width 0.125 at 64x512, the
``configs/synthetic`` run) and ``published`` (FIDNet width 1.0 at 64x2048).

FRNet (a point model: it predicts every point itself, no kNN) runs beside them at two sizes: ``frnet-small``, the
CPU-sized model (width 0.25 at 64x512) and ``frnet-released`` (width 1.0 at 64x512, the release's SemanticKITTI
grid). Its Segmenter is the one ``Segmenter.from_checkpoint`` / ``from_onnx`` builds for an FRNet run: the
``point_net_forward`` (torch) or the exported point graph (onnxruntime, one scan per call, batch size and grid fixed
in the graph; :mod:`rangecps.deploy.onnx_points`), and ``segment_point_batch``. Its part ``knn`` holds what follows
the network (each point's argmax, the fallback class of points without a pixel, labels back to the host): no kNN
runs, and the result records ``"knn": null``. Its BatchNorm statistics are measured the same way, on the points
of one validation scan. The scans are the validation sequence
08 of the built-in synthetic dataset ``data/synthetic_kitti`` (made on first use, about 129,000 points a scan),
with the pipeline (geometry, encoding statistics, kNN settings) of ``configs/synthetic/sup_only_fidnet.yaml`` at
the size's width. Files are read from the page cache after the first pass.

Backends: ``torch`` and ``onnxruntime`` on the CPU; on a GPU also ``torch-cuda`` (AMP, channels_last, the CUDA kNN)
and ``onnxruntime-cuda`` (the CUDA execution provider, where the onnxruntime build has it; kNN on the GPU). torch
takes the precision ``Segmenter.from_checkpoint`` would (``--amp``, default ``auto``: bf16 autocast on GPUs and on
CPUs with native bf16, channels_last); ONNX Runtime runs the float32 export. Each configuration runs in a fresh
child process (this script re-invoked with ``--only``), so that its peak memory (the process's peak RSS, VmHWM; on
a GPU also the peak allocated by torch) is its own. The nets are calibrated and exported once per run and size, in
this process, into a temporary folder; the export time is reported. Threads: ``--threads`` (default 1) for torch,
numba and ONNX Runtime.

Reports per configuration the median ms per scan and of each part, scans/s, peak memory, the time against the
in-run baseline (torch at the same size on the same device; ``torch-cuda`` against CPU torch) as baseline / time
(above 1: faster), and the share of points whose label equals the baseline's on the first timed scan.

    python benchmarks/bench_infer.py [--sizes small published] [--backends torch onnxruntime ...] [--repeats 3]
        [--warmup 1] [--threads 1] [--amp auto|bf16|off] [--root data/synthetic_kitti]
        [--json benchmarks/results/infer.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import peak_rss_mib, rss_mib, write_result
from infer_models import (
    DEFAULT_ROOT,
    SIZES,
    Size,
    build_net,
    load_scans,
    prepare_models,
)

from rangecps.data.pipeline import ScanPipeline
from rangecps.data.sample import collate, non_finite
from rangecps.deploy.segmenter import Segmenter
from rangecps.device import precision
from rangecps.eval.predict import net_forward, segment_batch
from rangecps.eval.predict_points import per_scan_forward, point_net_forward, segment_point_batch
from rangecps.io import read_kitti_points

RESULT_TAG = "BENCH_INFER_RESULT "  # the child's result line on stdout
BACKENDS = ("torch", "onnxruntime", "torch-cuda", "onnxruntime-cuda")
PARTS = ("read", "sample", "network", "knn")


def unavailable(backend: str) -> str | None:
    """Why ``backend`` cannot run on this machine, or None when it can."""
    if backend.endswith("-cuda") and not torch.cuda.is_available():
        return "no CUDA device"
    if backend.startswith("onnxruntime"):
        try:
            import onnx  # noqa: F401  (export_onnx needs it, and onnxscript for the dynamo exporter)
            import onnxruntime as ort
            import onnxscript  # noqa: F401
        except ImportError as e:
            return f"not installed ({e.name}); pip install -e .[export]"
        if backend == "onnxruntime-cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            return f"this onnxruntime build has no CUDAExecutionProvider ({ort.get_available_providers()})"
    return None


def set_threads(threads: int) -> None:
    """torch's and numba's thread pools (ONNX Runtime gets its own through the session options)."""
    import numba

    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def make_segmenter(
    backend: str,
    size: Size,
    pipeline: ScanPipeline,
    knn: dict | None,
    weights: Path | None,
    onnx_path: Path | None,
    threads: int,
    amp: str,
) -> tuple[Segmenter, dict[str, Any]]:
    """A Segmenter around ``backend``'s forward, and what it runs with (precision or providers). A point
    model's is the one Segmenter.from_checkpoint / from_onnx builds for an FRNet run (no kNN)."""
    device = torch.device("cuda" if backend.endswith("-cuda") else "cpu")
    forward: Any
    if backend.startswith("torch"):
        # As Segmenter.from_checkpoint with train.channels_last: true (point models: never channels_last)
        prec = precision(amp, not size.points, device)
        net = build_net(size, weights).to(device)
        if prec.channels_last:
            net = net.to(memory_format=torch.channels_last)
        if size.points:
            forward = point_net_forward([net], prec.amp)
        else:
            forward = net_forward([net], prec.amp, prec.channels_last)
        info: dict[str, Any] = {"precision": prec.record()}
    else:
        from rangecps.deploy.onnx import OnnxRunner

        if onnx_path is None:
            raise ValueError(f"{backend}: needs an exported model")
        wanted = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
        runner = OnnxRunner(onnx_path, providers=[wanted], intra_op_threads=threads)
        if runner.providers[0] != wanted:
            raise RuntimeError(f"{backend}: the session runs on {runner.providers}, not {wanted}")

        if size.points:  # as Segmenter.from_onnx's for a point model: one scan per call

            def single(points: torch.Tensor, coors: torch.Tensor) -> torch.Tensor:
                return torch.from_numpy(np.asarray(runner(points.cpu().numpy(), coors.cpu().numpy()))).to(
                    device
                )

            forward = per_scan_forward(single)
        else:

            def forward(x: torch.Tensor) -> torch.Tensor:  # as Segmenter.from_onnx's, for logits
                return torch.from_numpy(np.asarray(runner(x.float().cpu().numpy()))).to(device)

        info = {"providers": runner.providers, "precision": {"amp": "off", "channels_last": False}}
    seg = Segmenter(
        forward=forward,
        pipeline=pipeline,
        device=device,
        knn=None if size.points else knn,
        scores_are_probs=False,
        trained_geometry=pipeline.geometry,
        net="a",
        source=f"random weights{' (calibrated)' if weights or onnx_path else ''}, {size.describe()}",
        point_model=size.points,
    )
    return seg, info


def one_scan(seg: Segmenter, path: Path) -> tuple[dict[str, float], np.ndarray, int]:
    """Label the scan at ``path`` as ``rangecps-infer`` does (read, then ``seg.predict``'s steps), timing each
    part. Returns the parts' seconds (and ``total``), the ``(N,)`` train ids and N."""
    cuda = seg.device.type == "cuda"
    network = 0.0

    def forward(*inputs: Any) -> torch.Tensor:  # an image, or a point model's points, coors, B, grid
        nonlocal network
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = seg.forward(*inputs)
        if cuda:
            torch.cuda.synchronize()
        network += time.perf_counter() - start
        return out

    t0 = time.perf_counter()
    points = read_kitti_points(path)
    t1 = time.perf_counter()
    batch = collate([seg.pipeline.sample(points, None, 0, path.stem, point_inputs=seg.point_model)])
    t2 = time.perf_counter()
    if seg.point_model:
        _, scans = segment_point_batch(
            forward, batch, seg.device, seg.num_classes, False, seg.scores_are_probs
        )
    else:
        _, _, scans = segment_batch(
            forward, batch, seg.device, seg.num_classes, seg.knn, False, seg.scores_are_probs
        )
    labels = scans[0].labels.cpu().numpy()
    int(non_finite(points).sum())  # predict counts them
    t3 = time.perf_counter()
    parts = {
        "read": t1 - t0,
        "sample": t2 - t1,
        "network": network,
        "knn": t3 - t2 - network,
        "total": t3 - t0,
    }
    return parts, labels, len(points)


def time_config(
    size_name: str,
    backend: str,
    root: Path = DEFAULT_ROOT,
    weights: Path | None = None,
    onnx_path: Path | None = None,
    repeats: int = 3,
    warmup: int = 1,
    threads: int = 1,
    amp: str = "auto",
    labels_out: Path | None = None,
) -> dict[str, Any]:
    """Median ms per scan (and per part), scans/s and peak memory of ``backend`` at ``size_name`` in this
    process: ``warmup`` scans through ``Segmenter.predict``, then ``repeats`` timed scans (cycling through the
    validation scans). On a CPU the peak is the process's peak RSS: call it once per fresh process for a figure
    of the configuration's own. ``weights`` (torch) and ``onnx_path`` (onnxruntime): the models of
    :func:`prepare_models` (torch without weights: the uncalibrated :func:`build_net`). ``labels_out``: save the
    first timed scan's labels there (``.npy``)."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    set_threads(threads)
    size = SIZES[size_name]
    pipeline, paths, knn = load_scans(size.width_px, root)
    seg, info = make_segmenter(backend, size, pipeline, knn, weights, onnx_path, threads, amp)
    cuda = seg.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = rss_mib()
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    predicted = [seg.predict(read_kitti_points(paths[i % len(paths)])) for i in range(warmup)]
    warmup_s = time.perf_counter() - start
    runs: dict[str, list[float]] = {k: [] for k in (*PARTS, "total")}
    points, mismatches, distinct = [], 0, None
    for i in range(repeats):
        parts, labels, n = one_scan(seg, paths[i % len(paths)])
        for k, v in parts.items():
            runs[k].append(1000 * v)
        points.append(n)
        if i < min(warmup, len(paths)):
            mismatches += int((labels != predicted[i]).sum())
        if i == 0:
            distinct = len(np.unique(labels))
            if labels_out is not None:
                np.save(labels_out, labels)
    ms = statistics.median(runs["total"])
    return {
        "size": size_name,
        "backend": backend,
        "model": size.describe(),
        "device": str(seg.device),
        "ms_per_scan": ms,
        "best_ms": min(runs["total"]),
        "scans_per_s": 1000.0 / ms,
        "parts_ms": {k: statistics.median(runs[k]) for k in PARTS},  # medians: need not sum to ms_per_scan
        "points_per_scan": statistics.mean(points),
        "scans_timed": repeats,
        "warmup_scans": warmup,
        "warmup_s": warmup_s,
        # None when no timed scan repeats a warmup scan; else whether the mirror gave predict's labels exactly
        "labels_equal_predict": (mismatches == 0) if min(warmup, repeats, len(paths)) else None,
        "classes_in_first_scan": distinct,  # how varied the labels compared are
        "model_name": size.model,
        "point_model": size.points,
        "knn": seg.knn,  # None for a point model: no kNN runs
        "peak_rss_mib": peak_rss_mib(),
        "rss_before_first_scan_mib": before,
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "runs_ms": runs,
        **info,
    }


def time_in_child(
    size_name: str, backend: str, args: argparse.Namespace, models: dict[str, Any], labels_out: Path | None
) -> dict[str, Any]:
    """:func:`time_config` in a fresh interpreter running this script with ``--only``; ``models`` from
    :func:`prepare_models`, ``args`` with ``root``, ``repeats``, ``warmup``, ``threads`` and ``amp``."""
    onnx_path = models["onnx"] if backend.startswith("onnxruntime") else None
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--only", f"{size_name}/{backend}",
        "--root", str(args.root), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
        "--threads", str(args.threads), "--amp", args.amp, "--weights", str(models["weights"]),
        *(["--onnx", str(onnx_path)] if onnx_path is not None else []),
        *(["--labels-out", str(labels_out)] if labels_out is not None else []),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    raise RuntimeError(
        f"no result from {size_name}/{backend} (exit {done.returncode}); its output:\n{done.stdout}{done.stderr}"
    )


def baseline_of(backend: str) -> str | None:
    """The configuration a backend is compared with at the same size."""
    return {"onnxruntime": "torch", "onnxruntime-cuda": "torch-cuda", "torch-cuda": "torch"}.get(backend)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=BACKENDS,
        default=list(BACKENDS),
        help="those this machine lacks are skipped with the reason (torch, the baseline, always runs)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed scans per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed scans through Segmenter.predict first")
    parser.add_argument("--threads", type=int, default=1, help="torch, numba and onnxruntime threads")
    parser.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto", help="torch's")
    parser.add_argument(
        "--root", type=Path, default=DEFAULT_ROOT, help="synthetic_kitti root (made if absent)"
    )
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "infer.json")
    parser.add_argument("--only", help=argparse.SUPPRESS)  # child: SIZE/BACKEND, JSON out
    parser.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--onnx", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--labels-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only is not None:
        size_name, backend = args.only.split("/")
        result = time_config(size_name, backend, args.root, args.weights, args.onnx, args.repeats, args.warmup,
                             args.threads, args.amp, args.labels_out)  # fmt: skip
        print(RESULT_TAG + json.dumps(result), flush=True)
        return 0
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1, --warmup >= 0")
    sizes = list(dict.fromkeys(args.sizes))
    backends = ["torch"] + [b for b in dict.fromkeys(args.backends) if b != "torch"]
    skipped = {b: why for b in backends if (why := unavailable(b)) is not None}
    backends = [b for b in backends if b not in skipped]
    load_scans(SIZES[sizes[0]].width_px, args.root)  # make / prepare the dataset here, outside the timings
    results: dict[str, dict[str, Any]] = {}
    exports: dict[str, dict[str, Any]] = {}
    calibration: dict[str, float] = {}
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench_infer-") as tmp:
        for size_name in sizes:
            onnx = any(b.startswith("onnxruntime") for b in backends)
            models = prepare_models(size_name, args.root, Path(tmp), onnx)
            calibration[size_name] = models["calibration_s"]
            if onnx:
                exports[size_name] = models["export"]
                print(f"exported {size_name}: {exports[size_name]['wall_seconds']:.1f} s", flush=True)
            for backend in backends:
                name = f"{size_name}/{backend}"
                labels = Path(tmp) / f"labels-{size_name}-{backend}.npy"
                try:
                    results[name] = time_in_child(size_name, backend, args, models, labels)
                except RuntimeError as e:
                    failed[name] = str(e)
                    print(f"{name}: failed\n{e}", file=sys.stderr)
                    continue
                r = results[name]
                base = baseline_of(backend)
                if base is not None and f"{size_name}/{base}" in results:
                    r["baseline"] = f"{size_name}/{base}"
                    r["vs_baseline"] = results[r["baseline"]]["ms_per_scan"] / r["ms_per_scan"]
                    theirs = np.load(Path(tmp) / f"labels-{size_name}-{base}.npy")
                    r["labels_agree_with_baseline"] = float((np.load(labels) == theirs).mean())
                print(f"{name}: {r['ms_per_scan']:.1f} ms per scan", flush=True)
    print(
        f"\nend to end per scan as rangecps-infer runs it (read, project + encode, network, kNN), validation "
        f"scans of {Path(args.root).name} (~{statistics.mean(r['points_per_scan'] for r in results.values()):,.0f}"
        f" points), median of {args.repeats} after {args.warmup} warm-up, {args.threads} thread(s), one process "
        "per configuration"
        if results
        else "\nno configuration ran"
    )
    header = (
        f"{'configuration':26s} {'ms/scan':>8s} {'read':>6s} {'sample':>7s} {'network':>8s} {'kNN':>6s} "
        f"{'scans/s':>8s} {'RSS MiB':>8s} {'GPU MiB':>8s} {'vs base':>8s} {'agree':>7s} {'classes':>7s}"
    )
    print(header)
    for name, r in results.items():
        p = r["parts_ms"]
        gpu = f"{r['peak_gpu_mib']:8.0f}" if r["peak_gpu_mib"] is not None else f"{'-':>8s}"
        ratio = f"{r['vs_baseline']:7.2f}x" if "vs_baseline" in r else f"{'-':>8s}"
        agree = f"{100 * r['labels_agree_with_baseline']:6.2f}%" if "vs_baseline" in r else f"{'-':>7s}"
        print(
            f"{name:26s} {r['ms_per_scan']:8.1f} {p['read']:6.1f} {p['sample']:7.1f} {p['network']:8.1f} "
            f"{p['knn']:6.1f} {r['scans_per_s']:8.2f} {r['peak_rss_mib']:8.0f} {gpu} {ratio} {agree} "
            f"{r['classes_in_first_scan']:7d}"
        )
    for name, r in results.items():
        if r["backend"].startswith("torch"):
            prec = r["precision"]
            print(f"{name}: autocast {prec['amp']}, channels_last {prec['channels_last']} ({prec['reason']})")
        if r["labels_equal_predict"] is False:
            print(
                f"warning: {name}: the timed loop's labels differ from Segmenter.predict's on the same scan"
            )
    if any(r.get("point_model") for r in results.values()):
        print(
            "FRNet rows: a point model, no kNN (knn: null); their kNN column is the rest of segment_point_batch "
            "(each point's argmax, the fallback class of points without a pixel, labels to the host); their ONNX "
            "graph runs one scan per call with the grid fixed"
        )
    for size_name, e in exports.items():
        print(f"ONNX export, {size_name} ({SIZES[size_name].describe()}): {e['wall_seconds']:.1f} s, "
              f"{e['file_bytes'] / 2**20:.1f} MiB, opset {e['opset']}")  # fmt: skip
    for b, why in skipped.items():
        print(f"skipped {b}: {why}")
    print(
        "parts are medians (they need not sum to the median total); kNN: the rest of segment_batch (argmax, "
        "gather, kNN vote, labels to the host); vs base: baseline ms / ms (above 1: faster than the baseline, "
        "torch at the same size on the same device; torch-cuda against CPU torch); agree: share of points with "
        "the baseline's label on the first timed scan (bf16 torch against float32 ONNX may differ); classes: how many "
        "classes that scan's labels hold"
    )
    load = max((max(r["load_average_1min"]) for r in results.values()), default=0.0)
    if load > (os.cpu_count() or 1) + 1:
        print(
            f"note: 1-minute load average reached {load:.1f} on {os.cpu_count()} CPUs: other processes were busy"
        )
    public = ("sizes", "backends", "repeats", "warmup", "threads", "amp", "root", "json")
    write_result(
        args.json,
        {
            "benchmark": "infer_end_to_end",
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k in public},
            "sizes": {s: vars(SIZES[s]) for s in sizes},
            "baseline": "torch at the same size (torch-cuda for onnxruntime-cuda)",
            "memory": "peak RSS (VmHWM) of the configuration's process; peak_gpu_mib: torch's peak allocated",
            "results": results,
            "onnx_export": exports,
            "batchnorm_calibration_s": calibration,
            "skipped": skipped,
            "failed": failed,
        },
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
