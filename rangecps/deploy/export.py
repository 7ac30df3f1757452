"""``rangecps-export``: a trained network as a verified ONNX model, with the JSON sidecar that C++ needs.

    rangecps-export runs/cps_fidnet-10pct --onnx fidnet.onnx            # the net rangecps-eval scores, logits
    rangecps-export best.pt --onnx ens.onnx --net ensemble --labels     # both nets' mean softmax -> argmax

The model takes ``(B, 6, H, W)`` float32 normalised range images (dynamic B) and returns logits ``(B, K, H, W)``
(one net), mean probabilities (ensemble) or, with ``--labels``, ``(B, H, W)`` int64 classes. Before the model is
moved into place it is run through onnxruntime on real scans (the run's validation scans, or ``--check-inputs``)
against PyTorch in float32: the command prints the largest absolute difference and the pixel label agreement,
and fails above 1e-3 or below 99.99 %. The sidecar ``OUT.json`` holds the pre- and post-processing: geometry,
channel order and normalisation, class names and colours, train id -> dataset id, kNN parameters, and the check.

A point model (FRNet) exports as :mod:`rangecps.deploy.onnx_points` describes: inputs ``points`` (N, 4) float32 and
``coors`` (N, 3) int64 of one scan's points with a pixel (dynamic N; batch size 1 and the frustum grid fixed in
the graph, as the sidecar's ``input`` says), output ``(N, K)`` logits, an ensemble's probabilities or, with
``--labels``, ``(N,)`` classes. The check runs each check scan through onnxruntime and the float32 PyTorch model
(``FRNet.forward`` itself) and compares per point; the sidecar has ``"point_model": true`` and ``"knn": null``.
A point model trained with RangeInterpolation (``"range_interpolation": true``; the image in
``pipeline.interpolation``) takes each scan densified: the graph is fed the scan's points with a pixel followed by
the interpolated ones, and the outputs of the interpolated points are dropped, in the check as in deployment.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rangecps.data.index import read_scan
from rangecps.data.pipeline import ScanPipeline
from rangecps.data.point_batch import original_rows
from rangecps.data.sample import CHANNELS, collate
from rangecps.eval.predict import knn_settings
from rangecps.eval.predict_points import point_net_forward
from rangecps.eval.runs import LoadedRun
from rangecps.models import is_point_model
from rangecps.models.frnet import POINT_CHANNELS

NEAR_TIE = 2e-3  # best-minus-second score below this: a tie at float32 rounding (2x the allowed difference)


def check_samples(
    run: LoadedRun, pipeline: ScanPipeline, inputs: list[str], count: int, point_inputs: bool = False
) -> list[dict]:
    """Samples to verify the export on: ``count`` scans of ``inputs`` (files, folders, bags), else of the
    run's validation split (its dataset root must be readable); with their points for a point model."""
    if inputs:
        from rangecps.deploy.sources import iter_scans

        samples = []
        for scan in iter_scans(inputs):
            samples.append(pipeline.sample(scan.points, scan.ring, len(samples), scan.name, point_inputs))
            if len(samples) == count:
                break
        return samples
    from rangecps.data.build import build_data

    root = Path(run.cfg.data.root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset root of {run.path} not found; pass --check-inputs SCANS")
    data = build_data(run.cfg, progress=False)
    records = data.index.split("val")[:count] or data.index.split("train")[:count]
    samples = []
    for i, record in enumerate(records):
        scan = read_scan(data.root, record, data.dataset_cls.file_format, None)
        samples.append(pipeline.sample(scan.points, scan.ring, i, record.scan_id, point_inputs))
    return samples


def check_point_export(
    nets: list[torch.nn.Module], onnx_path: Path, samples: list[dict], kind: str, grid: tuple[int, int]
) -> dict[str, Any]:
    """Compare the exported point graph (onnxruntime, CPU) with the float32 PyTorch nets' own forward, scan by
    scan (the graph takes one), over every point with a pixel: :func:`~rangecps.deploy.onnx.compare_outputs`
    figures, the label agreement over the decisive points (``near_ties`` left out, as for image models) and
    ``agreement_all_points``. Samples with interpolated points feed them to both and compare the scans' own
    points only, as deployment drops the others (``interpolated_points`` counts what was fed and dropped)."""
    from rangecps.deploy.onnx import OnnxRunner, compare_outputs

    # One thread: onnxruntime's multi-threaded scatters sum in a varying order, which on one model and the same
    # scans flipped a near-tie in a frustum's max (max diff 4e-3 > 1e-3) in about 1 check of 14 (2026-12-08).
    runner = OnnxRunner(onnx_path, providers=["CPUExecutionProvider"], intra_op_threads=1)
    forward = point_net_forward([n.float().eval() for n in nets], None)  # FRNet.forward, input check included
    reference, exported, scores = [], [], []
    interpolated = 0
    for sample in samples:
        batch = collate([sample])
        points, coors = batch["points"], batch["coors"]
        own = original_rows(batch)
        interpolated += int((~own).sum())
        if not own.any():
            continue  # nothing of this scan has a pixel: nothing to compare
        s = forward(points, coors, 1, grid)[own]
        scores.append(s)
        reference.append((s[:, 1:].argmax(1) + 1 if kind == "labels" else s).numpy())
        exported.append(np.asarray(runner(points.numpy(), coors.numpy()))[own.numpy()])
    if not scores:
        raise ValueError("no check scan has a point with a pixel; pass --check-inputs SCANS")
    ref, out = np.concatenate(reference), np.concatenate(exported)
    stats = compare_outputs(ref, out, kind, unit="points")
    top2 = torch.cat(scores)[:, 1:].topk(2, dim=1).values
    decisive = ((top2[:, 0] - top2[:, 1]) > NEAR_TIE).numpy()
    ref_labels = ref if kind == "labels" else ref[:, 1:].argmax(1) + 1
    out_labels = out if kind == "labels" else out[:, 1:].argmax(1) + 1
    stats["agreement_all_points"] = stats["agreement"]
    stats["near_ties"] = int((~decisive).sum())
    stats["agreement"] = float((ref_labels == out_labels)[decisive].mean()) if decisive.any() else 1.0
    if interpolated:
        stats["interpolated_points"] = interpolated
    return stats


def export(
    checkpoint: str | Path,
    out: str | Path,
    net: str | None = None,
    labels: bool = False,
    check_inputs: list[str] | None = None,
    check_scans: int = 4,
) -> dict[str, Any]:
    """Export, verify and write the model and its sidecar; returns the sidecar's content."""
    from rangecps.deploy.onnx import (
        ExportedNet,
        OnnxRunner,
        check_agreement,
        compare_outputs,
        export_onnx,
        write_sidecar,
    )
    from rangecps.deploy.segmenter import load_nets

    out = Path(out)
    if out.suffix != ".onnx":
        raise ValueError(f"{out}: the model file must end in .onnx")
    run, chosen, nets, pipeline = load_nets(checkpoint, torch.device("cpu"), net)
    kind = "labels" if labels else ("probs" if len(nets) > 1 else "logits")
    g = pipeline.geometry
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.stem}.partial-{os.getpid()}.onnx")
    if is_point_model(run.cfg.model.name):
        try:
            meta = _export_points(run, chosen, nets, pipeline, kind, staging, check_inputs, check_scans)
            os.replace(staging, out)
            write_sidecar(out, meta)
        finally:
            staging.unlink(missing_ok=True)
        return meta
    try:
        info = export_onnx(nets, staging, g.height, g.width, len(CHANNELS), kind)
        samples = check_samples(run, pipeline, check_inputs or [], check_scans)
        x = collate(samples)["input"]
        nets = [n.float().eval() for n in nets]
        with torch.no_grad():
            reference = ExportedNet(nets, kind)(x).numpy()
            scores = ExportedNet(nets, "logits")(x)  # logits, or the ensemble's probabilities
        runner = OnnxRunner(staging, providers=["CPUExecutionProvider"])
        onnx_out = np.asarray(runner(x.numpy()))
        stats = compare_outputs(reference, onnx_out, kind)
        # A pixel whose two best classes lie within float32 rounding of each other may go either way in any
        # float32 graph; the label check counts the decisive pixels, and says how many ties it left out.
        top2 = scores[:, 1:].topk(2, dim=1).values
        decisive = ((top2[:, 0] - top2[:, 1]) > NEAR_TIE).numpy()
        ref_labels = reference if kind == "labels" else reference[:, 1:].argmax(1) + 1
        onnx_labels = onnx_out if kind == "labels" else onnx_out[:, 1:].argmax(1) + 1
        stats["agreement_all_pixels"] = stats["agreement"]
        stats["near_ties"] = int((~decisive).sum())
        stats["agreement"] = float((ref_labels == onnx_labels)[decisive].mean()) if decisive.any() else 1.0
        stats["scans"] = [s["scan_id"] for s in samples]
        check_agreement(stats)
        cfg = run.cfg
        meta = {
            "model": _model_block(run),
            "point_model": False,
            "net": chosen,
            "output": kind,
            "input": {"name": info["input_name"], "shape": info["input_shape"], "channels": list(CHANNELS)},
            "output_tensor": {"name": info["output_name"], "shape": info["output_shape"]},
            "pipeline": pipeline.to_dict(),
            "preprocessing": (
                "project points onto geometry (pitch rows, or rows = height - 1 - ring when rings); channel c of "
                "an occupied pixel = (value - encoding.offset[c]) / encoding.scale[c] for range, x, y, z, "
                "intensity (range = horizontal range when encoding.horizontal_range), encoding.empty[c] where "
                "empty; channel 5 = 1 where occupied else 0; the nearest point wins each pixel"
            ),
            "postprocessing": (
                "class = argmax over classes 1..K-1 (+1); each point takes its pixel's class, or the kNN vote "
                "over its pixel's search window when knn.enabled; points without a pixel take the scan's most "
                "frequent class; dataset id = pipeline.train_to_raw[class]"
            ),
            "knn": {"enabled": cfg.eval.knn, **knn_settings(cfg.eval)},
            "export": {k: v for k, v in info.items() if k != "path"},
            "check": stats,
        }
        os.replace(staging, out)
        write_sidecar(out, meta)
    finally:
        staging.unlink(missing_ok=True)
    return meta


