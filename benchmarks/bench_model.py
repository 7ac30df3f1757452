"""Forward + backward time of one range-view network on the CPU, batch 1, at a full range image (64 x 2048).

For each channel width it times the same seeded model in fp32 eager mode twice: with the default contiguous
(channels-first, NCHW) layout, which is the baseline, and with channels_last (NHWC). Each timed step is
zero_grad + forward(aux=True) + backward of the summed mean logits, so auxiliary heads count for CENet. The
first ``--warmup`` steps (oneDNN primitive creation, allocator growth) are reported separately as
``first_step_s`` and kept out of the medians. Prints a table and writes JSON (``--json``).

    python benchmarks/bench_model.py                      # fidnet, widths 1.0 and 0.25, 64 x 2048
    python benchmarks/bench_model.py --model cenet --widths 0.25 --repeats 5

A width-1.0 step takes about a minute on two cores, so the default run takes a quarter of an hour on a
two-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from rangecps.atomic import atomic_write
from rangecps.models import MODELS, build_model

LAYOUTS = {"channels_first": torch.contiguous_format, "channels_last": torch.channels_last}


def time_steps(
    model: torch.nn.Module, x: torch.Tensor, warmup: int, repeats: int
) -> tuple[list[float], list[float]]:
    """Run warmup + repeats training steps; return (warmup times, timed times) in seconds."""
    times = []
    for _ in range(warmup + repeats):
        start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        outputs = model(x, aux=True)
        sum(o.mean() for o in outputs).backward()
        times.append(time.perf_counter() - start)
    return times[:warmup], times[warmup:]


def bench_width(args: argparse.Namespace, width: float) -> dict:
    rows = {}
    for layout, fmt in LAYOUTS.items():
        model = build_model(args.model, args.in_channels, args.classes, width=width, seed=0).train()
        x = torch.randn(
            1, args.in_channels, args.height, args.width_px, generator=torch.Generator().manual_seed(0)
        )
        model = model.to(memory_format=fmt)
        x = x.contiguous(memory_format=fmt)
        first, timed = time_steps(model, x, args.warmup, args.repeats)
        rows[layout] = {
            "median_s": statistics.median(timed),
            "min_s": min(timed),
            "runs_s": timed,
            "first_step_s": first,
        }
        print(f"  width {width:<5} {layout:<15} median {rows[layout]['median_s']:8.3f} s", flush=True)
    params = sum(
        p.numel() for p in build_model(args.model, args.in_channels, args.classes, width).parameters()
    )
    return {
        "width": width,
        "params": params,
        **rows,
        # > 1 means channels_last is faster than the channels-first baseline.
        "speedup_channels_last": rows["channels_first"]["median_s"] / rows["channels_last"]["median_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="fidnet")
    parser.add_argument(
        "--widths", type=float, nargs="+", default=[1.0, 0.25], help="channel width multipliers"
    )
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width-px", type=int, default=2048, help="range-image width in pixels")
    parser.add_argument("--in-channels", type=int, default=6)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/model.json"))
    args = parser.parse_args()
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    print(
        f"{args.model} fwd+bwd, batch 1, {args.in_channels} x {args.height} x {args.width_px}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats} after {args.warmup} warm-up",
        flush=True,
    )
    results = [bench_width(args, w) for w in args.widths]

    print(f"\n{'width':>6} {'params':>10} {'NCHW s':>9} {'NHWC s':>9} {'NHWC speedup':>13}")
    for r in results:
        print(
            f"{r['width']:>6} {r['params']:>10,} {r['channels_first']['median_s']:>9.3f} "
            f"{r['channels_last']['median_s']:>9.3f} {r['speedup_channels_last']:>12.2f}x"
        )

    report = {
        "benchmark": "model_forward_backward_cpu",
        "model": args.model,
        "input_shape": [1, args.in_channels, args.height, args.width_px],
        "num_classes": args.classes,
        "baseline": "channels_first (contiguous NCHW), fp32 eager",
        "warmup": args.warmup,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "results": results,
    }
    with atomic_write(args.json, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
