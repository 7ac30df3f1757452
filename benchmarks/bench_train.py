"""Benchmark one CPS training step: two FIDNets, a labeled and an unlabeled batch, forward + backward + AdamW.

Reports scans/s (labeled + unlabeled scans per second of step) and peak memory, against an in-run baseline: a
``sup_only`` step of one net on the labeled batch. On a GPU the step runs as training runs it there (bf16 autocast
where supported, channels_last); on a CPU in float32. The first ``--warmup`` steps are not timed.

    python benchmarks/bench_train.py [--model-width 1.0] [--height 64] [--width-px 2048] [--batch 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from common import write_result

from rangecps.config import LossConfig
from rangecps.cps import cps_step
from rangecps.data.dataset import CHANNELS
from rangecps.device import amp_dtype, select_device
from rangecps.models import build_model


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_steps(method: str, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Median seconds per step, scans/s and peak memory of ``args.repeats`` steps of ``method``."""
    n_nets = 1 if method == "sup_only" else 2
    amp = amp_dtype("auto", device)
    layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    nets = [
        build_model("fidnet", len(CHANNELS), 20, args.model_width, seed=k).to(device, memory_format=layout)
        for k in range(n_nets)
    ]
    opts = [torch.optim.AdamW(n.parameters(), lr=0.01, weight_decay=0.01) for n in nets]
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, len(CHANNELS), args.height, args.width_px)

    def batch(labels: bool) -> dict[str, torch.Tensor]:
        out = {
            "input": torch.randn(shape, generator=g).to(device).contiguous(memory_format=layout),
            "mask": (torch.rand(shape[0], *shape[2:], generator=g) > 0.15).to(device),
        }
        if labels:
            out["label"] = torch.randint(0, 20, (shape[0], *shape[2:]), generator=g).to(device)
        return out

    labeled, unlabeled = batch(True), (batch(False) if n_nets == 2 else None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(args.warmup + args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            losses = cps_step(nets, labeled, unlabeled, method, LossConfig(boundary=1.0))
        for o in opts:
            o.zero_grad(set_to_none=True)
        scaler.scale(losses["loss"]).backward()
        for o in opts:
            scaler.step(o)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    step = statistics.median(times)
    scans = args.batch * (2 if unlabeled is not None else 1)
    return {
        "step_s": step,
        "scans_per_s": scans / step,
        "peak_memory_mib": peak_memory_mib(device),
        "runs_s": times,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model-width", type=float, default=1.0, help="FIDNet width (1.0 = published, 6.05 M)"
    )
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width-px", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=1, help="labeled scans = unlabeled scans per step")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "train.json")
    args = parser.parse_args()
    device = select_device()
    results = {m: time_steps(m, args, device) for m in ("sup_only", "cps")}
    base = results["sup_only"]["step_s"]
    print(
        f"one training step, FIDNet width {args.model_width}, {args.height}x{args.width_px}, batch "
        f"{args.batch} labeled (+{args.batch} unlabeled for CPS), {device}, median of {args.repeats}"
    )
    print(f"{'method':10s} {'step s':>9s} {'scans/s':>9s} {'peak MiB':>9s} {'vs sup_only':>12s}")
    for name, r in results.items():
        print(
            f"{name:10s} {r['step_s']:9.3f} {r['scans_per_s']:9.3f} {r['peak_memory_mib']:9.0f} "
            f"{r['step_s'] / base:11.2f}x"
        )
    write_result(
        args.json,
        {
            "benchmark": "train_step",
            "args": vars(args) | {"json": str(args.json)},
            "device": str(device),
            "results": results,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
