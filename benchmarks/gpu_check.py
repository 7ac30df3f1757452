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
- ``methods``: one AMP training step of every method of the published FIDNet at the configs' 64x1920, batch
  4 (+ 4 unlabeled), against sup_only's; then sup_only at the configs' batch of 32. A step that does not fit in
  GPU memory is a finding in the record (``out_of_memory``), not a failure.
- ``frnet``: the released FRNet (``configs/semantickitti/cps_frnet.yaml``: width 1.0, 64x512) on 120,000-point
  scans: one AMP training step of sup_only and CPS at the release's global batch of 16 (+ 16) in one process and
  of CPS at 4 + 4 (the micro-batch of ``train.accumulate=4``), each that does not fit recorded as a finding; and
  the point forward's FPS and memory.
- ``tta``: test-time augmentation per scan (``bench_tta``, 4 views against none) for the published FIDNet and
  the released FRNet, end to end through ``Segmenter.predict`` on the GPU.
- ``onnx``: that net exported to ONNX on onnxruntime's CUDA execution provider (onnxruntime-gpu): its logits
  against torch float32 on the GPU (TF32 off on both sides) within ``rangecps.deploy.onnx``'s export limits, its
  FPS, and ``bench_infer``'s ``onnxruntime-cuda`` end to end. Skipped where onnxruntime has no CUDA provider.

The scans are ``data/synthetic_kitti``'s validation scans where that dataset exists, else a small one simulated
into a temporary folder (2 sequences of 4 scans, seconds). Without a CUDA device the script prints "no CUDA device:
nothing to check", writes a JSON saying so and exits 0; with one it exits 1 when a part failed.

``--dry-run`` runs the same code on the CPU, at the CPU size (FIDNet width 0.125, 64x512, batch 1, onnxruntime's
CPU provider) with few repeats, into ``gpu_check-dry-run.json``: a check of this script on a machine without a
GPU, not of CUDA (the CUDA tests skip there, so that part fails).

    python benchmarks/gpu_check.py [--parts tests knn infer train methods frnet tta onnx] [--budget 540]
        [--json benchmarks/results/gpu_check.json] [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import traceback
from argparse import Namespace
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from common import write_result
from gpu_parts import PARTS

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
RESULT_TAG = "GPU_CHECK_RESULT "  # the child's result line on stdout
# Each part's own time limit in seconds; all of them together stay within --budget.
LIMITS = {"tests": 120, "knn": 60, "infer": 120, "train": 180, "methods": 150, "onnx": 150, "frnet": 150,
          "tta": 90}  # fmt: skip
FALLBACK_BATCH = 2
NO_DEVICE = "no CUDA device: nothing to check"


ORDER = ("tests", "knn", "infer", "train", "methods", "frnet", "tta", "onnx")


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
    methods = results.get("methods", {})
    for name, r in methods.get("steps", {}).items():
        b = methods["full_batch"] if " at batch " in name else methods["batch"]
        print(f"{name} step, {methods['model']}, batch {b}: {r['step_s']:.3f} s ({r['vs_sup_only']:.2f}x "
              f"sup_only), peak {r['peak_memory_mib']:.0f} MiB")  # fmt: skip
    for name, message in methods.get("out_of_memory", {}).items():
        print(f"{name}: does not fit ({message})")
    frnet = results.get("frnet", {})
    for name, t in frnet.get("steps", {}).items():
        print(f"FRNet ({frnet['model']}) {name} (+ as many unlabeled): {t['step_s']:.3f} s, peak "
              f"{t['peak_memory_mib']:.0f} MiB")  # fmt: skip
    for name, message in frnet.get("out_of_memory", {}).items():
        print(f"FRNet {name}: does not fit ({message})")
    if "inference" in frnet:
        i = frnet["inference"]
        print(f"FRNet inference: {i['median_ms']:.2f} ms, {i['fps']:.1f} FPS")
    for r in results.get("tta", {}).get("sizes", {}).values():
        print(f"TTA x{r['views']} ({r['model']}): {r['tta_ms']:.1f} ms a scan against {r['plain_ms']:.1f} "
              f"({r['tta_over_plain']:.2f}x)")  # fmt: skip
    for name, c in knn.get("checks", {}).items():
        print(f"kNN {name}: {c['labels_differing']} labels differ; numba {c['numba_ms']:.1f} ms, knn_torch on "
              f"{c['knn_torch_device']} {c['knn_torch_ms']:.2f} ms")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", choices=ORDER, default=list(ORDER))
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for all parts together")
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
                if part == "train" and results[part]["status"] == "oom":
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
            print(f"{part:7s} {r['status']:8s} {r['seconds']:6.1f} s  {r['reason']}", flush=True)
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
