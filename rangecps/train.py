"""The training loop, written out: data, nets, optimisers, AMP, DDP, validation, checkpoints, logs.

Run folder layout::

    config.yaml        the resolved config, derived values included (classes, steps, world size, revision)
    splits/            labeled.txt and unlabeled.txt: the exact scans of this run
    metrics.jsonl      one JSON line per logged step and per validation
    tb/                TensorBoard scalars
    last.pt            atomic checkpoint of the latest state
    best.pt            the nets at their best validation range-pixel mIoU: each net's own best (a CPS run keeps
                       net a's and net b's best steps side by side, a Mean Teacher run the student's and the
                       teacher's; ``net_names`` and ``best_steps`` say which)
    summary.json       final figures (and ``non_finite_points``: training points with a NaN or infinite value,
                       which get no pixel)
    .lock              held by the run's first process while it runs (rangecps.folders)

A folder that holds a run is refused unless the run is resumed (``resume``) or started over (``overwrite``, which
removes the earlier run's files first), and the first process holds the folder's lock (:func:`folder_lock`) for the
whole run: two runs never write into one folder. ``data.root`` is recorded absolute, so a run folder names its
data wherever it is evaluated from. A resumed run drops what an earlier sitting logged after the checkpoint it
continues from, so no step is logged twice; resuming a complete run changes nothing.

Learning rate under DDP: ``optim.lr`` is used as given whatever the number of processes; the global batch is
``world_size x data.batch_size``. The published recipe's lr 0.01 belongs to its global batch; scale it linearly
(``--set optim.lr=...``) when the global batch differs much.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from rangecps import dist
from rangecps.atomic import atomic_write
from rangecps.checkpoint import code_revision, load_checkpoint, restore_rng, rng_state, save_checkpoint
from rangecps.config import Config, check_config, dump_yaml, to_dict
from rangecps.data.build import build_data
from rangecps.data.lasermix import LaserMix
from rangecps.data.pipeline import ScanPipeline
from rangecps.data.sample import CHANNELS
from rangecps.device import precision, release_host_memory, select_device, to_device
from rangecps.eval.validation import validate
from rangecps.folders import folder_lock
from rangecps.losses import class_weights
from rangecps.methods import METHODS
from rangecps.models import build_model, is_point_model
from rangecps.models.frnet import POINT_CHANNELS
from rangecps.optim import make_optimisers
from rangecps.runlog import (
    RunLog,
    absolute_path,
    check_resumable,
    complete_run,
    prepare_folder,
    resumed_best,
    with_absolute_paths,
)
from rangecps.teacher import ema_update, make_teacher
from rangecps.train_stream import batch_losses, non_finite_scans, scan_ids, training_stream


def train(
    cfg: Config,
    out_dir: str | Path,
    resume: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train ``cfg`` into ``out_dir``; ``resume`` is None, ``"auto"`` (``out_dir/last.pt`` if present) or a path.

    A folder that holds a run is refused (FileExistsError) unless ``resume`` continues it or ``overwrite`` removes
    its files first; a folder another process is training into is refused (:class:`FolderInUse`).

    Returns the summary (also written to ``summary.json``). Resuming a run that is already complete trains and
    writes nothing and returns its summary with ``already_complete`` True.
    """
    cfg = with_absolute_paths(check_config(cfg))
    out_dir = Path(out_dir)
    own_checkpoint = resume is not None and (
        resume == "auto" or absolute_path(resume) == absolute_path(out_dir / "last.pt")
    )
    if overwrite and own_checkpoint:
        raise ValueError(
            f"{out_dir}: --overwrite removes the run that --resume {resume} would continue; pass one of them"
        )
    device = select_device()
    info = dist.setup(device.type)
    with ExitStack() as stack:
        # One process per run holds the folder for the whole run; the kernel frees the lock at exit, even a crash.
        if info.is_main:
            stack.enter_context(folder_lock(out_dir, "training run"))
            prepare_folder(out_dir, resume, overwrite, own_checkpoint)
        summary = _train(cfg, out_dir, resume, progress, device, info)
    dist.teardown()
    return summary


