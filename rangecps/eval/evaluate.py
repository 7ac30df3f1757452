"""Evaluate a run or checkpoint on a split: three levels of mIoU, prediction files, benchmark submissions.

Three numbers, each from its own confusion matrix (ignore class 0 not counted):

- ``range_pixel``: every occupied range-image pixel, its label image vs the pixel prediction. This is the number
  the published semi-supervised range-view tables report, and what training validates on.
- ``point``: every point of the scan (occluded ones included) takes its pixel's prediction ("no kNN").
- ``point_knn``: every point re-labelled by the kNN vote of :mod:`rangecps.eval.knn` (RangeNet++ post-processing,
  ``eval.knn_*`` of the config). The official benchmarks score points, so this is the headline with kNN on.

Point models (FRNet: ``rangecps.models.is_point_model``) predict every point with a pixel themselves: their runs
are scored on points natively, with the ``point`` level alone (each point's own prediction; a point without a
pixel takes the class the scan's predicted points take most often). No kNN runs: ``metrics.json`` records
``"knn": null`` and ``"point_model": true``, and ``--knn`` given for such a run is ignored with a one-line note
(``notes``, printed by the report). The scans are read with ``point_inputs=True``
(:mod:`rangecps.eval.predict_points`). A point model trained with ``data.augment.range_interpolation`` is
evaluated as the FRNet release evaluates: each scan densified by the same RangeInterpolation, the added points
fed to the network beside the scan's own and their predictions dropped, so labels, probabilities, metrics and
written files cover exactly the file's points; ``metrics.json`` records ``"range_interpolation": true`` and
``interpolated_points``, how many were added (false and 0 for every other run).

Each level's mIoU follows the official evaluator of the dataset (:func:`rangecps.eval.metrics.official_convention`):
semantic-kitti-api for (Scribble)KITTI, where a class absent from ground truth and predictions counts 0 in the
mean, nuscenes-devkit for nuScenes, where it is left out; ``metrics.json`` gives the other convention's figure
beside it (``miou_other``), and :mod:`rangecps.eval.report` formats the console report.

A checkpoint names its nets (``net_names``: ``a`` / ``a, b`` / ``student, teacher``). A CPS checkpoint is scored
with net a by default (as TorchSemiSeg, the CPS reference, evaluates one branch; it costs what a supervised-only
model costs), a Mean Teacher or LaserMix checkpoint with the teacher (as the LaserMix release predicts on the
teacher). ``--net`` picks another (``b``, ``student``), ``--net ensemble`` averages the two networks' softmax
probabilities. Every report names the net, and the default results folder is ``<run>/eval_<split>_<net>``.

Pixel predictions are the argmax over classes 1..K-1: the ignore class is never predicted. Points without a pixel
(a zero-range point, or one with a NaN or infinite coordinate or intensity: prep rejects those, but a scan file can
change after prep) cannot be placed in the image: they take the class the scan's occupied pixels predict most
often, the same label in the metrics and in the written files, and ``metrics.json`` counts them
(``points_without_pixel``; of those, ``non_finite_points`` had a non-finite value, which the report prints).

The results folder is all-or-nothing. It is built in a hidden sibling ``.<name>.partial-<pid>`` under the lock of
the folder (a second evaluation writing there at once is refused) and moved into place when complete, with
``manifest.json`` (checkpoint, step, revision, scans, files, ``"complete": true``) written last; ``rangecps-vis``
refuses prediction trees without one. The default folder ``<run>/eval_<split>_<net>`` is the tool's own: a
complete new evaluation replaces it (predictions of the earlier one included). Any other ``--out`` that holds
something is refused unless ``--overwrite``.

Memory does not grow with the split: scans stream through a DataLoader, only ``(K, K)`` matrices accumulate, and
predictions are written scan by scan (see :mod:`rangecps.eval.submit` for the layouts).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from rangecps.atomic import atomic_write
from rangecps.checkpoint import code_revision
from rangecps.data.build import DataBundle, build_data
from rangecps.data.dataset import RangeDataset
from rangecps.data.pipeline import ScanPipeline
from rangecps.data.sample import collate
from rangecps.data.tta import View, tta_views
from rangecps.device import precision
from rangecps.eval.metrics import ConfusionMatrix, official_convention
from rangecps.eval.outputs import StagedFolder, check_out_folder, write_manifest
from rangecps.eval.predict import knn_settings, net_forward, segment_batch
from rangecps.eval.predict_points import point_net_forward, segment_point_batch
from rangecps.eval.report import LEVELS, POINT_MODEL_LEVEL, level_dict
from rangecps.eval.runs import LoadedRun, choose_net, load_run, net_names
from rangecps.eval.submit import PREDICTION_TREES, make_writer
from rangecps.eval.tta import segment_views
from rangecps.models import is_point_model


def _open_split(
    run: LoadedRun, split: str, write: bool, point_inputs: bool = False, views: tuple[View, ...] = ()
) -> tuple[DataBundle, RangeDataset, bool]:
    """The run's data, ``split`` as a dataset (with the points of a point model when ``point_inputs``, and the
    test-time ``views`` of every scan), and whether it has labels; refuses what cannot be evaluated."""
    cfg = run.cfg
    if not Path(cfg.data.root).exists():
        raise FileNotFoundError(
            f"{cfg.data.root}: dataset root of {run.path} not found; pass --set data.root=PATH"
        )
    data = build_data(cfg, progress=False)
    trained = list(run.state["label_names"])
    if list(data.label_map.names) != trained or data.num_classes != run.state["derived"]["num_classes"]:
        raise ValueError(
            f"{run.path}: trained on classes {trained}, but {cfg.data.dataset} has {data.label_map.names}"
        )
    dataset = data.dataset(split, point_inputs=point_inputs, interpolate=point_inputs, views=views)
    if "pipeline" in run.state["derived"]:
        # Normalise with the statistics the network was trained with, which the checkpoint holds, not with the
        # root's statistics of today (a root prepared again, or one without training scans, has others).
        dataset.encode = ScanPipeline.from_dict(run.state["derived"]["pipeline"]).encoding
    if not dataset.records:
        raise ValueError(f"{data.root}: split '{split}' holds no scans")
    labeled = sum(r.labels is not None for r in dataset.records)
    if 0 < labeled < len(dataset):
        raise ValueError(
            f"{data.root}: split '{split}' has labels for only {labeled} of {len(dataset)} scans"
        )
    if not labeled and not write:
        raise ValueError(f"split '{split}' has no labels: pass --write-predictions or --submission")
    return data, dataset, labeled > 0


class ResultsNotWritten(RuntimeError):
    """An evaluation finished, but some of its outputs could not be written where asked. ``result`` holds the
    metrics (what ``metrics.json`` would hold); the message names each file that failed and where the metrics
    went instead."""

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.result = result


def _reason(e: BaseException) -> str:
    """An exception as one line without its file name (the caller names the file)."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _save_elsewhere(result: dict[str, Any]) -> Path | None:
    """``metrics.json`` in a new temporary folder (the results folder could not take it), or None."""
    try:
        folder = Path(tempfile.mkdtemp(prefix="rangecps-eval-"))
        with atomic_write(folder / "metrics.json", "w") as f:
            json.dump({k: v for k, v in result.items() if k != "replaced"}, f, indent=1)
        return folder / "metrics.json"
    except OSError:
        return None


