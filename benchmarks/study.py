"""The semi-supervised study on the simulator: do the semi-supervised methods turn unlabeled scans into accuracy?

Trains every method (``sup_only``, ``mean_teacher``, ``cps``, ``lasermix``, ``cps_lasermix``; ``--methods``
picks some) at 1 % and 10 % labels, and ``sup_only`` at 100 % as the ceiling, each with 3 seeds, on the built-in
synthetic SemanticKITTI-format dataset with the CPU-sized FIDNet of ``configs/synthetic/``. Every run is
evaluated on the validation sequence 08 at the point level with kNN post-processing (the headline), without kNN,
and at the range-pixel level. A seed sets the network initialisation, the augmentation and the labeled split
(``data.split_seed``), so the spread includes which scans got labels; runs of the same seed share their labeled
scans, which makes the per-seed method - sup_only difference a paired one.

Every run is scored with one network, the one ``rangecps-eval`` scores by default (last checkpoint, no
ensembling): net ``a`` of CPS runs, the teacher of Mean Teacher and LaserMix runs, so that methods are compared
network for network. Writes ``study.json`` (every run's figures) and ``RESULTS.md`` (rendered from
it by ``study_report.py``) into ``--out``. Finished runs are skipped, so an interrupted study continues where it
stopped.

    python benchmarks/study.py                 # the full study: 33 runs
    python benchmarks/study.py --seeds 0 --max-steps 12 --out /tmp/study   # a quick smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import machine
from study_report import aggregate, write_report

from rangecps.checkpoint import code_revision
from rangecps.config import load_config
from rangecps.data.build import build_data
from rangecps.methods import METHODS

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = Path("configs/synthetic")
# (method, labeled share); sup_only at 100 % is the ceiling.
CELLS = [(m, share) for share in ("1%", "10%") for m in METHODS] + [("sup_only", "100%")]


def run_name(method: str, labels: str, seed: int) -> str:
    return f"{method}-{labels.rstrip('%')}pct-seed{seed}"


def commands(method: str, labels: str, seed: int, run_dir: Path, args: argparse.Namespace) -> list[list[str]]:
    """The two commands of one run, as a user types them (console scripts, paths relative to the repo)."""
    train = [
        "rangecps-train",
        "--config", str(CONFIG_DIR / f"{method}_fidnet.yaml"),
        "--labels", labels,
        "--set", f"train.seed={seed}",
        "--set", f"data.split_seed={seed}",
        "--set", f"data.num_workers={args.num_workers}",
        *(["--set", f"train.epochs={args.epochs}"] if args.epochs is not None else []),
        *(["--set", f"train.max_steps={args.max_steps}"] if args.max_steps is not None else []),
        "--out", str(run_dir),
        "--resume", "auto",
        "--no-progress",
    ]  # fmt: skip
    evaluate = [
        "rangecps-eval", str(run_dir / "last.pt"),
        "--net", METHODS[method].evaluate,
        "--num-workers", str(args.num_workers),
        "--out", str(run_dir / "eval"),
        "--no-progress",
    ]  # fmt: skip
    return [train, evaluate]


def executable(cmd: list[str]) -> list[str]:
    """Run a console script through this interpreter, so the study uses the environment it was started in."""
    entry = {"rangecps-train": "train_main", "rangecps-eval": "eval_main"}[cmd[0]]
    code = f"import sys; from rangecps.cli import {entry}; sys.exit({entry}(sys.argv[1:]))"
    return [sys.executable, "-c", code, *cmd[1:]]


def run_one(
    method: str, labels: str, seed: int, args: argparse.Namespace, env: dict[str, str]
) -> dict[str, Any]:
    """Train and evaluate one run (skipping what is already done) and return its figures."""
    shown = args.work / run_name(method, labels, seed)
    cmds = commands(method, labels, seed, shown, args)
    run_dir = REPO / shown
    metrics_path = run_dir / "eval" / "metrics.json"
    if not metrics_path.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        for cmd, log_name in zip(cmds, ("train.log", "eval.log"), strict=True):
            if log_name == "train.log" and (run_dir / "summary.json").is_file():
                continue
            with open(run_dir / log_name, "w") as log:
                done = subprocess.run(
                    executable(cmd), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
                )
            if done.returncode != 0:
                raise RuntimeError(f"{run_dir / log_name}: '{shlex.join(cmd)}' exited with {done.returncode}")
        print(f"done {run_dir.name}", flush=True)
    metrics = json.loads(metrics_path.read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    levels = metrics["levels"]
    return {
        "method": method,
        "labels": labels,
        "seed": seed,
        "run_dir": str(shown),
        "steps": summary["steps"],
        "train_seconds": summary["seconds"],
        "eval_seconds": metrics["seconds"],
        "miou": {level: levels[level]["miou"] for level in levels},
        "iou_point_knn": levels["point_knn"]["iou"],
        "commands": [shlex.join(c) for c in cmds],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--jobs", type=int, default=2, help="runs at once; each gets cores / jobs threads")
    parser.add_argument("--num-workers", type=int, default=0, help="loader workers per run")
    parser.add_argument("--epochs", type=int, default=None, help="default: the synthetic configs' epochs")
    parser.add_argument("--max-steps", type=int, default=None, help="cut every run short (smoke runs only)")
    parser.add_argument("--work", type=Path, default=Path("runs/study"), help="folder of the run folders")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks"), help="where study.json, RESULTS.md go"
    )
    args = parser.parse_args()
    args.work = args.work.resolve()
    if args.work.is_relative_to(REPO):  # keep the recorded commands free of this machine's paths
        args.work = args.work.relative_to(REPO)

    os.chdir(REPO)  # the configs name the dataset root relative to the repository
    start, revision = time.time(), code_revision()
    # Make (or check) the dataset once, before parallel runs would race to make it.
    cfg = load_config(CONFIG_DIR / "sup_only_fidnet.yaml")
    data = build_data(cfg, progress=True)
    threads = str(max(1, (os.cpu_count() or 1) // args.jobs))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "NUMBA_NUM_THREADS": threads}
    # The longest runs (two networks) first, so that the parallel jobs finish together.
    order = sorted(
        ((m, lab, s) for m, lab in CELLS if m in args.methods for s in args.seeds),
        key=lambda r: (r[0] == "sup_only", r[2]),
    )
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(lambda r: run_one(*r, args, env), order))

    study = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_minutes": round((time.time() - start) / 60, 1),
        "command": shlex.join(["python", "benchmarks/study.py", *sys.argv[1:]]),
        "revision": revision,
        "jobs": args.jobs,
        "threads_per_job": int(threads),
        "dataset": {
            "name": cfg.data.dataset,
            "root": cfg.data.root,
            "train_scans": len(data.index.split("train")),
            "val_scans": len(data.index.split("val")),
            "image": f"{data.geometry.height}x{data.geometry.width}",
        },
        "model": {"name": cfg.model.name, "width": cfg.model.width},
        "class_names": list(data.label_map.names),
        "machine": machine(),
        "runs": sorted(
            runs, key=lambda r: ([c for c, _ in CELLS].index(r["method"]), r["labels"], r["seed"])
        ),
    }
    study["cells"] = aggregate(study["runs"])
    args.out.mkdir(parents=True, exist_ok=True)
    write_report(study, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
