"""``rangecps-vis``: look at scans, labels and predictions in 3D (Open3D), as range-image strips, and plot runs.

Commands::

    rangecps-vis scan PATH [--labels FILE] [--pred FILE] [--color MODE] [--save OUT.png] [--strip OUT.png]
    rangecps-vis dataset ROOT [--split val] [--dataset NAME] [--run RUN_DIR | --pred-dir DIR] [--save OUT.png]
    rangecps-vis run RUN_DIR [--out DIR]

``scan`` reads one file (formats and prediction ids: :mod:`rangecps.vis.scans`). ``dataset`` steps through a split
in scan order; with ``--run RUN_DIR`` it shows the predictions of the newest ``RUN_DIR/eval_<split>_*`` folder that
``rangecps-eval RUN_DIR --split <split> --write-predictions`` filled (``--pred-dir`` names such a folder); a folder
without the complete ``manifest.json`` a finished evaluation writes is refused. Scans without a prediction file are
shown without one. ``run`` writes ``curves.png`` and ``confusion.png``.

With ``--save``, or without a display (neither ``DISPLAY`` nor ``WAYLAND_DISPLAY`` set), the view is rendered off
screen into a PNG: ``--save``, else ``<scan>_<mode>.png`` in the current folder; ``dataset`` renders scan
``--start``. Otherwise a window opens (keys: :mod:`rangecps.vis.viewer`). ``scan --strip OUT.png`` without
``--save`` writes only the range-image strip (layout: :mod:`rangecps.vis.images`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from rangecps.vis.images import range_strip, strip_bands, write_png
from rangecps.vis.runplots import plot_run
from rangecps.vis.scans import COLOR_MODES, GEOMETRY, ViewScan, load_scan, open_dataset
from rangecps.vis.viewer import BACKGROUNDS, RenderSettings, Stepper, has_display, render_scan, show


def _save_png(path: Path, image: np.ndarray) -> None:
    """:func:`write_png`; an ``OSError`` (read-only folder, full disk) names ``path``, not a temporary file."""
    try:
        write_png(path, image)
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None


def _render_to_file(scan: ViewScan, mode: str, settings: RenderSettings, out: Path | None) -> Path:
    out = out or Path(f"{scan.name.replace('/', '_').removesuffix('.bin')}_{mode}.png")
    _save_png(out, render_scan(scan, mode, settings))
    print(f"wrote {out} ({settings.width} x {settings.height}, {mode})")
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rangecps-vis",
        description="Look at LiDAR scans, labels and predictions in 3D (Open3D) or as range-image strips, "
        "and plot training runs. Without a display, views are rendered off screen into PNG files.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    view = argparse.ArgumentParser(add_help=False)
    view.add_argument("--color", choices=COLOR_MODES, default=None, help="default: labels if any, else range")
    view.add_argument("--save", type=Path, default=None, metavar="OUT.png", help="render off screen to a PNG")
    view.add_argument("--width", type=int, default=1600, help="window / picture width in pixels")
    view.add_argument("--height", type=int, default=900, help="window / picture height in pixels")
    view.add_argument("--view", choices=("chase", "bev"), default="chase", help="camera: chase or bird's-eye")
    view.add_argument("--radius", type=float, default=30.0, help="half the visible height in m (default 30)")
    view.add_argument("--point-size", type=float, default=2.0, help="point size in pixels (default 2)")
    view.add_argument(
        "--background", choices=tuple(BACKGROUNDS), default="black", help="background colour (default black)"
    )
    scan = sub.add_parser("scan", parents=[view], help="one scan file (.bin KITTI, .pcd.bin nuScenes)")
    scan.add_argument("path", type=Path, help="SemanticKITTI .bin or nuScenes .pcd.bin")
    scan.add_argument(
        "--labels", type=Path, default=None, metavar="FILE", help="KITTI .label or nuScenes lidarseg .bin"
    )
    scan.add_argument(
        "--pred", type=Path, default=None, metavar="FILE", help="prediction file (see --pred-ids)"
    )
    scan.add_argument(
        "--pred-ids",
        choices=("auto", "raw", "train"),
        default="auto",
        help="ids in --pred: auto = what submissions hold (KITTI raw ids, nuScenes classes 1..16)",
    )
    scan.add_argument("--label-map", default=None, help="dataset name or YAML (default: the format's)")
    scan.add_argument(
        "--strip", type=Path, default=None, metavar="OUT.png", help="write the range-image strip PNG"
    )
    data = sub.add_parser("dataset", parents=[view], help="step through a split (keys N/P, G/R/E, D/I)")
    data.add_argument("root", type=Path, help="dataset root")
    data.add_argument("--split", default="val", help="split to step through (default val)")
    data.add_argument("--dataset", default=None, help="default: the run's dataset, else from the layout")
    data.add_argument(
        "--run",
        type=Path,
        default=None,
        help="run folder whose newest complete eval_<split>_*/ predictions to show",
    )
    data.add_argument(
        "--pred-dir",
        type=Path,
        default=None,
        help="rangecps-eval results folder to read (refused without its complete manifest.json)",
    )
    data.add_argument("--start", type=int, default=0, help="index of the first scan shown (or rendered)")
    run = sub.add_parser("run", help="training curves and confusion matrix PNGs of a run folder")
    run.add_argument("run_dir", type=Path, help="a rangecps-train run folder")
    run.add_argument("--out", type=Path, default=None, help="default: RUN_DIR/plots")
    return parser


def vis_main(argv: list[str] | None = None) -> int:
    """Entry point of ``rangecps-vis``; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            written, notes = plot_run(args.run_dir, args.out)
            for note in notes:
                print(f"note: {note}")
            for path in written:
                print(f"wrote {path}")
            return 0
        if args.width < 16 or args.height < 16:
            raise ValueError(f"image size {args.width} x {args.height} is too small (16 x 16 at least)")
        settings = RenderSettings(
            args.width, args.height, args.view, args.radius, args.point_size, args.background
        )
        if args.command == "scan":
            scan = load_scan(args.path, args.labels, args.pred, args.pred_ids, args.label_map)
            if args.strip is not None:
                strip = range_strip(
                    scan.points, scan.ring, GEOMETRY[scan.file_format], scan.labels, scan.pred, scan.label_map
                )
                _save_png(args.strip, strip)
                bands = ", ".join(strip_bands(scan.labels is not None, scan.pred is not None))
                print(f"wrote {args.strip} ({strip.shape[1]} x {strip.shape[0]}; bands: {bands})")
                if args.save is None:
                    return 0
            stepper = Stepper(1, lambda _: scan, args.color or "labels")
        else:
            if args.run is not None and args.pred_dir is not None:
                raise ValueError("give --run or --pred-dir, not both")
            records, load = open_dataset(args.root, args.split, args.dataset, args.run, args.pred_dir)
            stepper = Stepper(len(records), load, args.color or "labels", args.start)
        if args.color is not None and stepper.mode != args.color:
            need = {"labels": "ground truth", "pred": "predictions", "errors": "ground truth and predictions"}
            raise ValueError(
                f"{stepper.scan.name}: --color {args.color} needs {need[args.color]}, which it lacks"
            )
        if args.save is not None or not has_display():
            _render_to_file(stepper.scan, stepper.mode, settings, args.save)
        else:
            show(stepper, settings)
    except (ValueError, KeyError, RuntimeError, ImportError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    except OSError as e:  # a missing file, a folder that cannot be written, a full disk: one line naming it
        print(f"error: {f'{e.filename}: {e.strerror}' if e.filename and e.strerror else e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(vis_main())
