"""``rangecps-infer``: label every scan of files, folders or ROS bags with a trained model; no labels needed.

    rangecps-infer runs/cps_fidnet-10pct scans/ --out preds/          # a run folder, a .pt or an exported .onnx
    rangecps-infer best.pt drive.bag --topic /velodyne_points --sensor vlp16 --out preds/ --render

Writes into ``--out``: ``predictions/<scan>.label`` (SemanticKITTI uint32, raw id in the low 16 bits) for models
trained on KITTI-format data, ``predictions/<scan>.bin`` (nuScenes lidarseg uint8) for nuScenes ones, or
``.npy`` (``--format npy``: dataset ids, or train ids with ``--train-ids``); ``renders/<scan>.png`` with
``--render`` (the range image's channels and the prediction); and ``summary.json`` (scans, points, non-finite
points, class shares, milliseconds per scan). The folder is built beside ``--out`` and renamed into place when
complete (:class:`rangecps.eval.outputs.StagedFolder`), so a failed or interrupted run leaves no half-written folder
and an earlier one as it was; an existing non-empty ``--out`` is refused unless ``--overwrite``, and a second
``rangecps-infer`` writing to the same ``--out`` at once is refused (the folder's lock). A full disk or a folder that
cannot be written is one line naming the file.

A point model (an FRNet run, or its ONNX export) labels every point itself: no kNN runs (``--no-knn`` changes
nothing), and ``summary.json`` records ``"point_model": true`` and ``"knn": null``.

``--tta N`` labels each scan from N test-time views (:mod:`rangecps.eval.tta`; default: the run's ``eval.tta``,
none for an ``.onnx``), N network passes a scan; ``summary.json`` records the views (``tta_views``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from rangecps.atomic import atomic_write
from rangecps.deploy.sources import InputScan, iter_scans
from rangecps.eval.outputs import StagedFolder, check_out_folder
from rangecps.folders import FolderInUse
from rangecps.io import write_kitti_labels, write_lidarseg

EXTENSIONS = {"kitti": ".label", "nuscenes": ".bin", "npy": ".npy"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rangecps-infer",
        description="Label the scans of files, folders (.bin, .pcd.bin, .pcd, .ply, .npy) or ROS 1/2 bags.",
    )
    p.add_argument("model", type=Path, help="run folder, checkpoint (.pt) or exported model (.onnx)")
    p.add_argument("inputs", nargs="+", type=Path, help="scan files, folders of them, or bags")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="results folder (must not exist or be empty, unless --overwrite)",
    )
    p.add_argument("--topic", default=None, help="PointCloud2 topic of the bags (default: their only one)")
    p.add_argument(
        "--format",
        choices=("auto", "label", "bin", "npy"),
        default="auto",
        help="prediction files: auto = the model's dataset layout (.label KITTI, .bin nuScenes)",
    )
    p.add_argument("--train-ids", action="store_true", help="with --format npy: train ids, not dataset ids")
    p.add_argument(
        "--net", default=None, help="a / b / student / teacher / ensemble (default: as rangecps-eval)"
    )
    p.add_argument("--sensor", default=None, help="preset (hdl64e, hdl32e, vlp16, vlp32c, os1-64, os1-128) "
                   "or H,W,UP,DOWN[,rings]; default: the training geometry")  # fmt: skip
    p.add_argument("--no-knn", action="store_true", help="each point takes its pixel's class")
    p.add_argument(
        "--tta", type=int, default=None, metavar="N",
        help="test-time augmentation: average N views of each scan (default: the run's eval.tta, none for "
        ".onnx; 0: none)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=1, help="scans per network call")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when available)")
    p.add_argument("--render", action="store_true", help="also write a PNG of each scan's range image")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _batches(scans: Iterator[InputScan], size: int) -> Iterator[list[InputScan]]:
    batch: list[InputScan] = []
    for scan in scans:
        batch.append(scan)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def write_prediction(folder: Path, name: str, labels: np.ndarray, fmt: str) -> Path:
    """One scan's labels in ``fmt`` (kitti / nuscenes / npy) as ``folder/name.<ext>``, atomically."""
    path = folder / f"{name}{EXTENSIONS[fmt]}"
    if fmt == "kitti":
        write_kitti_labels(path, labels)
    elif fmt == "nuscenes":
        write_lidarseg(path, labels)
    else:
        with atomic_write(path, "wb") as f:
            np.save(f, labels)
    return path


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Label every input scan into a staging folder, then move it to ``args.out``; returns the summary."""
    from rangecps.deploy.segmenter import GeometryWarning, Segmenter

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.tta is not None and args.tta < 0:
        raise ValueError(f"--tta must be >= 0 (views; 0 for none), got {args.tta}")
    out: Path = args.out
    keep = [("the model", args.model), ("the current folder", Path.cwd())]
    keep += [("the input", p) for p in args.inputs]
    check_out_folder(out, args.overwrite, "choose another --out or pass --overwrite to replace them", keep)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GeometryWarning)
        knn = False if args.no_knn else None
        if args.model.suffix == ".onnx":
            if args.net is not None:
                raise ValueError("--net: an exported model holds the net it was exported with")
            seg = Segmenter.from_onnx(args.model, args.device, args.sensor, knn, tta=args.tta or 0)
        else:
            seg = Segmenter.from_checkpoint(args.model, args.device, args.net, args.sensor, knn, tta=args.tta)
    notes = [str(w.message) for w in caught if issubclass(w.category, GeometryWarning)]
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    fmt = {"auto": seg.pipeline.file_format, "label": "kitti", "bin": "nuscenes", "npy": "npy"}[args.format]
    if args.train_ids and fmt != "npy":
        raise ValueError("--train-ids needs --format npy: .label and .bin files hold dataset ids")
    label_map = None
    if args.render:
        from rangecps.labels import load_label_map

        label_map = load_label_map(seg.pipeline.label_map)

    counts = np.zeros(seg.num_classes, np.int64)
    seconds, sources, names = 0.0, [], set()
    with StagedFolder(out, "rangecps-infer run") as stage:
        staging = stage.path
        (staging / "predictions").mkdir()
        bar = tqdm(desc="infer", unit="scan", disable=args.no_progress, dynamic_ncols=True)
        for batch in _batches(iter_scans([str(p) for p in args.inputs], args.topic), args.batch_size):
            start = time.perf_counter()
            preds = seg.predict([s.points for s in batch], [s.ring for s in batch])
            seconds += time.perf_counter() - start
            for scan, train_ids in zip(batch, preds, strict=True):
                if scan.name in names:
                    raise ValueError(
                        f"{scan.source}: a second scan named {scan.name!r}; give the inputs apart"
                    )
                names.add(scan.name)
                counts += np.bincount(train_ids, minlength=seg.num_classes)
                ids = train_ids if args.train_ids else seg.pipeline.to_raw(train_ids)
                with _naming(out / "predictions" / f"{scan.name}{EXTENSIONS[fmt]}"):
                    write_prediction(staging / "predictions", scan.name, ids, fmt)
                if label_map is not None:
                    from rangecps.vis.images import range_strip, write_png

                    image = range_strip(scan.points, scan.ring, seg.pipeline.geometry, pred=train_ids,
                                        label_map=label_map)  # fmt: skip
                    with _naming(out / "renders" / f"{scan.name}.png"):
                        (staging / "renders").mkdir(exist_ok=True)
                        write_png(staging / "renders" / f"{scan.name}.png", image)
                sources.append({"name": scan.name, "source": scan.source, "points": len(train_ids)})
            bar.update(len(batch))
        bar.close()
        if not sources:
            raise ValueError(f"{', '.join(map(str, args.inputs))}: no scans found")
        c = seg.counts
        summary = {
            "model": str(args.model),
            "net": seg.net,
            "format": fmt,
            "ids": "train" if args.train_ids else "dataset",
            "geometry": seg.pipeline.to_dict()["geometry"],
            "geometry_warnings": notes,
            "point_model": seg.point_model,
            "knn": None if seg.point_model else seg.knn is not None,
            "tta_views": [v.to_dict() for v in seg.views],
            "scans": c.scans,
            "points": c.points,
            "non_finite_points": c.non_finite,
            "points_without_pixel": c.without_pixel,
            "class_shares": {
                n: float(k / max(1, counts.sum())) for n, k in zip(seg.class_names, counts, strict=True)
            },
            "ms_per_scan": round(1000 * seconds / c.scans, 2),
            "device": str(seg.device),
            "scans_written": sources,
        }
        with _naming(out / "summary.json"), atomic_write(staging / "summary.json", "w") as f:
            json.dump(summary, f, indent=1)
        with _naming(out):
            stage.publish()
    return summary


@contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Re-raise an ``OSError`` of the block (disk full, ...) as one naming ``path``, the file as it will be named
    in ``--out`` (not the staging folder's), adding that nothing was written."""
    try:
        yield
    except OSError as e:
        raise OSError(e.errno, f"{e.strerror or e}; nothing written to --out", str(path)) from None


def infer_main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        summary = run(args)
    except (ValueError, ImportError, FolderInUse) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a missing input, an existing --out, a full disk, a read-only folder
        print(f"error: {f'{e.filename}: {e.strerror}' if e.filename and e.strerror else e}", file=sys.stderr)
        return 2
    top = sorted(summary["class_shares"].items(), key=lambda kv: -kv[1])[:5]
    print(
        f"labelled {summary['scans']} scans, {summary['points']:,} points ({summary['non_finite_points']} "
        f"non-finite) in {summary['ms_per_scan']:.1f} ms per scan on {summary['device']}; most frequent: "
        + ", ".join(f"{n} {100 * s:.1f}%" for n, s in top)
    )
    print(f"wrote {args.out / 'predictions'} and {args.out / 'summary.json'}")
    return 0
