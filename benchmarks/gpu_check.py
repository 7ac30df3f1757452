"""Run every CUDA path of the toolkit on a machine with a GPU, in one command of under 8 minutes, into one JSON.

Parts, each in a child process of its own with its own time limit (and all within ``--budget`` seconds), each
recorded as ok / failed / skipped with the reason:

- ``tests``: the tests that skip without a GPU: ``pytest -k cuda`` over the test files that mention CUDA.
- ``knn``: the CUDA kNN (``knn_postprocess`` on the GPU, i.e. ``knn_torch``) gives exactly ``knn_numba``'s labels on
  ``bench_knn``'s seeded 64x2048 scans of 120,000 points, for the published setting (k = S = 5, cutoff 1) and
  CENet's (k = S = 7, cutoff 2); both timed.
- ``infer``: the published FIDNet (width 1.0, 64x2048; ``bench_infer``'s net: random weights, BatchNorm statistics
  measured on a scan) with AMP and channels_last, batch 1: network FPS and peak GPU memory; the GPU kNN against
  numba on that scan's predictions; and ``rangecps-infer``'s path end to end on the GPU (``bench_infer``'s
  ``torch-cuda``: read, project, network, CUDA kNN).
- ``train``: one AMP CPS training step of the published FIDNet at 64x2048 (``bench_train.time_steps``, which runs
  ``rangecps.cps.cps_step``, backward, AdamW; bench_train's loss) with the batch of
  ``configs/semantickitti/cps_fidnet.yaml`` (32 labeled + 32 unlabeled); where that does not fit in GPU memory,
  batch 2 + 2 in a fresh process. Scans/s and peak allocated GPU memory.
- ``frnet``: the released FRNet (``configs/semantickitti/cps_frnet.yaml``: width 1.0, 64x512, batch 4 + 4):
  one AMP CPS training step on 120,000-point scans (``bench_train``) and the point forward's FPS and memory.
- ``onnx``: that net exported to ONNX on onnxruntime's CUDA execution provider (onnxruntime-gpu): its logits
  against torch float32 on the GPU (TF32 off on both sides) within ``rangecps.deploy.onnx``'s export limits, its
  FPS, and ``bench_infer``'s ``onnxruntime-cuda`` end to end. Skipped where onnxruntime has no CUDA provider.

The scans are ``data/synthetic_kitti``'s validation scans where that dataset exists, else a small one simulated
into a temporary folder (2 sequences of 4 scans, seconds). Without a CUDA device the script prints "no CUDA device:
nothing to check", writes a JSON saying so and exits 0; with one it exits 1 when a part failed.

``--dry-run`` runs the same code on the CPU, at the CPU size (FIDNet width 0.125, 64x512, batch 1, onnxruntime's
CPU provider) with few repeats, into ``gpu_check-dry-run.json``: a check of this script on a machine without a
GPU, not of CUDA (the CUDA tests skip there, so that part fails).

    python benchmarks/gpu_check.py [--parts tests knn infer train frnet onnx] [--budget 450]
        [--json benchmarks/results/gpu_check.json] [--dry-run]
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from argparse import Namespace
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import infer_models
import torch
from common import timed_ms, write_result

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
PUBLISHED_CONFIG = REPO / "configs" / "semantickitti" / "cps_fidnet.yaml"
FRNET_CONFIG = REPO / "configs" / "semantickitti" / "cps_frnet.yaml"
RESULT_TAG = "GPU_CHECK_RESULT "  # the child's result line on stdout
# Each part's own time limit in seconds; all of them together stay within --budget.
LIMITS = {"tests": 120, "knn": 60, "infer": 120, "train": 180, "onnx": 150, "frnet": 150}
FALLBACK_BATCH = 2
NO_DEVICE = "no CUDA device: nothing to check"


def context(args: Namespace) -> Namespace:
    """What a part runs on: the GPU at the published size, or (``--dry-run``) the CPU at the small size."""
    dry = bool(args.dry_run)
    return Namespace(
        dry=dry,
        device=torch.device("cpu" if dry else "cuda"),
        cuda=not dry,
        size="small" if dry else "published",
        torch_backend="torch" if dry else "torch-cuda",
        ort_backend="onnxruntime" if dry else "onnxruntime-cuda",
        provider="CPUExecutionProvider" if dry else "CUDAExecutionProvider",
        reps=(lambda n: min(n, 2)) if dry else (lambda n: n),
    )


def scan_root(tmp: Path) -> Path:
    """``data/synthetic_kitti`` when it exists; else a small simulated SemanticKITTI-format root under ``tmp``
    (made once: ``build_data`` would simulate the full 100-scan dataset into a missing root)."""

    if infer_models.DEFAULT_ROOT.exists():
        return infer_models.DEFAULT_ROOT
    root = tmp / "synthetic_kitti"
    if not root.exists():
        from rangecps.sim.generate import generate_dataset

        generate_dataset("semantickitti", root, sequences=2, scans_per_sequence=4, progress=False)
    return root


def first_scan(width_px: int, root: Path) -> tuple[dict[str, Any], dict | None]:
    """The first validation scan, collated (``input`` ``(1, 6, 64, width_px)`` and the per-point arrays), and
    the config's kNN settings."""

    from rangecps.data.sample import collate
    from rangecps.io import read_kitti_points

    pipeline, paths, knn = infer_models.load_scans(width_px, root)
    return collate([pipeline.sample(read_kitti_points(paths[0]), None, 0, paths[0].stem)]), knn