def _model_block(run: LoadedRun) -> dict[str, Any]:
    cfg = run.cfg
    return {
        "name": cfg.model.name,
        "width": cfg.model.width,
        "method": cfg.train.method,
        "checkpoint": str(run.path),
        "step": run.step,
        "revision": run.revision,
    }


def _export_points(
    run: LoadedRun,
    chosen: str,
    nets: list[torch.nn.Module],
    pipeline: ScanPipeline,
    kind: str,
    staging: Path,
    check_inputs: list[str] | None,
    check_scans: int,
) -> dict[str, Any]:
    """Export a point model's nets to ``staging``, check it (:func:`check_point_export`) and return the
    sidecar's content."""
    from rangecps.deploy.onnx import check_agreement
    from rangecps.deploy.onnx_points import export_point_onnx

    g = pipeline.geometry
    grid = (g.height, g.width)
    info = export_point_onnx(nets, staging, grid, kind)
    samples = check_samples(run, pipeline, check_inputs or [], check_scans, point_inputs=True)
    stats = check_point_export(nets, staging, samples, kind, grid)
    stats["scans"] = [s["scan_id"] for s in samples]
    check_agreement(stats)
    columns = list(POINT_CHANNELS)
    interp = pipeline.interpolation
    densify = (
        ""
        if interp is None
        else f"; then RangeInterpolation (pipeline.interpolation: a {interp.height}x{interp.width} spherical image, "
        f"fov {interp.fov_up} / {interp.fov_down} deg, each pixel holding its nearest point; every empty pixel at "
        "columns 1..W-2 whose left and right neighbours both hold a point gets their mean in x, y, z and "
        "intensity, and the left neighbour's ring), projected as above: those with a pixel are appended after "
        "the scan's own points"
    )
    return {
        "model": _model_block(run),
        "point_model": True,
        "range_interpolation": interp is not None,
        "net": chosen,
        "output": kind,
        "input": {
            "names": info["input_names"],
            "points": {"shape": info["input_shapes"][0], "dtype": "float32", "columns": columns},
            "coors": {"shape": info["input_shapes"][1], "dtype": "int64", "columns": ["batch", "row", "col"]},
            "batch_size": info["batch_size"],
            "grid": info["grid"],
            "fixed": "batch size 1 (the coors batch column must be 0) and the frustum grid (H, W) = the range "
            "image's are fixed in the graph; N, the scan's points with a pixel, is dynamic",
        },
        "output_tensor": {"name": info["output_name"], "shape": info["output_shape"]},
        "pipeline": pipeline.to_dict(),
        "preprocessing": (
            "project the points onto geometry exactly as for image models (pitch rows, or rows = height - 1 - "
            "ring when rings) to get each point's row and col; keep the points with a pixel (finite, nonzero "
            "range) in file order; points = their x, y, z, intensity as read (no normalisation, no encoding: "
            "the network normalises them itself); coors = (0, row, col)" + densify
        ),
        "postprocessing": (
            ("drop the outputs of the interpolated points; " if interp is not None else "")
            + "class = argmax over classes 1..K-1 (+1) of each point's output; points without a pixel take the "
            "class the scan's predicted points take most often (class 1 when none has a pixel); no kNN; "
            "dataset id = pipeline.train_to_raw[class]"
        ),
        "knn": None,
        "export": {k: v for k, v in info.items() if k != "path"},
        "check": stats,
    }


