"""The parts of :mod:`gpu_check`: each checks one CUDA path of the toolkit and returns its record (``status`` ok /
oom / failed / skipped, ``reason``, and its figures). ``gpu_check`` runs each in a child process of its own; with
``--dry-run`` they run the same code on the CPU at the small size (a check of this code, not of CUDA)."""

from __future__ import annotations

import functools
import gc
import re
import statistics
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path
from typing import Any

import infer_models
import torch
from common import timed_ms

REPO = Path(__file__).resolve().parents[1]
PUBLISHED_CONFIG = REPO / "configs" / "semantickitti" / "cps_fidnet.yaml"
FRNET_CONFIG = REPO / "configs" / "semantickitti" / "cps_frnet.yaml"


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


def part_methods(args: Namespace) -> dict[str, Any]:
    """One AMP training step of every method (``bench_train``) of the published FIDNet at the configs' image
    (64x1920), 4 labeled + 4 unlabeled scans: step time, scans/s, peak GPU memory, and each method's cost against
    sup_only's; then ``sup_only`` at the configs' batch (32), the one method whose published batch may fit on one
    GPU. A step that does not fit is recorded as a finding (``out_of_memory``), not a failure."""
    import bench_train

    from rangecps.config import load_config
    from rangecps.methods import METHODS

    ctx = context(args)
    cfg = load_config(PUBLISHED_CONFIG)
    size = infer_models.SIZES[ctx.size]
    width_px = size.width_px if ctx.dry else cfg.data.width
    batch, full = (1, 2) if ctx.dry else (4, cfg.data.batch_size)
    record: dict[str, Any] = {
        "model": f"{cfg.model.name} width {size.model_width}, {size.height}x{width_px}",
        "batch": batch, "full_batch": full, "steps": {}, "out_of_memory": {},
    }  # fmt: skip

    def step(method: str, b: int) -> None:
        name = method if b == batch else f"{method} at batch {b}"
        steps = bench_train.step_args(model_width=size.model_width, height=size.height, width_px=width_px,
                                      batch=b, warmup=1, repeats=ctx.reps(5))  # fmt: skip
        try:
            r = bench_train.time_steps(method, steps, ctx.device)
            r.pop("runs_s", None)
            record["steps"][name] = r
        except torch.OutOfMemoryError as e:
            record["out_of_memory"][name] = str(e).split(". ")[0]
        gc.collect()
        if ctx.cuda:
            torch.cuda.empty_cache()

    for method in METHODS:
        step(method, batch)
    step("sup_only", full)
    base = record["steps"].get("sup_only")
    for r in record["steps"].values():
        r["vs_sup_only"] = r["step_s"] / base["step_s"] if base else None
    ran = len(record["steps"])
    return record | {"status": "ok", "reason": f"{ran} steps ran, {len(record['out_of_memory'])} did not fit"}


def part_frnet(args: Namespace) -> dict[str, Any]:
    """The released FRNet (configs/semantickitti/cps_frnet.yaml: width 1.0, 64x512 frustum grid) on 120,000-point
    scans: one AMP training step (``bench_train``, point batches, the release's losses) of ``sup_only`` and
    ``cps`` at the configs' global batch of 16 (+ 16) in one process, and of ``cps`` at 4 + 4, the micro-batch of
    the accumulated form (``train.accumulate=4``: four such steps' time, one's memory); then the eval-mode
    network's point forward on one scan (FPS, peak memory). A step that does not fit is a finding
    (``out_of_memory``), not a failure."""
    import bench_train

    from rangecps.config import load_config
    from rangecps.models import build_model

    ctx = context(args)
    cfg = load_config(FRNET_CONFIG)
    width = 0.25 if ctx.dry else cfg.model.width
    points = 30_000 if ctx.dry else 120_000
    full = args.batch or (2 if ctx.dry else cfg.data.batch_size)
    micro = 1 if ctx.dry else 4
    grid = (cfg.data.height, cfg.data.width)
    record: dict[str, Any] = {
        "config": str(FRNET_CONFIG.relative_to(REPO)),
        "model": f"FRNet width {width}, {grid[0]}x{grid[1]}, {points} points a scan",
        "batch": [full, full], "micro_batch": micro, "steps": {}, "out_of_memory": {},
    }  # fmt: skip
    for method, batch in (("sup_only", full), ("cps", full), ("cps", micro)):
        name = f"{method} at batch {batch}"
        steps = bench_train.step_args(model="frnet", model_width=width, height=grid[0], width_px=grid[1],
                                      batch=batch, points=points, warmup=1, repeats=ctx.reps(3))  # fmt: skip
        try:
            r = bench_train.time_steps(method, steps, ctx.device)
            r.pop("runs_s", None)
            record["steps"][name] = r
        except RuntimeError as e:
            message = str(e).splitlines()[0] if str(e) else type(e).__name__
            if not isinstance(e, torch.OutOfMemoryError) and "memory" not in message:
                raise
            record["out_of_memory"][name] = message.split(". ")[0]
        gc.collect()
        if ctx.cuda:
            torch.cuda.empty_cache()
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
    ran, oom = len(record["steps"]), len(record["out_of_memory"])
    return record | {"status": "ok", "reason": f"{ran} steps ran, {oom} did not fit", "inference": infer}


def part_tta(args: Namespace) -> dict[str, Any]:
    """Test-time augmentation per scan (``bench_tta``): ``Segmenter.predict`` with the release's 4 views against
    the same Segmenter without, for the published FIDNet (64x2048, kNN) and the released FRNet (64x512)."""
    import bench_tta

    ctx = context(args)
    sizes = ("small", "frnet-small") if ctx.dry else ("published", "frnet-released")
    root = scan_root(args.tmp)
    out = {}
    for size in sizes:
        r = bench_tta.time_size(size, 4, ctx.reps(5), 1, root, args.tmp, ctx.torch_backend)
        r.pop("runs_ms", None)
        out[size] = r
    return {"status": "ok", "reason": f"{len(out)} sizes timed", "sizes": out}


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
    "methods": part_methods,
    "frnet": part_frnet,
    "tta": part_tta,
    "onnx": part_onnx,
}