# ---- parts: each runs in a child process and returns its record, with "status" and "reason" ----


def part_knn(args: Namespace) -> dict[str, Any]:
    import bench_knn

    from rangecps.eval.knn import knn_numba, knn_postprocess, knn_torch

    ctx = context(args)
    settings = {
        "published k=S=5": dict(knn=5, search=5, sigma=1.0, cutoff=1.0),
        "CENet k=S=7": dict(knn=7, search=7, sigma=1.0, cutoff=2.0),
    }
    checks, bad = {}, []
    for seed in (0, 1):
        scan = bench_knn.synthetic_scan(seed)
        on_device = {k: torch.from_numpy(v).to(ctx.device) for k, v in scan.items()}
        for name, params in settings.items():
            p = dict(num_classes=bench_knn.NUM_CLASSES, **params)
            reference = knn_numba(**scan, **p)
            out = knn_postprocess(**scan, **p, device=ctx.device)
            if ctx.cuda and out.device.type != "cuda":
                raise RuntimeError(f"knn_postprocess(device='cuda') returned a tensor on {out.device}")
            # The dry run's CPU knn_postprocess is numba itself: it checks knn_torch on the CPU instead.
            labels = knn_torch(**on_device, **p) if ctx.dry else out
            differ = int((labels.cpu().numpy() != reference).sum())
            numba_ms = timed_ms(functools.partial(knn_numba, **scan, **p), ctx.reps(3), 0, False)
            device_ms = timed_ms(functools.partial(knn_torch, **on_device, **p), ctx.reps(10), 2, ctx.cuda)
            checks[f"seed {seed}, {name}"] = {
                "points": len(reference),
                "labels_differing": differ,
                "numba_ms": statistics.median(numba_ms),
                "knn_torch_ms": statistics.median(device_ms),
                "knn_torch_device": str(ctx.device),
            }
            if differ:
                bad.append(f"seed {seed}, {name}: {differ} of {len(reference)} labels differ")
    status = {"status": "failed", "reason": "; ".join(bad)} if bad else {"status": "ok", "reason": "exact"}
    return status | {"checks": checks}