def export_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rangecps-export", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path, help="run folder or checkpoint (.pt)")
    p.add_argument(
        "--onnx", type=Path, required=True, help="the model file to write (OUT.onnx, and OUT.json)"
    )
    p.add_argument(
        "--net", default=None, help="a / b / student / teacher / ensemble (default: as rangecps-eval)"
    )
    p.add_argument("--labels", action="store_true", help="output argmax classes instead of logits")
    p.add_argument(
        "--check-inputs", nargs="+", default=None, help="scans to verify on (default: the run's val)"
    )
    p.add_argument("--check-scans", type=int, default=4, help="how many scans to verify on")
    args = p.parse_args(argv)
    try:
        meta = export(args.checkpoint, args.onnx, args.net, args.labels, args.check_inputs, args.check_scans)
    except ImportError as e:
        print(f"error: {e}; install the export extra: pip install 'rangecps[export]'", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    c = meta["check"]
    unit = c.get("unit", "pixels")
    diff = f"max abs {meta['output']} difference {c['max_abs_diff']:.2e}, " if "max_abs_diff" in c else ""
    print(
        f"exported net {meta['net']} ({meta['output']}) to {args.onnx}: onnxruntime vs PyTorch on "
        f"{len(c['scans'])} scans: {diff}label agreement {100 * c['agreement']:.4f} % of {c[unit]:,} {unit} "
        f"({c['near_ties']} near-ties left out; {100 * c[f'agreement_all_{unit}']:.4f} % of all)"
    )
    if meta.get("point_model"):
        print(f"point model: batch size 1 and the {' x '.join(map(str, meta['input']['grid']))} grid are fixed "
              "in the graph; no kNN")  # fmt: skip
        if meta.get("range_interpolation"):
            print("RangeInterpolation: feed each scan's interpolated points after its own, drop their outputs "
                  "(see the sidecar's preprocessing)")  # fmt: skip
    print(f"wrote {args.onnx} and {args.onnx.with_suffix('.json')}")
    return 0
