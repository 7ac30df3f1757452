"""Benchmark one training step of every method: FIDNets (or CENets, or FRNets), a labeled and an unlabeled batch,
forward + backward + AdamW, and the EMA teacher update of the teacher methods.

One step is what ``rangecps/train.py`` runs per batch: :func:`rangecps.cps.cps_step` under autocast, backward,
an AdamW step on the trained nets only, then ``ema_update`` (momentum 0.01) of the teacher of ``mean_teacher`` and
``lasermix``. LaserMix partitions come from ``LaserMix.even_rows(height, (4, 5, 6, 7, 8))`` and a seeded generator;
the loss is the ``configs/synthetic`` one (CE, Lovasz, boundary; no class weights).

Reports per method the median seconds per step, scans/s (labeled + unlabeled scans per second of step; the mixed
scans LaserMix makes from them are not counted), peak memory, the part of that peak above the process's memory
just before the first step (which already holds the nets and the batches), and the step time against an in-run
baseline: a ``sup_only`` step of one net on the labeled batch (always run). Every method runs in a fresh child
process (the script re-invoked with ``--only``), so that its peak memory is its own: on a CPU peak memory is the
process's max RSS, which never goes down; on a GPU the peak allocated GPU memory. The step runs with the precision
training chooses (``rangecps.device.precision`` for ``--amp``, default ``auto``: bf16 autocast on GPUs and on CPUs
with native bf16, channels_last). Unless that already is float32 in the channels-first layout, ``sup_only`` and
``cps`` are also timed that way, as the trainer ran on CPUs before, and the speed-up is printed. The first
``--warmup`` steps are not timed.

    python benchmarks/bench_train.py [--model-width 1.0] [--height 64] [--width-px 2048] [--batch 1]
        [--warmup 1] [--repeats 3] [--methods sup_only cps ...] [--amp auto|bf16|off] [--no-channels-last]
        [--json benchmarks/results/train.json]

The ``configs/synthetic`` sizes: ``--model-width 0.125 --height 64 --width-px 512 --batch 1``.

``--model frnet`` times FRNet (:func:`rangecps.point_step.point_step`, the release's point and frustum losses) on
``--points`` random points per scan in a ``--height`` x ``--width-px`` frustum grid (the release: 64x512 on
SemanticKITTI, about 120k points a scan), and also one FIDNet ``sup_only`` step at ``--fidnet-width-px`` (default
2048, FIDNet's own image) with the same net width, so that the two networks' costs stand side by side
(``vs_fidnet_sup_only``; ``--fidnet-model-width`` sets its width). The synthetic configs side by side:
``--model frnet --model-width 0.25 --width-px 512 --fidnet-model-width 0.125 --fidnet-width-px 512``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from common import peak_rss_mib, rss_mib, write_result

from rangecps.config import LossConfig, SemiConfig
from rangecps.cps import cps_step
from rangecps.data.lasermix import LaserMix
from rangecps.data.sample import CHANNELS
from rangecps.device import precision, select_device
from rangecps.methods import METHODS
from rangecps.models import build_model, is_point_model
from rangecps.models.frnet import POINT_CHANNELS
from rangecps.point_step import point_step
from rangecps.teacher import ema_update, make_teacher

MIX_BANDS = (4, 5, 6, 7, 8)
EMA_MOMENTUM = 0.01
NUM_CLASSES = 20
RESULT_TAG = "BENCH_TRAIN_RESULT "  # the child's result line on stdout
OOM = "out_of_memory"  # the key of a child's result when its step did not fit in device memory


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mib()


def time_steps(method: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Median seconds per step, scans/s and peak memory of ``args.repeats`` steps of ``method`` in this process.

    Reads ``model_width``, ``height``, ``width_px``, ``batch``, ``warmup`` and ``repeats`` from ``args``. On a CPU
    the peak is the process's max RSS, so it covers whatever ran in this process before: call it once per fresh
    process (``main`` does) for a figure of the method's own.
    """
    spec = METHODS[method]
    point = is_point_model(args.model)
    prec = precision(args.amp, args.channels_last and not point, device)
    amp = prec.amp
    layout = torch.channels_last if prec.channels_last else torch.contiguous_format
    channels = len(POINT_CHANNELS) if point else len(CHANNELS)
    trained = [
        build_model(args.model, channels, NUM_CLASSES, args.model_width, seed=k).to(
            device, memory_format=layout
        )
        for k in range(spec.trained)
    ]
    nets = trained + [make_teacher(trained[0]) for _ in range(len(spec.nets) - spec.trained)]
    for net in nets:
        net.train()
    opts = [torch.optim.AdamW(n.parameters(), lr=0.01, weight_decay=0.01, eps=1e-6) for n in trained]
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    cfg = (
        LossConfig(ce=1.0, lovasz=1.5, boundary=1.0, aux=1.0, class_weights=False)
        if point
        else LossConfig(boundary=1.0, class_weights=False)
    )
    semi = SemiConfig(ema_momentum=EMA_MOMENTUM, mix_bands=list(MIX_BANDS))
    mixer = LaserMix.even_rows(args.height, MIX_BANDS) if spec.mixes else None
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, len(CHANNELS), args.height, args.width_px)

    def batch(labels: bool) -> dict[str, torch.Tensor]:
        if point:  # random points in random frustum pixels: FRNet's cost follows the numbers, not the layout
            n, b = args.points, args.batch
            coors = torch.stack(
                [
                    torch.arange(b).repeat_interleave(n),
                    torch.randint(0, args.height, (b * n,), generator=g),
                    torch.randint(0, args.width_px, (b * n,), generator=g),
                ],
                1,
            )
            return {
                "points": (torch.randn(b * n, channels, generator=g) * 10).to(device),
                "coors": coors.to(device),
                "label": (
                    torch.randint(0, NUM_CLASSES, (b * n,), generator=g)
                    if labels
                    else torch.zeros(b * n).long()
                ).to(device),
                "offsets": (torch.arange(b + 1) * n).to(device),
            }
        out = {
            "input": torch.randn(shape, generator=g).to(device).contiguous(memory_format=layout),
            "mask": (torch.rand(shape[0], *shape[2:], generator=g) > 0.15).to(device),
        }
        if labels:
            out["label"] = torch.randint(0, NUM_CLASSES, (shape[0], *shape[2:]), generator=g).to(device)
        return out

    labeled, unlabeled = batch(True), (batch(False) if spec.unlabeled else None)
    step_losses = partial(point_step, grid=(args.height, args.width_px)) if point else cps_step
    step_generator = torch.Generator().manual_seed(0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device) / 2**20
    else:
        before = rss_mib()
    load_before = os.getloadavg()[0]
    times = []
    for i in range(args.warmup + args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            losses = step_losses(
                nets, labeled, unlabeled, method, cfg, None, step_generator, semi=semi, mixer=mixer, step=i
            )
        for o in opts:
            o.zero_grad(set_to_none=True)
        scaler.scale(losses["loss"]).backward()
        for o in opts:
            scaler.step(o)
        scaler.update()
        for teacher in nets[spec.trained :]:
            ema_update(teacher, nets[0], EMA_MOMENTUM)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    step = statistics.median(times)
    scans = args.batch * (2 if unlabeled is not None else 1)
    peak = peak_memory_mib(device)
    return {
        "step_s": step,
        "best_s": min(times),
        "scans_per_s": scans / step,
        "scans_per_step": scans,
        "nets": len(nets),
        "trained_nets": spec.trained,
        "peak_memory_mib": peak,
        "before_first_step_mib": before,
        "step_excess_mib": peak - before if before is not None else None,
        "peak_rss_mib": peak_rss_mib(),
        "loss": float(losses["loss"].detach()),
        "threads": torch.get_num_threads(),
        "precision": prec.record(),
        "load_average_1min": [load_before, os.getloadavg()[0]],  # before and after the steps: others' load
        "runs_s": times,
    }


def time_in_child(
    method: str, args: argparse.Namespace, fp32_nchw: bool = False, fidnet_reference: bool = False
) -> dict[str, Any]:
    """:func:`time_steps` of ``method`` in a fresh interpreter running this script with ``--only``; with
    ``fp32_nchw`` in float32 and the channels-first layout instead of ``args``' precision; with
    ``fidnet_reference`` a FIDNet of the same width at ``args.fidnet_width_px`` instead of ``args.model``."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--only",
        method,
        "--model",
        "fidnet" if fidnet_reference else args.model,
        "--points",
        str(args.points),
        "--model-width",
        str((args.fidnet_model_width or args.model_width) if fidnet_reference else args.model_width),
        "--height",
        str(args.height),
        "--width-px",
        str(args.fidnet_width_px if fidnet_reference else args.width_px),
        "--batch",
        str(args.batch),
        "--warmup",
        str(args.warmup),
        "--repeats",
        str(args.repeats),
        "--amp",
        "off" if fp32_nchw else args.amp,
        *(["--no-channels-last"] if fp32_nchw or not args.channels_last else []),
    ]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout
    for line in reversed(out.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    raise RuntimeError(f"no result from {' '.join(cmd)}; its output:\n{out}")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", choices=("fidnet", "cenet", "frnet"), default="fidnet", help="network to time"
    )
    parser.add_argument(
        "--model-width",
        type=float,
        default=1.0,
        help="net width (1.0 = published: FIDNet 6.05 M, FRNet 10.0 M)",
    )
    parser.add_argument("--points", type=int, default=120_000, help="frnet: points per scan")
    parser.add_argument(
        "--fidnet-width-px",
        type=int,
        default=2048,
        help="frnet: image width of the FIDNet sup_only reference",
    )
    parser.add_argument(
        "--fidnet-model-width",
        type=float,
        help="frnet: width of the FIDNet reference (default: --model-width)",
    )
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width-px", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=1, help="labeled scans = unlabeled scans per step")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS),
        default=list(METHODS),
        help="methods to time (sup_only, the baseline, always runs)",
    )
    parser.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto", help="as train.amp")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "train.json")
    parser.add_argument(
        "--only", choices=list(METHODS), help=argparse.SUPPRESS
    )  # child: one method, JSON out
    return parser


def step_args(**values: Any) -> argparse.Namespace:
    """The command line's defaults with ``values`` set: what :func:`time_steps` reads, for callers in Python
    (``run_all.py``, ``gpu_check.py``), so that a new option never leaves them without it."""
    args = make_parser().parse_args([])
    for key, value in values.items():
        if not hasattr(args, key):
            raise ValueError(f"bench_train has no option {key!r}")
        setattr(args, key, value)
    return args


def main() -> int:
    args = make_parser().parse_args()
    device = select_device()
    if args.only is not None:
        try:
            result = time_steps(args.only, args, device)
        except torch.OutOfMemoryError as err:  # a size that does not fit is a finding, not a crash
            result = {OOM: str(err).split(". ")[0]}
        print(RESULT_TAG + json.dumps(result), flush=True)
        return 0
    methods = ["sup_only"] + [m for m in dict.fromkeys(args.methods) if m != "sup_only"]
    results: dict[str, dict[str, Any]] = {}
    too_big: dict[str, str] = {}  # what ran out of device memory, and the allocator's message

    def timed(name: str, method: str, **kw: bool) -> dict[str, Any] | None:
        r = time_in_child(method, args, **kw)
        if OOM in r:
            too_big[name] = r[OOM]
            return None
        return r

    for m in methods:
        if (r := timed(m, m)) is not None:
            results[m] = r
    if "sup_only" not in results:
        print(
            f"error: sup_only does not fit at batch {args.batch} on {device}: {too_big['sup_only']}",
            file=sys.stderr,
        )
        return 1
    base = results["sup_only"]["step_s"]
    for r in results.values():
        r["vs_sup_only"] = r["step_s"] / base
    prec = results["sup_only"]["precision"]
    fp32 = {}  # the same steps in float32, channels-first: the speed-up the precision choice buys
    if prec["amp"] != "off" or prec["channels_last"]:
        for m in ("sup_only", "cps"):
            if m in results and (r := timed(f"{m}, float32 channels-first", m, fp32_nchw=True)) is not None:
                fp32[m] = r
    reference = None
    if is_point_model(args.model):
        reference = timed("FIDNet sup_only reference", "sup_only", fidnet_reference=True)
    if reference is not None:
        for r in results.values():
            r["vs_fidnet_sup_only"] = r["step_s"] / reference["step_s"]
    what = f"{args.points} points a scan, " if is_point_model(args.model) else ""
    print(
        f"one training step, {args.model} width {args.model_width}, {what}{args.height}x{args.width_px}, batch "
        f"{args.batch} labeled (+{args.batch} unlabeled for the semi-supervised methods), {device}, "
        f"median of {args.repeats}, one process per method"
    )
    memory = "GPU MiB" if device.type == "cuda" else "RSS MiB"
    print(
        f"{'method':13s} {'nets':>6s} {'step s':>8s} {'best s':>8s} {'scans/s':>8s} {'peak ' + memory:>13s} "
        f"{'step +MiB':>10s} {'vs sup_only':>12s}"
    )
    for name, r in results.items():
        excess = f"{r['step_excess_mib']:10.0f}" if r["step_excess_mib"] is not None else f"{'-':>10s}"
        print(
            f"{name:13s} {r['trained_nets']:>4d}+{r['nets'] - r['trained_nets']:d} {r['step_s']:8.3f} "
            f"{r['best_s']:8.3f} {r['scans_per_s']:8.2f} {r['peak_memory_mib']:13.0f} {excess} "
            f"{r['vs_sup_only']:11.2f}x"
        )
    print(f"precision: autocast {prec['amp']}, channels_last {prec['channels_last']} ({prec['reason']})")
    if reference is not None:
        print(
            f"FIDNet sup_only, width {args.fidnet_model_width or args.model_width}, {args.height}x"
            f"{args.fidnet_width_px}: "
            f"{reference['step_s']:.3f} s a step, peak {reference['peak_memory_mib']:.0f} MiB; "
            + ", ".join(f"{m} {r['vs_fidnet_sup_only']:.2f}x" for m, r in results.items())
        )
    for name, r in fp32.items():
        results[name]["speedup_vs_fp32_nchw"] = r["step_s"] / results[name]["step_s"]
        print(
            f"{name}: {r['step_s']:.3f} s in float32 channels-first -> {results[name]['step_s']:.3f} s "
            f"({results[name]['speedup_vs_fp32_nchw']:.2f}x)"
        )
    for name, message in too_big.items():
        print(f"{name}: does not fit at batch {args.batch} ({message})")
    print(
        "nets: trained + EMA teachers; step +MiB: peak above the memory just before the first step "
        "(nets and batches already there); vs sup_only: step time ratio (medians)"
    )
    load = max(max(r["load_average_1min"]) for r in results.values())
    if device.type == "cpu" and load > (os.cpu_count() or 1) + 1:
        print(
            f"note: 1-minute load average reached {load:.1f} on {os.cpu_count()} CPUs: other processes were busy"
        )
    write_result(
        args.json,
        {
            "benchmark": "train_step",
            "args": {k: v for k, v in vars(args).items() if k != "only"} | {"json": str(args.json)},
            "device": str(device),
            "methods": methods,
            "baseline": "sup_only",
            "memory": "peak allocated GPU memory"
            if device.type == "cuda"
            else "max RSS of the method's process",
            "results": results,
            "fp32_channels_first": fp32,
            "fidnet_sup_only_reference": reference,
            "out_of_memory": too_big,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