def part_infer(args: Namespace) -> dict[str, Any]:
    import bench_infer

    from rangecps.device import precision
    from rangecps.eval.predict import net_forward, pixel_classes, point_labels

    ctx = context(args)
    bench_infer.set_threads(1)  # first: numba's CPU parts ran 4x slower after work on more threads (measured)
    device = ctx.device
    size = infer_models.SIZES[ctx.size]
    root = scan_root(args.tmp)
    batch, knn = first_scan(size.width_px, root)
    if knn is None:
        raise ValueError(f"{infer_models.CONFIG}: eval.knn is off, so there is no kNN to check")
    models = infer_models.prepare_models(ctx.size, root, args.tmp, onnx=False, device=device)
    prec = precision("auto", True, device)
    net = infer_models.build_net(size, models["weights"]).to(device, memory_format=torch.channels_last)
    forward = net_forward([net], prec.amp, prec.channels_last)
    x = batch["input"].to(device).contiguous(memory_format=torch.channels_last)
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats()
    ms = timed_ms(functools.partial(forward, x), ctx.reps(30), ctx.reps(5), ctx.cuda)
    network = {
        "model": size.describe(),
        "batch": 1,
        "precision": prec.record(),
        "median_ms": statistics.median(ms),
        "fps": 1000.0 / statistics.median(ms),
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if ctx.cuda else None,
    }
    # The device's kNN against numba on this scan's predictions (the path rangecps-infer takes on a GPU).
    pred = pixel_classes(forward(x))[0]
    n = int(batch["num_points"][0])
    rows, cols, depth, mask = (
        batch["rows"][0, :n],
        batch["cols"][0, :n],
        batch["depth"][0, :n],
        batch["mask"][0],
    )
    k = infer_models.NUM_CLASSES
    on_device = [t.to(device) for t in (mask, rows, cols, depth)]
    _, voted = point_labels(pred, *on_device, k, knn)
    _, reference = point_labels(pred.cpu(), mask, rows, cols, depth, k, knn)
    differ = int((voted.cpu() != reference).sum())
    del net, forward, x
    gc.collect()
    if ctx.cuda:
        torch.cuda.empty_cache()
    end_to_end = bench_infer.time_config(
        ctx.size, ctx.torch_backend, root, models["weights"], None, ctx.reps(10), ctx.reps(2)
    )
    end_to_end.pop("runs_ms")
    ok = differ == 0
    return {
        "status": "ok" if ok else "failed",
        "reason": "ran" if ok else f"the {device} kNN differs from numba on {differ} of {n} points of a scan",
        "network": network,
        "knn_on_scan": {"points": n, "labels_differing": differ, "knn": knn, "device": str(device)},
        "end_to_end": end_to_end,
    }


def part_train(args: Namespace) -> dict[str, Any]:
    import bench_train

    from rangecps.config import load_config

    ctx = context(args)
    cfg = load_config(PUBLISHED_CONFIG)
    size = infer_models.SIZES[ctx.size]
    batch = args.batch or (1 if ctx.dry else cfg.data.batch_size)
    steps = bench_train.step_args(model_width=size.model_width, height=size.height, width_px=size.width_px,
                                  batch=batch, warmup=1, repeats=ctx.reps(3))  # fmt: skip
    record = {
        "config": str(PUBLISHED_CONFIG.relative_to(REPO)),
        "config_batch": [cfg.data.batch_size, cfg.data.unlabeled_batch_size],
        "config_model": f"{cfg.model.name} width {cfg.model.width}",
        "batch": [batch, batch],  # labeled, unlabeled: bench_train takes one size for both
        "model": size.describe(),
        "loss_terms": "bench_train's (CE, Lovasz, boundary)",
    }
    try:
        r = bench_train.time_steps("cps", steps, ctx.device)
    except RuntimeError as e:  # torch.OutOfMemoryError, or cuDNN failing to allocate what it needs
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        if not isinstance(e, torch.OutOfMemoryError) and not re.search(r"memory|CUDNN_STATUS|cuDNN", message):
            raise
        return record | {"status": "oom", "reason": f"batch {batch} does not fit: {message}"}
    r.pop("runs_s", None)
    return record | {"status": "ok", "reason": "ran"} | r


