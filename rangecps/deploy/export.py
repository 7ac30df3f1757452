"""``rangecps-export``: a trained network as a verified ONNX model, with the JSON sidecar that C++ needs.

    rangecps-export runs/cps_fidnet-10pct --onnx fidnet.onnx            # the net rangecps-eval scores, logits
    rangecps-export best.pt --onnx ens.onnx --net ensemble --labels     # both nets' mean softmax -> argmax

The model takes ``(B, 6, H, W)`` float32 normalised range images (dynamic B) and returns logits ``(B, K, H, W)``
(one net), mean probabilities (ensemble) or, with ``--labels``, ``(B, H, W)`` int64 classes. Before the model is
moved into place it is run through onnxruntime on real scans (the run's validation scans, or ``--check-inputs``)
against PyTorch in float32: the command prints the largest absolute difference and the pixel label agreement,
and fails above 1e-3 or below 99.99 %. The sidecar ``OUT.json`` holds the pre- and post-processing: geometry,
channel order and normalisation, class names and colours, train id -> dataset id, kNN parameters, and the check.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rangecps.data.dataset import CHANNELS, collate
from rangecps.data.index import read_scan
from rangecps.data.pipeline import ScanPipeline
from rangecps.eval.evaluate import LoadedRun
from rangecps.eval.predict import knn_settings

NEAR_TIE = 2e-3  # best-minus-second score below this: a tie at float32 rounding (2x the allowed difference)


def check_samples(run: LoadedRun, pipeline: ScanPipeline, inputs: list[str], count: int) -> list[dict]:
    """Samples to verify the export on: ``count`` scans of ``inputs`` (files, folders, bags), else of the
    run's validation split (its dataset root must be readable)."""
    if inputs:
        from rangecps.deploy.sources import iter_scans

        samples = []
        for scan in iter_scans(inputs):
            samples.append(pipeline.sample(scan.points, scan.ring, len(samples), scan.name))
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
        samples.append(pipeline.sample(scan.points, scan.ring, i, record.scan_id))
    return samples


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
            "model": {
                "name": cfg.model.name,
                "width": cfg.model.width,
                "method": cfg.train.method,
                "checkpoint": str(run.path),
                "step": run.step,
                "revision": run.revision,
            },
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
    diff = f"max abs {meta['output']} difference {c['max_abs_diff']:.2e}, " if "max_abs_diff" in c else ""
    print(
        f"exported net {meta['net']} ({meta['output']}) to {args.onnx}: onnxruntime vs PyTorch on "
        f"{len(c['scans'])} scans: {diff}label agreement {100 * c['agreement']:.4f} % of {c['pixels']:,} pixels "
        f"({c['near_ties']} near-ties left out; {100 * c['agreement_all_pixels']:.4f} % of all)"
    )
    print(f"wrote {args.onnx} and {args.onnx.with_suffix('.json')}")
    return 0
