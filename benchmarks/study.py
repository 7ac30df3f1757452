"""The semi-supervised study on the simulator: do the semi-supervised methods turn unlabeled scans into accuracy?

Trains every method (``sup_only``, ``mean_teacher``, ``cps``, ``lasermix``, ``cps_lasermix``; ``--methods``
picks some) at 1 % and 10 % labels, and ``sup_only`` at 100 % as the ceiling, with paired seeds, in the regime of
:data:`REGIME` (a larger synthetic SemanticKITTI-format dataset than the demo's, so that 1 % is several scans,
and runs long enough for the 100 % ceiling to plateau). A seed sets the network initialisation, the augmentation
and the labeled split (``data.split_seed``): runs of one seed share their labeled scans and initial weights, so
the per-seed difference between two methods is a paired one. Every run is evaluated on the validation sequence
08 at the point level with kNN post-processing (the headline), without kNN, and at the range-pixel level, with
the network ``rangecps-eval`` scores by default (net ``a`` of CPS runs, the teacher of Mean Teacher and LaserMix
runs). One cell is repeated in float32 (``variant`` fp32) to check that the bf16 autocast the trainer picks on
CPUs with native bf16 does not change the verdicts.

The study runs in sittings: every run resumes from its last checkpoint, every finished run is recorded in
``study.json`` (and ``RESULTS.md`` re-rendered) at once, and a rerun skips what is recorded.

    python benchmarks/study.py                      # the full study (about 7 hours on 2 CPU cores)
    python benchmarks/study.py --quick              # 2 cells, 1 seed, a few steps on a tiny dataset (tests)
    python benchmarks/study.py --device cuda --num-workers 1   # the same study on a GPU (a seed: ~7 min, H200)
    python benchmarks/study.py --device cuda --model-width 1.0 --image-width 2048   # at the published size
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import machine
from study_report import aggregate, write_report
from study_stats import run_key

from rangecps.checkpoint import code_revision
from rangecps.config import load_config
from rangecps.data.build import build_data
from rangecps.methods import METHODS
from rangecps.sim.generate import generate_dataset

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = Path("configs/synthetic")
# The study's regime, in one place; recorded in study.json, and a recorded run counts only under the same one.
# 10 training sequences of 40 scans: 1 % is 4 labeled scans and 396 unlabeled. Chosen from pilot runs of sup_only
# at 100 % (README, "The study's regime"): every setting that fits the 6-hour budget (width 0.125 at 64x512,
# width 0.25 at 64x256, lr 0.02, 3,200 steps at 64x256) ended at 27-28 point-level mIoU with kNN.
REGIME: dict[str, Any] = {
    "root": "data/synthetic_kitti_study",
    "sequences": 11,
    "scans_per_sequence": 40,
    "image_width": 512,
    "model_width": 0.125,
    "class_weights": True,
    "epochs": 4,
    "ema_momentum": 0.01,  # the release's: ~100 steps of averaging, short against a 1,600-step run
    "val_every": 160,  # 1,600 steps at 100 %: a validation at 80 % of the run, where the plateau is measured
}
# --quick: the same code path on a tiny dataset, a few steps; for tests and smoke runs.
QUICK: dict[str, Any] = REGIME | {
    "root": "data/synthetic_kitti_quick",
    "sequences": 3,
    "scans_per_sequence": 10,
    "model_width": 0.125,
    "epochs": 1,
    "max_steps": 4,
    "val_every": 2,
}
SHARES = ("1%", "10%")
# (method, labels, variant): every method at each share, sup_only at 100 % (the ceiling), and the fp32 check.
CELLS = (
    [(m, share, "auto") for share in SHARES for m in METHODS]
    + [("sup_only", "100%", "auto")]
    + [("sup_only", "1%", "fp32"), ("cps", "1%", "fp32")]
)
QUICK_CELLS = [("sup_only", "1%", "auto"), ("cps", "1%", "auto")]


def run_name(method: str, labels: str, seed: int, variant: str) -> str:
    tail = "" if variant == "auto" else f"-{variant}"
    return f"{method}-{labels.rstrip('%')}pct-seed{seed}{tail}"


def commands(
    method: str, labels: str, seed: int, variant: str, run_dir: Path, regime: dict[str, Any], workers: int
) -> list[list[str]]:
    """The two commands of one run, as a user types them (console scripts, paths relative to the repo)."""
    sets = {
        "data.root": regime["root"],
        "data.width": regime["image_width"],
        "model.width": regime["model_width"],
        "loss.class_weights": str(regime["class_weights"]).lower(),
        "semi.ema_momentum": regime["ema_momentum"],
        "train.epochs": regime["epochs"],
        "train.val_every": regime["val_every"],
        "train.ckpt_every": regime["val_every"],  # a killed run loses at most one validation interval
        "train.seed": seed,
        "data.split_seed": seed,
        "data.num_workers": workers,
    }
    if "max_steps" in regime:
        sets["train.max_steps"] = regime["max_steps"]
    if variant == "fp32":
        sets["train.amp"] = "off"
    train = [
        "rangecps-train",
        "--config", str(CONFIG_DIR / f"{method}_fidnet.yaml"),
        "--labels", labels,
        *(a for k, v in sets.items() for a in ("--set", f"{k}={v}")),
        "--out", str(run_dir),
        "--resume", "auto",
        "--no-progress",
    ]  # fmt: skip
    evaluate = [
        "rangecps-eval", str(run_dir / "last.pt"),
        "--net", METHODS[method].evaluate,
        "--num-workers", str(workers),
        "--out", str(run_dir / "eval"),
        "--no-progress",
    ]  # fmt: skip
    return [train, evaluate]


def executable(cmd: list[str]) -> list[str]:
    """Run a console script through this interpreter, so the study uses the environment it was started in."""
    entry = {"rangecps-train": "train_main", "rangecps-eval": "eval_main"}[cmd[0]]
    code = f"import sys; from rangecps.cli import {entry}; sys.exit({entry}(sys.argv[1:]))"
    return [sys.executable, "-c", code, *cmd[1:]]


def curve(run_dir: Path, net: str) -> list[list[float]]:
    """[[step, validation range-pixel mIoU of ``net``], ...] from the run's log; a resumed run logs some steps
    twice, and the later entry is the one the run continued from."""
    points: dict[int, float] = {}
    key = f"val/miou_{net}"
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if key in entry:
            points[int(entry["step"])] = float(entry[key])
    return [[s, points[s]] for s in sorted(points)]


def run_one(
    cell: tuple[str, str, str], seed: int, args: argparse.Namespace, env: dict[str, str]
) -> dict[str, Any]:
    """Train and evaluate one run (resuming or skipping what is already done) and return its record."""
    method, labels, variant = cell
    shown = args.work / run_name(method, labels, seed, variant)
    cmds = commands(method, labels, seed, variant, shown, args.regime, args.num_workers)
    run_dir = REPO / shown
    metrics_path = run_dir / "eval" / "metrics.json"
    if not metrics_path.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        for cmd, log_name in zip(cmds, ("train.log", "eval.log"), strict=True):
            if log_name == "train.log" and (run_dir / "summary.json").is_file():
                continue
            with open(run_dir / log_name, "a") as log:
                done = subprocess.run(
                    executable(cmd), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
                )
            if done.returncode != 0:
                raise RuntimeError(f"{run_dir / log_name}: '{shlex.join(cmd)}' exited with {done.returncode}")
    metrics = json.loads(metrics_path.read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    levels = metrics["levels"]
    return {
        "method": method,
        "labels": labels,
        "seed": seed,
        **({"variant": variant} if variant != "auto" else {}),  # the runs of the fp32 check
        "run_dir": str(shown),
        "steps": summary["steps"],
        "train_seconds": summary["seconds"],
        "eval_seconds": metrics["seconds"],
        "wall_seconds": summary["seconds"] + metrics["seconds"],
        "precision": summary["precision"],
        "revision": summary["revision"],
        "miou": {level: levels[level]["miou"] for level in levels},
        "iou_point_knn": levels["point_knn"]["iou"],
        "curve": curve(run_dir, metrics["net"]),
        "commands": [shlex.join(c) for c in cmds],
    }


class Recorder:
    """study.json as the study goes: every finished run is added and the report re-rendered at once (from any
    of the parallel jobs), so that a study stopped at any point keeps everything it finished."""

    def __init__(
        self, header: dict[str, Any], out: Path, planned: list[tuple[tuple[str, str, str], int]]
    ) -> None:
        self.header, self.out, self.planned = header, out, planned
        self.lock = threading.Lock()
        self.runs: list[dict[str, Any]] = []
        path = out / "study.json"
        if path.is_file():
            old = json.loads(path.read_text())
            other = {k for k in header["regime"] if old.get("regime", {}).get(k) != header["regime"][k]}
            if other and old.get("runs"):  # runs of another regime are not comparable: never mix or drop them
                raise FileExistsError(
                    f"{path} holds runs of another regime ({', '.join(sorted(other))} differ); pass another --out"
                )
            self.runs = old.get("runs", [])

    def done(self, cell: tuple[str, str, str], seed: int) -> bool:
        return any(run_key(r) == (*cell, seed) for r in self.runs)

    def add(self, run: dict[str, Any]) -> None:
        with self.lock:
            self.runs = [r for r in self.runs if run_key(r) != run_key(run)] + [run]
            self.write()
            print(f"recorded {run['run_dir']} ({len(self.runs)} of {len(self.planned)} runs)", flush=True)

    def write(self) -> None:
        order = {c: i for i, c in enumerate(CELLS)}
        runs = sorted(self.runs, key=lambda r: (order.get(run_key(r)[:3], len(order)), r["seed"]))
        study = self.header | {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "wall_minutes": round(sum(r["wall_seconds"] for r in runs) / 60, 1),
            "complete": all(self.done(c, s) for c, s in self.planned),
            "missing": [run_name(*c[:2], s, c[2]) for c, s in self.planned if not self.done(c, s)],
            "runs": runs,
        }
        study["cells"] = aggregate(runs)
        self.out.mkdir(parents=True, exist_ok=True)
        write_report(study, self.out)


def ensure_dataset(regime: dict[str, Any]) -> None:
    """Simulate the study's dataset where it is missing (deterministic for the simulator's default seed)."""
    root = REPO / regime["root"]
    if not root.exists():
        generate_dataset("semantickitti", root, regime["sequences"], regime["scans_per_sequence"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--quick", action="store_true", help="2 cells, 1 seed, 4 steps on a tiny dataset")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--model-width", type=float, default=None, help="override the regime's FIDNet width")
    parser.add_argument("--image-width", type=int, default=None, help="override the regime's image columns")
    parser.add_argument("--no-fp32-check", action="store_true", help="skip the float32 repeat of one cell")
    parser.add_argument("--jobs", type=int, default=None, help="runs at once (default 2; GPU: a seed's)")
    parser.add_argument("--num-workers", type=int, default=0, help="loader workers per run")
    parser.add_argument("--work", type=Path, default=None, help="folder of the run folders")
    parser.add_argument("--out", type=Path, default=None, help="where study.json, RESULTS.md and plots go")
    args = parser.parse_args()
    regime = dict(QUICK if args.quick else REGIME)
    if args.model_width is not None:
        regime["model_width"] = args.model_width
    if args.image_width is not None:
        regime["image_width"] = args.image_width
    args.regime = regime
    tag = "study-quick" if args.quick else "study" if args.device == "cpu" else "study-cuda"
    size = ("model_width", "image_width")
    if not args.quick and any(regime[k] != REGIME[k] for k in size):
        # Another size is another study: its own run folders (a resume must not load the regime's checkpoints)
        # and its own report.
        tag += f"-w{regime['model_width']:g}-{regime['image_width']}"
    # abspath, not resolve: a runs/ that is a symlink (a study run from a second checkout) stays under REPO.
    args.work = Path(os.path.abspath(args.work or REPO / "runs" / tag))
    if args.work.is_relative_to(REPO):  # keep the recorded commands free of this machine's paths
        args.work = args.work.relative_to(REPO)
    default_out = {"study": Path("benchmarks"), "study-cuda": Path("benchmarks/study_cuda")}
    sized = None if args.quick else Path("benchmarks") / tag.replace("-", "_")
    out = Path(os.path.abspath(args.out or REPO / default_out.get(tag, sized or args.work)))
    seeds = [0] if args.quick else args.seeds
    cells = QUICK_CELLS if args.quick else [c for c in CELLS if c[0] in args.methods]
    if args.no_fp32_check:
        cells = [c for c in cells if c[2] == "auto"]

    env = dict(os.environ)
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the trainer takes a GPU whenever it sees one
    else:
        import torch

        if not torch.cuda.is_available():
            print("error: --device cuda: no CUDA device is visible", file=sys.stderr)
            return 2
    # On a GPU every run of a seed at once: one small run leaves an H200 mostly idle, and 11 at once took 6.2 min
    # of wall time against 43.7 run-minutes (study_cuda/RESULTS.md), each run with one CPU thread and one worker.
    jobs = args.jobs or (2 if args.device == "cpu" else max(1, min(len(cells), os.cpu_count() or 1)))
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    env |= {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "NUMBA_NUM_THREADS": threads}

    os.chdir(REPO)  # the configs name the dataset root relative to the repository
    ensure_dataset(regime)
    cfg = load_config(
        CONFIG_DIR / "sup_only_fidnet.yaml",
        [f"data.root={regime['root']}", f"data.width={regime['image_width']}"],
    )
    data = build_data(cfg, progress=True)  # index once, before parallel runs would race to
    header = {
        "command": shlex.join(["python", "benchmarks/study.py", *sys.argv[1:]]),
        "revision": code_revision(),
        "device": args.device,
        "jobs": jobs,
        "threads_per_job": int(threads),
        "regime": regime,
        "dataset": {
            "name": cfg.data.dataset,
            "root": regime["root"],
            "train_scans": len(data.index.split("train")),
            "val_scans": len(data.index.split("val")),
            "image": f"{data.geometry.height}x{data.geometry.width}",
        },
        "model": {"name": cfg.model.name, "width": regime["model_width"]},
        "class_names": list(data.label_map.names),
        "machine": machine(),
    }
    # Seed by seed, so that every finished seed is a complete paired comparison; within a seed the longest
    # runs first, so that the parallel jobs finish together.
    cost = {"sup_only": 1, "mean_teacher": 2, "cps": 3, "lasermix": 4, "cps_lasermix": 6}
    todo = [(c, s) for s in seeds for c in sorted(cells, key=lambda c: -cost[c[0]])]
    try:
        recorder = Recorder(header, out, todo)
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    pending = [(c, s) for c, s in todo if not recorder.done(c, s)]
    print(f"{len(todo) - len(pending)} of {len(todo)} runs already recorded in {out / 'study.json'}")
    if not pending:
        recorder.write()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for future in [
            pool.submit(lambda c, s: recorder.add(run_one(c, s, args, env)), c, s) for c, s in pending
        ]:
            future.result()
    return 0


if __name__ == "__main__":
    sys.exit(main())