def part_frnet(args: Namespace) -> dict[str, Any]:
    """The released FRNet (configs/semantickitti/cps_frnet.yaml: width 1.0, 64x512 frustum grid, batch 4 + 4):
    one AMP CPS training step on 120,000-point scans (``bench_train``, point batches, the release's losses) and
    the eval-mode network's point forward on one such scan (FPS, peak memory)."""
    import bench_train

    from rangecps.config import load_config
    from rangecps.models import build_model

    ctx = context(args)
    cfg = load_config(FRNET_CONFIG)
    width = 0.25 if ctx.dry else cfg.model.width
    points = 30_000 if ctx.dry else 120_000
    batch = args.batch or (1 if ctx.dry else cfg.data.batch_size)
    grid = (cfg.data.height, cfg.data.width)
    steps = bench_train.step_args(model="frnet", model_width=width, height=grid[0], width_px=grid[1], batch=batch,
                                  points=points, warmup=1, repeats=ctx.reps(3))  # fmt: skip
    record = {
        "config": str(FRNET_CONFIG.relative_to(REPO)),
        "model": f"FRNet width {width}, {grid[0]}x{grid[1]}, {points} points a scan",
        "batch": [batch, batch],
    }
    try:
        train = bench_train.time_steps("cps", steps, ctx.device)
    except RuntimeError as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        if not isinstance(e, torch.OutOfMemoryError) and "memory" not in message:
            raise
        return record | {"status": "oom", "reason": f"batch {batch} does not fit: {message}"}
    train.pop("runs_s", None)
    net = build_model("frnet", 4, 20, width, seed=0).to(ctx.device).eval()
    g = torch.Generator().manual_seed(0)
    xyz = (torch.randn(points, 4, generator=g) * 10).to(ctx.device)
    coors = torch.stack([torch.zeros(points, dtype=torch.long), torch.randint(0, grid[0], (points,), generator=g),
                         torch.randint(0, grid[1], (points,), generator=g)], 1).to(ctx.device)  # fmt: skip
    amp = torch.bfloat16 if ctx.cuda and torch.cuda.is_bf16_supported() else None
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats()

    @torch.no_grad()
    def forward() -> None:
        with torch.autocast(ctx.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            net(xyz, coors, 1, grid)
        if ctx.cuda:
            torch.cuda.synchronize()

    times = timed_ms(forward, ctx.reps(20), warmup=2, cuda=ctx.cuda)
    ms = statistics.median(times)
    infer = {"median_ms": ms, "fps": 1000.0 / ms, "amp": str(amp),
             "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if ctx.cuda else None}  # fmt: skip
    return record | {"status": "ok", "reason": "ran", "train": train, "inference": infer}


def part_onnx(args: Namespace) -> dict[str, Any]:
    ctx = context(args)
    try:
        import onnxruntime as ort
    except ImportError:
        return {"status": "skipped", "reason": "onnxruntime is not installed (pip install onnxruntime-gpu)"}
    available = ort.get_available_providers()
    record: dict[str, Any] = {"onnxruntime": ort.__version__, "available_providers": available}
    if ctx.provider not in available:
        return record | {"status": "skipped", "reason": f"no {ctx.provider} in this onnxruntime build "
                         f"({', '.join(available)}): pip install onnxruntime-gpu"}  # fmt: skip
    import bench_infer

    from rangecps.deploy.onnx import OnnxRunner, check_agreement, compare_outputs

    bench_infer.set_threads(1)  # as in part_infer
    size = infer_models.SIZES[ctx.size]
    root = scan_root(args.tmp)
    models = infer_models.prepare_models(ctx.size, root, args.tmp, onnx=True, device=ctx.device)
    path = models["onnx"]
    record["export"] = models["export"]
    x = first_scan(size.width_px, root)[0]["input"]
    # Reference: torch float32 without TF32, whose 10-bit mantissa alone moves logits past the export's limits.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    net = infer_models.build_net(size, models["weights"]).to(ctx.device)
    with torch.no_grad():
        reference = net(x.to(ctx.device)).float().cpu().numpy()
    del net
    if ctx.cuda:
        torch.cuda.empty_cache()
        try:  # use_tf32: a CUDA provider option; a build that refuses it runs with its default
            strict = OnnxRunner(path, providers=[(ctx.provider, {"use_tf32": 0})])  # type: ignore[list-item]
            record["tf32"] = "off"
        except Exception as e:  # onnxruntime raises its own error types (not exported as classes)
            strict = OnnxRunner(path, providers=[ctx.provider])
            record["tf32"] = f"provider default (use_tf32 refused: {str(e).splitlines()[0]})"
    else:
        strict = OnnxRunner(path, providers=[ctx.provider])
    record["providers"] = strict.providers
    if strict.providers[0] != ctx.provider:
        return record | {
            "status": "failed",
            "reason": f"{ctx.provider} did not load: runs on {strict.providers}",
        }
    stats = compare_outputs(reference, strict(x.numpy()), "logits")
    record["agreement"] = stats
    del strict
    # As Segmenter.from_onnx makes it (the CUDA provider first, its default options); numpy in and out, so the
    # time includes the copies to and from the GPU.
    runner = OnnxRunner(path, providers=None if ctx.cuda else [ctx.provider])
    ms = timed_ms(functools.partial(runner, x.numpy()), ctx.reps(20), ctx.reps(3), ctx.cuda)
    record["network"] = {"median_ms": statistics.median(ms), "fps": 1000.0 / statistics.median(ms),
                         "providers": runner.providers, "batch": 1}  # fmt: skip
    del runner
    end_to_end = bench_infer.time_config(ctx.size, ctx.ort_backend, root, None, path, ctx.reps(5), 1)
    end_to_end.pop("runs_ms")
    record["end_to_end"] = end_to_end
    try:
        check_agreement(stats)
    except ValueError as e:
        return record | {"status": "failed", "reason": str(e)}
    return record | {"status": "ok", "reason": "agrees with torch within the export limits"}


PARTS: dict[str, Callable[[Namespace], dict[str, Any]]] = {
    "knn": part_knn,
    "infer": part_infer,
    "train": part_train,
    "frnet": part_frnet,
    "onnx": part_onnx,
}
ORDER = ("tests", "knn", "infer", "train", "frnet", "onnx")


def run_child(part: str, args: Namespace, timeout: float, extra: Sequence[str] = ()) -> dict[str, Any]:
    """One part in a fresh interpreter running this script with ``--part``; a crash or a timeout becomes a
    ``failed`` record with the reason and the end of the output."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", part, "--tmp", str(args.tmp),
           *(["--dry-run"] if args.dry_run else []), *extra]  # fmt: skip
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return {"status": "failed", "reason": f"timed out after {timeout:.0f} s", "output_tail": out[-2000:]}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    return {
        "status": "failed",
        "reason": f"exit {done.returncode} without a result",
        "output_tail": (done.stdout + done.stderr)[-2000:],
    }


def run_tests(timeout: float) -> dict[str, Any]:
    """The tests that need CUDA: ``pytest -k cuda`` over the test files that mention it, in one process."""
    files = sorted(
        str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py") if "cuda" in p.read_text()
    )
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-k", "cuda", *files]
    record: dict[str, Any] = {"command": " ".join(["pytest", *cmd[3:]])}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return record | {"status": "failed", "reason": f"timed out after {timeout:.0f} s"}
    out = done.stdout + done.stderr
    last = (
        done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    )  # "1 passed, 45 deselected in 2s"
    found = re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?)", last)
    counts = {kind: int(n) for n, kind in found}
    record |= {"counts": counts, "output_tail": out[-2000:]}
    passed, skipped = counts.get("passed", 0), counts.get("skipped", 0)
    if done.returncode == 5:
        return record | {"status": "failed", "reason": "no CUDA tests collected"}
    if done.returncode != 0:
        return record | {"status": "failed", "reason": f"pytest exit {done.returncode}: {counts}"}
    if skipped or not passed:
        return record | {"status": "failed", "reason": f"{passed} passed, {skipped} skipped (CUDA unusable?)"}
    return record | {"status": "ok", "reason": f"{passed} passed"}


def child(args: Namespace) -> int:
    """``--part``: run one part here and print its record as the last line of output."""
    try:
        record = PARTS[args.part](args)
    except Exception as e:
        record = {
            "status": "failed",
            "reason": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            "traceback": traceback.format_exc()[-3000:],
        }
    print(RESULT_TAG + json.dumps(record, default=str), flush=True)
    return 0


def summary(results: dict[str, dict[str, Any]], where: str) -> None:
    """The headline figures of the parts that ran."""
    infer, train, onnx, knn = (results.get(p, {}) for p in ("infer", "train", "onnx", "knn"))
    if "network" in infer:
        n = infer["network"]
        gpu = f", {n['peak_gpu_mib']:.0f} MiB" if n["peak_gpu_mib"] is not None else ""
        print(f"inference, {n['model']}, autocast {n['precision']['amp']}, channels_last, batch 1, {where}: "
              f"{n['median_ms']:.2f} ms, {n['fps']:.1f} FPS{gpu}")  # fmt: skip
    for e in (r["end_to_end"] for r in (infer, onnx) if "end_to_end" in r):
        p = e["parts_ms"]
        print(f"end to end per scan ({e['backend']}, {e['model']}): {e['ms_per_scan']:.1f} ms (read "
              f"{p['read']:.1f}, sample {p['sample']:.1f}, network {p['network']:.1f}, kNN "
              f"{p['knn']:.1f})")  # fmt: skip
    if train.get("status") == "ok":
        print(f"CPS training step, {train['model']}, batch {train['batch'][0]} + {train['batch'][1]}: "
              f"{train['step_s']:.3f} s, {train['scans_per_s']:.1f} scans/s, peak {train['peak_memory_mib']:.0f} "
              "MiB")  # fmt: skip
    if "agreement" in onnx:
        a = onnx["agreement"]
        fps = f", {onnx['network']['fps']:.1f} FPS" if "network" in onnx else ""
        print(f"ONNX on {onnx['providers'][0]}: max abs diff {a['max_abs_diff']:.2e} (logits up to "
              f"{a['max_abs_torch']:.1f}), label agreement {a['agreement']:.6f}{fps}")  # fmt: skip
    frnet = results.get("frnet", {})
    if frnet.get("status") == "ok":
        t, i = frnet["train"], frnet["inference"]
        print(f"FRNet ({frnet['model']}): CPS step, batch {frnet['batch'][0]} + {frnet['batch'][1]}: "
              f"{t['step_s']:.3f} s, peak {t['peak_memory_mib']:.0f} MiB; inference {i['median_ms']:.2f} ms, "
              f"{i['fps']:.1f} FPS")  # fmt: skip
    for name, c in knn.get("checks", {}).items():
        print(f"kNN {name}: {c['labels_differing']} labels differ; numba {c['numba_ms']:.1f} ms, knn_torch on "
              f"{c['knn_torch_device']} {c['knn_torch_ms']:.2f} ms")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", choices=ORDER, default=list(ORDER))
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for all parts together")
    parser.add_argument(
        "--json", type=Path, help="default benchmarks/results/gpu_check.json (or -dry-run.json)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="run this script's code on the CPU, small size"
    )
    parser.add_argument("--part", choices=list(PARTS), help=argparse.SUPPRESS)  # child: one part
    parser.add_argument("--tmp", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)  # child: train batch override
    args = parser.parse_args()
    if args.part is not None:
        return child(args)
    args.json = args.json or RESULTS / ("gpu_check-dry-run.json" if args.dry_run else "gpu_check.json")
    parts = [p for p in ORDER if p in args.parts]
    if not args.dry_run and not torch.cuda.is_available():
        print(NO_DEVICE)
        write_result(args.json, {
            "benchmark": "gpu_check", "status": "skipped", "reason": NO_DEVICE, "cuda": None,
            "parts": {p: {"status": "skipped", "reason": "no CUDA device"} for p in parts},
        })  # fmt: skip
        return 0
    start = time.perf_counter()
    deadline = start + args.budget
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        args.tmp = Path(tmp)
        for part in parts:
            t0 = time.perf_counter()
            left = deadline - t0
            if left < 20:
                results[part] = {"status": "skipped", "reason": f"the budget of {args.budget:.0f} s is spent"}
            elif part == "tests":
                results[part] = run_tests(min(LIMITS[part], left))
            else:
                results[part] = run_child(part, args, min(LIMITS[part], left))
                if part in ("train", "frnet") and results[part]["status"] == "oom":
                    too_big = results[part]["reason"]
                    left = deadline - time.perf_counter()
                    if left < 20:
                        results[part] = {"status": "failed", "reason": f"{too_big}; no time left for batch 2"}
                    else:
                        extra = ["--batch", str(FALLBACK_BATCH)]
                        results[part] = run_child(part, args, min(LIMITS[part], left), extra)
                        results[part]["note"] = (
                            f"{too_big}; ran batch {FALLBACK_BATCH} + {FALLBACK_BATCH} instead"
                        )
                    if results[part]["status"] == "oom":
                        results[part]["status"] = "failed"
            results[part]["seconds"] = round(time.perf_counter() - t0, 1)
            r = results[part]
            print(f"{part:6s} {r['status']:8s} {r['seconds']:6.1f} s  {r['reason']}", flush=True)
    where = "CPU (dry run)" if args.dry_run else torch.cuda.get_device_name()
    summary(results, where)
    failed = [p for p, r in results.items() if r["status"] == "failed"]
    write_result(args.json, {
        "benchmark": "gpu_check", "dry_run": args.dry_run, "status": "failed" if failed else "ok",
        "failed": failed, "cuda": None if args.dry_run else where, "budget_s": args.budget,
        "total_s": round(time.perf_counter() - start, 1), "parts": results,
    })  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
