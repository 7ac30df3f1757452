"""Console entry points. Each parses its arguments and calls the modules that do the work."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rangecps.methods import METHODS  # a plain table: keeps start-up free of torch


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def prep_main(argv: list[str] | None = None) -> int:
    """``rangecps-prep``: make a synthetic dataset, or check and index a real one."""
    from rangecps.data import DATASETS

    parser = argparse.ArgumentParser(
        prog="rangecps-prep",
        description="Make the built-in synthetic dataset, or check, index and summarise a dataset root.",
    )
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        help="'synthetic' makes a dataset; a dataset name checks and indexes a root of that dataset",
    )
    syn = sub.add_parser("synthetic", help="simulate a labeled dataset in an official format")
    syn.add_argument(
        "--format",
        choices=("semantickitti", "nuscenes"),
        default="semantickitti",
        help="semantickitti also writes ScribbleKITTI scribbles",
    )
    syn.add_argument(
        "--out",
        type=Path,
        required=True,
        help="dataset root to create (must not exist, or be an empty folder)",
    )
    syn.add_argument(
        "--sequences",
        type=int,
        default=None,
        help="sequences (KITTI, 1..11: validation sequence 08 plus N - 1 training ones; default 5) or scenes "
        "(nuScenes, 2..10: both mini_val scenes plus N - 2 mini_train ones; default 10)",
    )
    syn.add_argument(
        "--scans-per-sequence",
        type=int,
        default=None,
        help="scans (keyframes) per sequence or scene, >= 1 (default 20 for KITTI, 10 for nuScenes)",
    )
    syn.add_argument(
        "--seed", type=int, default=None, help="seed of the scenes, drives and scribbles, >= 0 (default 0)"
    )
    syn.add_argument("--no-prep", action="store_true", help="do not index / check the new dataset")
    for name in DATASETS:
        p = sub.add_parser(name, help=f"check and index a {name} root")
        p.add_argument("--root", type=Path, required=True, help="the dataset root (see README: Datasets)")
        p.add_argument(
            "--out",
            type=Path,
            default=None,
            help="folder of the prepared files (default: <root>/rangecps); training and evaluation read it "
            "from data.prep_dir",
        )
        p.add_argument("--seed", type=int, default=0, help="seed of the sampler for unpublished shares")
        p.add_argument("--cache", action="store_true", help="also store projected range images (see README)")
    args = parser.parse_args(argv)

    from rangecps.data.prep import DatasetProblems, prep_dir, prepare

    if args.command == "synthetic":
        from rangecps.sim.generate import generate_dataset

        try:
            root = generate_dataset(args.format, args.out, args.sequences, args.scans_per_sequence, args.seed)
        except (ValueError, OSError) as e:  # FileExistsError: --out taken, or another rangecps-prep writes it
            return _fail(str(e))
        print(f"wrote {root}")
        if args.no_prep:
            return 0
        dataset_cls = DATASETS["synthetic_kitti" if args.format == "semantickitti" else "synthetic_nuscenes"]
        root_arg, out_arg, seed = root, None, 0
    else:
        dataset_cls, root_arg, out_arg, seed = DATASETS[args.command], args.root, args.out, args.seed
    try:
        index, stats, report = prepare(dataset_cls, root_arg, out_arg, seed=seed)
    except DatasetProblems as e:
        for problem in e.problems if len(e.problems) > 1 else ():
            print(f"problem: {problem}", file=sys.stderr)
        return _fail(
            str(e) if len(e.problems) == 1 else f"{e.root}: {len(e.problems)} problems (listed above)"
        )
    except (ValueError, OSError, ImportError) as e:
        return _fail(str(e))
    if getattr(args, "cache", False):
        from rangecps.data.cache import build_cache
        from rangecps.labels import load_label_map

        cache_dir = prep_dir(root_arg, out_arg) / "cache"
        try:
            n = build_cache(
                dataset_cls, Path(root_arg), index, load_label_map(dataset_cls.label_map), cache_dir
            )
        except (ValueError, OSError) as e:
            return _fail(f"{cache_dir}: cache not written: {e}")
        print(f"cached {n} range images in {cache_dir}")
    for note in report.notes:
        print(f"note: {note}")
    sizes = ", ".join(f"{k} {len(v)}" for k, v in index.splits.items())
    print(f"{dataset_cls.name}: {report.scans_checked} scans checked, no problems ({sizes})")
    print(f"wrote index, split lists and statistics to {prep_dir(root_arg, out_arg)}")
    from rangecps.labels import load_label_map

    names = load_label_map(dataset_cls.label_map).names
    counts = stats.class_counts
    total = sum(counts[1:]) or 1
    shares = sorted(((c / total, n) for n, c in zip(names[1:], counts[1:], strict=True)), reverse=True)
    which = "training" if stats.split == "train" else stats.split
    print(f"{which} points per class: " + ", ".join(f"{n} {100 * f:.2f}%" for f, n in shares))
    return 0


def default_config_path() -> Path:
    """The config ``rangecps-train`` uses without ``--config``: CPS on the synthetic dataset, CPU-sized."""
    import importlib.resources

    return Path(str(importlib.resources.files("rangecps.configs") / "synthetic" / "cps_fidnet.yaml"))


def train_main(argv: list[str] | None = None) -> int:
    """``rangecps-train``: train one run (under torchrun: one process of a DDP run)."""
    parser = argparse.ArgumentParser(
        prog="rangecps-train",
        description="Train range-view segmentation with Cross Pseudo Supervision (or supervised only).",
    )
    parser.add_argument(
        "--config", type=Path, default=None, help="YAML config (default: synthetic CPS, CPU-sized)"
    )
    parser.add_argument(
        "--labels",
        default=None,
        help="labeled share as a percentage, e.g. 10%% (a bare number below 1 is a fraction: 0.1 = 10%%; "
        "default: the config's data.labels)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value (repeatable)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="run folder (default: runs/<config>-<labels>pct); one holding a run needs --resume or --overwrite",
    )
    parser.add_argument(
        "--resume",
        default=None,
        help="continue a run: 'auto' (the run folder's last.pt; a fresh start if it has none) or a checkpoint "
        "file; a complete run is left as it is",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in a run folder that holds a run: its checkpoints, logs, config, splits and TensorBoard "
        "files are removed first (other files, e.g. eval_* results, stay)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (e.g. when logging to a file)"
    )
    import re

    rest, given = list(sys.argv[1:] if argv is None else argv), []
    while rest:  # "--labels -5%" is a value, not an option: it gets the message about labeled shares
        arg = rest.pop(0)
        if arg == "--labels" and rest and re.match(r"-[\d.]", rest[0]):
            arg = f"--labels={rest.pop(0)}"
        given.append(arg)
    args = parser.parse_args(given)

    from rangecps.config import ConfigError, load_config
    from rangecps.data.splits import canonical_share, parse_ratio

    config_path = args.config or default_config_path()
    overrides = list(args.overrides)
    if args.labels is not None:
        try:
            labels = canonical_share(args.labels, "--labels")
        except ValueError as e:
            return _fail(str(e))
        if not args.labels.strip().endswith("%"):
            print(f"note: --labels {args.labels.strip()} read as the fraction {labels}")
        overrides.append(f"data.labels={labels}")
    try:
        cfg = load_config(config_path, overrides)
        ratio = parse_ratio(cfg.data.labels)
    except (ConfigError, ValueError) as e:
        return _fail(str(e))
    out = args.out or Path("runs") / f"{config_path.stem}-{ratio * 100:g}pct"

    from rangecps.folders import FolderInUse
    from rangecps.train import train

    try:
        summary = train(cfg, out, args.resume, progress=not args.no_progress, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, FolderInUse, FloatingPointError, ValueError) as e:
        return _fail(str(e))
    if summary.get("already_complete"):
        if summary.get("rank", 0) == 0:
            more = " (raise train.max_steps to go on)" if summary["steps"] < summary["total_steps"] else ""
            print(f"{out}: the run is complete at step {summary['steps']}; nothing to do{more}")
        return 0
    if summary.get("rank", 0) == 0:
        vals = ", ".join(
            f"net {k.removeprefix('miou_')} {v * 100:.1f}" for k, v in summary["val_pixel_miou"].items()
        )
        bests = ", ".join(
            f"net {name} {v * 100:.1f} at step {s}"
            for name, v, s in zip(
                summary["nets"], summary["best_val_pixel_miou"], summary["best_steps"], strict=True
            )
        )
        print(
            f"done: {summary['steps']} steps in {summary['seconds']:.0f} s; "
            f"validation mIoU ({summary.get('val_scored', 'range pixels')}): {vals} (best: {bests})"
        )
        prec = summary["precision"]
        print(f"precision: autocast {prec['amp']}, channels_last {prec['channels_last']} ({prec['reason']})")
        if summary.get("non_finite_points", 0) > 0:
            print(
                f"note: {summary['non_finite_points']} training points had a NaN or infinite value and got no "
                "pixel (non_finite_points in summary.json); rangecps-prep names the files"
            )
        print(f"run folder: {out}")
    return 0


def eval_main(argv: list[str] | None = None) -> int:
    """``rangecps-eval``: evaluate a run folder or checkpoint; write metrics, predictions, submissions."""
    parser = argparse.ArgumentParser(
        prog="rangecps-eval",
        description="Point-level (kNN and plain) and range-pixel mIoU of a run; prediction files and submissions. "
        "mIoU follows the dataset's official evaluator: semantic-kitti-api for (Scribble)KITTI (a class absent "
        "from ground truth and predictions counts 0), nuscenes-devkit for nuScenes (such a class is left out); "
        "metrics.json also gives the other convention's figure (miou_other).",
    )
    parser.add_argument("run", type=Path, help="run folder (uses best.pt, else last.pt) or a checkpoint file")
    parser.add_argument(
        "--split", choices=("val", "test"), default="val", help="split to evaluate (test: predictions only)"
    )
    parser.add_argument(
        "--knn",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="kNN post-processing of point labels (default: the config's eval.knn)",
    )
    parser.add_argument(
        "--net",
        choices=(*sorted({name for m in METHODS.values() for name in m.nets}), "ensemble"),
        default=None,
        help="which network to score: a or b of a sup_only / CPS run (default a, as the CPS reference "
        "evaluates one branch), student or teacher of a Mean Teacher / LaserMix run (default teacher, as the "
        "LaserMix release), or ensemble (mean of both softmaxes)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default: RUN/eval_<split>_<net>, replaced by each complete new evaluation); "
        "a folder holding anything else is refused unless --overwrite",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an --out folder that holds earlier results"
    )
    parser.add_argument("--write-predictions", action="store_true", help="write per-point prediction files")
    parser.add_argument(
        "--submission",
        action="store_true",
        help="write predictions and the benchmark archive (submission.zip)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a value of the checkpoint's config, e.g. data.root=PATH (repeatable)",
    )
    parser.add_argument("--batch-size", type=int, default=1, help="scans per network call (default 1)")
    parser.add_argument(
        "--num-workers", type=int, default=None, help="default: the config's data.num_workers"
    )
    parser.add_argument(
        "--tta",
        type=int,
        default=None,
        metavar="N",
        help="test-time augmentation: average the softmax over N views of each scan (flips, rotation, scale, "
        "shift as the FRNet release; default: the config's eval.tta, 0: none)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    from rangecps.data.prep import DatasetProblems
    from rangecps.eval.evaluate import ResultsNotWritten, evaluate
    from rangecps.eval.report import format_report
    from rangecps.folders import FolderInUse

    if args.batch_size < 1 or (args.num_workers is not None and args.num_workers < 0):
        print("error: --batch-size must be >= 1 and --num-workers >= 0", file=sys.stderr)
        return 2
    if args.tta is not None and args.tta < 0:
        print(f"error: --tta must be >= 0 (views; 0 for none), got {args.tta}", file=sys.stderr)
        return 2
    try:
        result = evaluate(
            args.run, args.split, args.knn, args.net, args.out, args.write_predictions, args.submission,
            args.overrides, args.batch_size, args.num_workers, progress=not args.no_progress,
            overwrite=args.overwrite, tta=args.tta,
        )  # fmt: skip
    except ResultsNotWritten as e:  # the evaluation finished: its metrics go to the console, at least
        print(format_report(e.result))
        return _fail(str(e))
    except (ValueError, ImportError, DatasetProblems, FolderInUse) as e:
        return _fail(str(e))
    except OSError as e:  # disk full, read-only folder, ...: one line naming the file
        return _fail(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))
    except KeyError as e:  # a split the dataset index lacks; its message names the root
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    if result.get("replaced"):
        print(f"note: replaced the earlier results in {result['out_dir']}")
    print(format_report(result))
    print(f"{result['seconds_per_scan'] * 1000:.0f} ms per scan on {result['device']}")
    if result["levels"]:
        print(f"wrote {Path(result['out_dir']) / 'metrics.json'}")
    for path in result.get("submission", []):
        print(f"wrote {path}")
    if args.write_predictions and not args.submission:
        print(f"wrote predictions under {result['out_dir']}")
    return 0