def evaluate(
    checkpoint: str | Path,
    split: str = "val",
    knn: bool | None = None,
    net: str | None = None,
    out: str | Path | None = None,
    write_predictions: bool = False,
    submission: bool = False,
    overrides: list[str] | tuple[str, ...] = (),
    batch_size: int = 1,
    num_workers: int | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    overwrite: bool = False,
    tta: int | None = None,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (a file or a run folder) on ``split``; returns what ``metrics.json`` holds.

    Args:
        knn: run the kNN post-processing (None: the config's ``eval.knn``). A point model (FRNet) never runs it:
            ``True`` is ignored with a note (``result["notes"]``).
        net: a net of the checkpoint (``a``, ``b``, ``student``, ``teacher``) or ``ensemble``; None: net a for
            sup_only and CPS runs, the teacher for Mean Teacher and LaserMix runs.
        out: results folder (default ``<run>/eval_<split>_<net>``); receives ``metrics.json``, when asked
            predictions in the official layout (kNN labels with ``knn``) and ``submission.zip``, and last
            ``manifest.json``.
        overrides: ``section.key=value`` changes to the checkpoint's config (e.g. ``data.root=...``).
        num_workers: DataLoader workers (None: the config's ``data.num_workers``).
        device: default CUDA when available, else CPU.
        overwrite: replace an ``out`` folder that holds anything. The default folder is the tool's own: a complete
            new evaluation replaces it without asking.
        tta: test-time augmentation views (None: the config's ``eval.tta``; 0: none), drawn from
            ``eval.tta_seed`` (:mod:`rangecps.eval.tta`); ``metrics.json`` records them (``tta``).

    The results folder is all-or-nothing: everything is written into a hidden sibling staging folder and moved
    into place when complete (see :class:`rangecps.eval.outputs.StagedFolder`), under ``out``'s lock, so an
    evaluation that fails or is killed leaves the earlier folder as it was. When predictions or the archive
    cannot be written (disk full, ...), the evaluation still completes and ``metrics.json`` is written without
    them; when ``metrics.json`` itself cannot be written it goes to a temporary folder. Either way
    :class:`ResultsNotWritten` is raised, carrying the result.

    A split without labels (test) gives no metrics, only predictions: it needs ``write_predictions`` or
    ``submission``; ``"levels"`` is empty then and no ``metrics.json`` is written.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    run = load_run(checkpoint, overrides, device)
    cfg = run.cfg
    held = net_names(run.state)
    net = choose_net(net, held, cfg.train.method, run.path)
    nets = run.nets if net == "ensemble" else [run.nets[held.index(net)]]
    point_model = is_point_model(cfg.model.name)
    notes = []
    if point_model and knn:
        notes.append(f"--knn ignored: {cfg.model.name} is a point model and predicts every point itself")
    knn = False if point_model else (cfg.eval.knn if knn is None else knn)
    write = write_predictions or submission
    views = tta_views(cfg.eval.tta if tta is None else tta, cfg.eval.tta_seed)
    data, dataset, has_labels = _open_split(run, split, write, point_model, views)
    default_dir = run.path.parent / f"eval_{split}_{net}"
    out_dir = Path(out) if out is not None else default_dir
    own = out_dir.resolve() == default_dir.resolve()  # the tool's own folder: replaced without asking
    keep = [("the checkpoint", run.path), ("the dataset root", data.root), ("the current folder", Path.cwd())]
    earlier = check_out_folder(
        out_dir, overwrite or own, "choose another --out or pass --overwrite to replace them", keep
    )
    if write:  # refuses a label map without a submission layout before anything runs
        make_writer(dataset.file_format, out_dir, data.label_map, data.root, split)

    k, names = data.num_classes, list(data.label_map.names)
    convention = official_convention(cfg.data.dataset)
    if point_model:
        cms = {"point": ConfusionMatrix(k)}
    else:
        cms = {level: ConfusionMatrix(k) for level in LEVELS if knn or level != "point_knn"}
    knn_params = knn_settings(cfg.eval)
    prec = precision(cfg.train.amp, cfg.train.channels_last, device)
    if point_model:  # FRNet trains without channels_last (its convolutions see maps it builds itself)
        prec = replace(prec, channels_last=False)
    amp, channels_last = prec.amp, prec.channels_last
    for n in nets:
        n.to(memory_format=torch.channels_last if channels_last else torch.preserve_format)
    workers = cfg.data.num_workers if num_workers is None else num_workers
    loader = torch.utils.data.DataLoader(
        dataset, batch_size, num_workers=workers, collate_fn=collate, pin_memory=device.type == "cuda"
    )
    problems: list[str] = []
    with StagedFolder(out_dir, "evaluation") as stage:

        def shown(path: Path) -> Path:  # a staging path as it will be named once in place
            return out_dir / path.relative_to(stage.path)

        writer = (
            make_writer(dataset.file_format, stage.path, data.label_map, data.root, split) if write else None
        )
        no_pixel = non_finite = interpolated = 0
        start = time.perf_counter()
        forward = net_forward(nets, amp, channels_last)
        forward_points = point_net_forward(nets, amp)
        for batch in tqdm(loader, desc=f"eval {split} ({net})", disable=not progress, dynamic_ncols=True):
            if views:
                pred, mask, scans = segment_views(
                    forward_points if point_model else forward, batch, device, k, knn_params if knn else None,
                    point_model, scores_are_probs=len(nets) > 1,
                )  # fmt: skip
                if has_labels and not point_model:
                    cms["range_pixel"].update(batch["label"].to(device)[mask], pred[mask])
                if "point_extra" in batch:
                    interpolated += int(batch["point_extra"].sum())
            elif point_model:
                _, scans = segment_point_batch(forward_points, batch, device, k)
                if "point_extra" in batch:  # fed to the network, not scored (their predictions are dropped)
                    interpolated += int(batch["point_extra"].sum())
            else:
                pred, mask, scans = segment_batch(forward, batch, device, k, knn_params if knn else None)
                if has_labels:
                    cms["range_pixel"].update(batch["label"].to(device)[mask], pred[mask])
            if "non_finite" in batch:
                non_finite += int(batch["non_finite"].sum())
            for b, scan in enumerate(scans):
                n = int(batch["num_points"][b])
                no_pixel += scan.without_pixel
                if has_labels:
                    gt = batch["point_label"][b, :n].to(device)
                    cms["point"].update(gt, scan.plain)
                    if scan.voted is not None:
                        cms["point_knn"].update(gt, scan.voted)
                if writer is not None:
                    record = dataset.records[int(batch["index"][b])]
                    try:
                        writer.write(record, scan.labels.cpu().numpy(), n)
                    except (OSError, ValueError) as e:  # no half tree: drop it, keep evaluating
                        problems.append(f"{shown(writer.path(record))}: {_reason(e)}; no predictions written")
                        writer = None
                        for tree in PREDICTION_TREES:
                            shutil.rmtree(stage.path / tree, ignore_errors=True)
        seconds = time.perf_counter() - start

        result: dict[str, Any] = {
            "checkpoint": str(run.path),
            "step": run.step,
            "revision": run.revision,
            "eval_revision": code_revision(),
            "method": cfg.train.method,
            "model": cfg.model.name,
            "dataset": cfg.data.dataset,
            "root": str(data.root),
            "split": split,
            "scans": len(dataset),
            "net": net,
            "net_names": list(held),
            "nets_in_checkpoint": len(run.nets),
            "point_model": point_model,
            "knn": None if point_model else {"enabled": knn, **knn_params},  # null: no kNN, a point model
            "tta": {"views": [v.to_dict() for v in views], "seed": cfg.eval.tta_seed} if views else None,
            "range_interpolation": dataset.interpolation is not None,
            "interpolated_points": interpolated,
            "image": {"height": data.geometry.height, "width": data.geometry.width},
            "class_names": names,
            "headline": ("point_knn" if knn else "point") if has_labels else None,
            "points_without_pixel": no_pixel,
            "non_finite_points": non_finite,
            "miou_convention": convention,
            "levels": {
                lv: level_dict(cm, names, POINT_MODEL_LEVEL if point_model else LEVELS[lv], convention)
                for lv, cm in cms.items()
            }
            if has_labels
            else {},
            "notes": notes,
            "device": str(device),
            "precision": prec.record(),
            "seconds": round(seconds, 3),
            "seconds_per_scan": round(seconds / len(dataset), 4),
            "out_dir": str(out_dir),
        }
        if writer is not None and submission:
            description = {
                "method name": f"rangecps {cfg.model.name} {cfg.train.method}",
                "method description": f"range-view {cfg.model.name} trained with {cfg.train.method} on "
                f"{cfg.data.labels} labels; net {net}; kNN post-processing "
                + ("none (point model)" if point_model else "on" if knn else "off")
                + ("; RangeInterpolation at test time" if dataset.interpolation is not None else "")
                + (f"; test-time augmentation, {len(views)} views" if views else ""),
            }
            try:
                result["submission"] = [str(shown(p)) for p in writer.finish(description)]
            except (OSError, ValueError) as e:
                problems.append(f"{out_dir / 'submission.zip'}: {_reason(e)}; no submission written")
        result["predictions"] = writer is not None
        complete = True  # metrics.json written, when there are metrics
        if has_labels:
            try:
                with atomic_write(stage.path / "metrics.json", "w") as f:
                    json.dump(result, f, indent=1)
            except OSError as e:
                problems.append(f"{out_dir / 'metrics.json'}: {_reason(e)}")
                complete = False
        # A folder with nothing new in it (no metrics, no predictions) does not replace the earlier one.
        if complete and (has_labels or writer is not None):
            info = {key: result[key] for key in ("checkpoint", "step", "revision", "eval_revision", "net")}
            info.update(
                tool="rangecps-eval", split=split, scans=len(dataset), knn=None if point_model else knn
            )
            try:
                write_manifest(stage.path, {**info, "predictions": writer is not None})
                stage.publish()
            except OSError as e:
                problems.append(f"{out_dir}: {_reason(e)}; the folder was left as it was")
                complete = False
        result["replaced"] = earlier and stage.published
    if not complete and has_labels:
        elsewhere = _save_elsewhere(result)
        problems.append(
            f"metrics.json written to {elsewhere} instead"
            if elsewhere
            else "metrics.json could not be written anywhere: the report above holds the metrics"
        )
    elif problems and has_labels:
        problems.append(f"metrics.json written to {out_dir}")
    if problems:
        raise ResultsNotWritten("; ".join(problems), result)
    return result