def _train(
    cfg: Config, out_dir: Path, resume: str | None, progress: bool, device: torch.device, info: dist.DistInfo
) -> dict[str, Any]:
    """:func:`train` once the run folder is settled (and locked by the first process)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(cfg.train.seed)
    main = info.is_main
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        data = build_data(cfg, progress)  # the first process makes / prepares the dataset, the others wait
    if info.enabled:
        torch.distributed.barrier()
    if not main:
        data = build_data(cfg, progress=False)

    spec = METHODS[cfg.train.method]
    n_nets = len(spec.nets)
    point = is_point_model(cfg.model.name)  # FRNet: point batches, point losses, no channels_last
    stream = training_stream(cfg, data, spec, info, point)
    loader, labeled_ids, epochs, total_steps = (
        stream.loader,
        stream.labeled_ids,
        stream.epochs,
        stream.total_steps,
    )
    stop_step = min(total_steps, cfg.train.max_steps or total_steps)

    prec = precision(cfg.train.amp, cfg.train.channels_last, device)
    amp, channels_last = prec.amp, prec.channels_last and not point
    in_channels = len(POINT_CHANNELS) if point else len(CHANNELS)
    nets: list[nn.Module] = []  # the trained nets first, then the EMA teacher of Mean Teacher and LaserMix
    for k in range(spec.trained):  # CPS: one architecture, two initialisations
        net = build_model(
            cfg.model.name, in_channels, data.num_classes, cfg.model.width, seed=cfg.train.seed * 1000 + k
        )
        if info.enabled:
            net = dist.convert_sync_batchnorm(net, device.type)
        net = net.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
        nets.append(net)
    nets += [make_teacher(nets[0]) for _ in range(n_nets - spec.trained)]  # starts as the student, frozen
    trained = nets[: spec.trained]
    mixer = (
        LaserMix.for_geometry(
            data.geometry, tuple(cfg.semi.mix_bands), cfg.semi.mix_pitch, (info.rank, info.world)
        )
        if spec.mixes
        else None
    )
    opts, scheds = make_optimisers(cfg.optim, trained, total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    weight = None
    if cfg.loss.class_weights and data.stats.class_counts:
        weight = class_weights(torch.tensor(data.stats.class_counts, dtype=torch.float64)).to(device)

    resolved = to_dict(cfg)
    derived = {
        "num_classes": data.num_classes,
        "in_channels": in_channels,
        "height": data.geometry.height,
        "width": data.geometry.width,
        "epochs": epochs,
        "steps_per_epoch": loader.steps_per_epoch,
        "total_steps": total_steps,
        "world_size": info.world,
        "global_batch": cfg.data.batch_size * info.world * cfg.train.accumulate,
        "labeled_scans": len(labeled_ids),
        "unlabeled_scans": len(data.split.unlabeled),
        "split_source": data.split.source,
        "revision": code_revision(),
        "precision": prec.record(),
        "pipeline": ScanPipeline.from_bundle(data).to_dict(),  # what inference needs without the dataset
    }
    step, seconds_before = 0, 0.0  # training seconds of earlier sittings, when resumed
    non_finite_before, non_finite_here = 0, 0  # non-finite points met by earlier sittings / by this process
    # Each net's best validation score, the step it was reached and its weights then (best.pt holds them).
    best, best_steps = [-1.0] * n_nets, [0] * n_nets
    best_nets: list[dict[str, torch.Tensor] | None] = [None] * n_nets
    ckpt_path = Path(resume) if resume not in (None, "auto") else out_dir / "last.pt"
    if resume is not None and ckpt_path.is_file():
        state = load_checkpoint(ckpt_path, device)
        check_resumable(ckpt_path, state, resolved)
        step = int(state["step"])
        if step >= stop_step:
            return complete_run(out_dir, ckpt_path, state, stop_step, info.rank)
        for obj, key in ((nets, "nets"), (opts, "optimizers"), (scheds, "schedulers")):
            for o, s in zip(obj, state[key], strict=True):
                o.load_state_dict(s)
        if state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        restore_rng(state["rng"], generator)
        best, best_steps, best_nets = resumed_best(out_dir, step, state["best"], state["best_steps"])
        seconds_before = float(state.get("seconds", 0.0))
        non_finite_before = int(state.get("non_finite_points", 0))
    elif resume not in (None, "auto"):
        raise FileNotFoundError(f"{ckpt_path}: checkpoint to resume from not found")

    if main:
        with atomic_write(out_dir / "config.yaml", "w") as f:
            f.write(dump_yaml({**resolved, "derived": derived}))
        for name, ids in (("labeled", labeled_ids), ("unlabeled", data.split.unlabeled)):
            with atomic_write(out_dir / "splits" / f"{name}.txt", "w") as f:
                f.write("".join(f"{i}\n" for i in ids))
    # DDP wraps the trained nets only: a teacher has no gradients to reduce, and its weights follow the
    # (synchronised) student on every process.
    train_nets = [
        DistributedDataParallel(n, device_ids=[device.index] if device.type == "cuda" else None)
        if info.enabled and k < spec.trained
        else n
        for k, n in enumerate(nets)
    ]
    if cfg.train.compile:
        train_nets = [torch.compile(n) for n in train_nets]

    def run_state() -> dict[str, Any]:
        """What every checkpoint holds besides weights: where the run stands and how to rebuild its nets."""
        return {
            "net_names": list(spec.nets),
            "step": step,
            "best": best,
            "best_steps": best_steps,
            "seconds": seconds_before + time.time() - start_time,
            "config": resolved,
            "derived": derived,
            "revision": derived["revision"],
            "label_names": list(data.label_map.names),
            "non_finite_points": non_finite_points,
        }

    def checkpoint(path: Path) -> None:
        save_checkpoint(
            path,
            {
                "nets": [n.state_dict() for n in nets],
                "optimizers": [o.state_dict() for o in opts],
                "schedulers": [s.state_dict() for s in scheds],
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "rng": rng_state(generator),
                **run_state(),
            },
        )

    def save_best() -> None:
        """best.pt: every net at its own best validation step, with what evaluation needs to rebuild them."""
        save_checkpoint(out_dir / "best.pt", {"nets": best_nets, **run_state()})

    def count_non_finite() -> int:
        """Non-finite points met so far by every process and sitting (a collective under DDP)."""
        here = torch.tensor([non_finite_here], dtype=torch.int64, device=device)
        return non_finite_before + int(dist.all_reduce_sum(here).item())

    non_finite_points = non_finite_before
    log = RunLog(out_dir, main, resume_step=step)
    bar = tqdm(
        total=stop_step,
        initial=step,
        desc=f"{cfg.train.method} {cfg.data.labels}",
        disable=not (main and progress),
        dynamic_ncols=True,
    )
    val: dict[str, float] = {}
    start_time, resumed_at = time.time(), step
    for net in nets:
        net.train()
    grid = (data.geometry.height, data.geometry.width)
    while step < stop_step:
        epoch, offset = divmod(step, loader.steps_per_epoch)
        loader.set_epoch(epoch, offset)
        for micro_batches in loader.steps():  # train.accumulate (labeled, unlabeled) pairs a step
            for o in opts:
                o.zero_grad(set_to_none=True)
            summed: dict[str, torch.Tensor] = {}
            for m, (labeled, unlabeled) in enumerate(micro_batches):
                met = non_finite_scans(labeled, unlabeled)  # scans with non-finite points, and how many
                if met and not non_finite_here and main:
                    tqdm.write(
                        f"note: step {step + 1}: points with a NaN or infinite value get no pixel "
                        f"({', '.join(f'{n} in {i}' for i, n in met)}); summary.json counts all such points "
                        "(non_finite_points)"
                    )
                non_finite_here += sum(n for _, n in met)
                batches = [
                    to_device(b, device, channels_last) if b is not None else None
                    for b in (labeled, unlabeled)
                ]
                # DDP reduces gradients once a step: on the last micro-batch's backward.
                with ExitStack() as no_sync:
                    if m < len(micro_batches) - 1:
                        for n in train_nets:
                            if isinstance(n, DistributedDataParallel):
                                no_sync.enter_context(n.no_sync())
                    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                        losses = batch_losses(
                            train_nets, batches, cfg, weight, generator, grid, mixer, step, point
                        )
                    if not torch.isfinite(losses["loss"]):
                        raise FloatingPointError(
                            f"step {step + 1}: loss is {losses['loss'].item()} on a batch of scans "
                            f"{', '.join(scan_ids(labeled, unlabeled))}; check these scans for invalid values "
                            f"first (rangecps-prep checks a dataset root), then lower optim.lr or change "
                            f"train.amp (autocast {prec.record()['amp']} now)"
                        )
                    # The mean of the micro-batches' gradients, as DDP takes the mean of its processes'.
                    scaler.scale(losses["loss"] / len(micro_batches)).backward()
                for k, v in losses.items():
                    summed[k] = summed.get(k, 0) + v.detach() / len(micro_batches)
            losses = summed
            for net, o in zip(trained, opts, strict=True):
                if cfg.optim.grad_clip > 0:
                    scaler.unscale_(o)
                    nn.utils.clip_grad_norm_(net.parameters(), cfg.optim.grad_clip)
                scaler.step(o)
            scaler.update()
            for teacher in nets[spec.trained :]:
                ema_update(teacher, nets[0], cfg.semi.ema_momentum)
            for s in scheds:
                s.step()
            if device.type == "cpu" and point:
                # Point batches differ in size every step; the C heap would keep their freed buffers. Image
                # batches do not, and trimming there cost 36 ms a step of 0.9 s for nothing.
                release_host_memory()
            step += 1
            bar.update(1)
            if step % cfg.train.log_every == 0 or step == stop_step:
                values = {k: float(v.detach()) for k, v in losses.items()} | {
                    "lr": scheds[0].get_last_lr()[0],
                    "epoch": epoch,
                }
                bar.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{values['lr']:.2e}")
                log.log(step, values, "train")
            if step % cfg.train.val_every == 0 or step == stop_step:
                val = validate(
                    nets, spec.nets, data, device, amp, info, cfg.data.batch_size, cfg.data.num_workers
                )
                log.log(step, val, "val")
                improved = False
                for k, net in enumerate(nets):
                    score = val[f"miou_{spec.nets[k]}"]
                    if score > best[k]:
                        best[k], best_steps[k], improved = score, step, True
                        best_nets[k] = {n: t.detach().cpu().clone() for n, t in net.state_dict().items()}
                if main and improved:
                    save_best()
            if step % cfg.train.ckpt_every == 0 or step == stop_step:
                non_finite_points = count_non_finite()  # every process: a collective under DDP
                if main:
                    checkpoint(out_dir / "last.pt")
            if step >= stop_step:
                break
    bar.close()
    log.close()
    summary = {
        "method": cfg.train.method,
        "labels": cfg.data.labels,
        "dataset": cfg.data.dataset,
        "steps": step,
        "total_steps": total_steps,
        "seconds": round(seconds_before + time.time() - start_time, 1),  # every sitting's, not just this
        "resumed_at_step": resumed_at,
        "precision": prec.record(),
        "val_pixel_miou": val,
        "val_scored": "points" if point else "range pixels",  # what val_pixel_miou scored (FRNet: points)
        "val_range_interpolation": data.interpolation is not None,  # FRNet: validation densified as released
        "rank": info.rank,
        "nets": list(spec.nets),
        "best_val_pixel_miou": best,
        "best_steps": best_steps,
        "revision": derived["revision"],
        "non_finite_points": non_finite_points,
    }
    if main:
        with atomic_write(out_dir / "summary.json", "w") as f:
            json.dump(summary, f, indent=1)
    return summary


if __name__ == "__main__":  # torchrun --nproc_per_node=G -m rangecps.train --config ...
    import sys

    from rangecps.cli import train_main

    sys.exit(train_main())
