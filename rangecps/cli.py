"""Console entry points. Each parses its arguments and calls the modules that do the work."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


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
    sub = parser.add_subparsers(dest="command", required=True)
    syn = sub.add_parser("synthetic", help="simulate a labeled dataset in an official format")
    syn.add_argument(
        "--format",
        choices=("semantickitti", "nuscenes"),
        default="semantickitti",
        help="semantickitti also writes ScribbleKITTI scribbles",
    )
    syn.add_argument("--out", type=Path, required=True, help="dataset root to create")
    syn.add_argument("--sequences", type=int, default=None, help="sequences (KITTI) or scenes (nuScenes)")
    syn.add_argument("--scans-per-sequence", type=int, default=None)
    syn.add_argument("--seed", type=int, default=None)
    syn.add_argument("--no-prep", action="store_true", help="do not index / check the new dataset")
    for name in DATASETS:
        p = sub.add_parser(name, help=f"check and index a {name} root")
        p.add_argument("--root", type=Path, required=True)
        p.add_argument("--out", type=Path, default=None, help="where to write (default: <root>/rangecps)")
        p.add_argument("--seed", type=int, default=0, help="seed of the sampler for unpublished shares")
    args = parser.parse_args(argv)

    from rangecps.data.prep import DatasetProblems, prep_dir, prepare

    if args.command == "synthetic":
        from rangecps.sim.generate import generate_dataset

        try:
            root = generate_dataset(args.format, args.out, args.sequences, args.scans_per_sequence, args.seed)
        except (ValueError, FileExistsError) as e:
            return _fail(str(e))
        print(f"wrote {root}")
        if args.no_prep:
            return 0
        dataset_cls = DATASETS["synthetic_kitti" if args.format == "semantickitti" else "synthetic_nuscenes"]
        root_arg, out_arg, seed = root, None, 0
    else:
        dataset_cls, root_arg, out_arg, seed = DATASETS[args.command], args.root, args.out, args.seed
    try:
        index, _, report = prepare(dataset_cls, root_arg, out_arg, seed=seed)
    except (DatasetProblems, FileNotFoundError, ImportError) as e:
        return _fail(str(e))
    for note in report.notes:
        print(f"note: {note}")
    sizes = ", ".join(f"{k} {len(v)}" for k, v in index.splits.items())
    print(f"{dataset_cls.name}: {report.scans_checked} scans checked, no problems ({sizes})")
    print(f"wrote index, split lists and statistics to {prep_dir(root_arg, out_arg)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(prep_main())
