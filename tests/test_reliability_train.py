"""Training loses nothing and mixes nothing: run folders are neither replaced nor shared, every bad setting is
refused at load time naming its key, non-finite points are counted, and a resumed run logs each step once."""

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tiny_runs import TINY, tiny

from rangecps.checkpoint import load_checkpoint
from rangecps.cli import train_main
from rangecps.config import ConfigError, load_config
from rangecps.folders import FolderInUse, folder_lock
from rangecps.train import train

REPO = Path(__file__).resolve().parents[1]


def cli_args(root: Path | str, out: Path, *extra: str, config: Path | None = None) -> list[str]:
    """``rangecps-train`` arguments of the tiny run (tests/tiny_runs.py) on ``root`` into ``out``."""
    if config is None:
        config = out.parent / "empty.yaml"
        config.write_text("{}\n")
    args = ["--config", str(config), "--out", str(out), "--no-progress"]
    for kv in (f"data.root={root}", *TINY):
        args += ["--set", kv]
    return args + list(extra)


def entries(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# --- run folders: never silently replaced, never shared ---------------------------------------------------------


def test_a_folder_holding_a_run_is_refused_unless_resumed_or_overwritten(
    synthetic_kitti: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    run = tmp_path / "run"
    base = cli_args(synthetic_kitti, run, "--set", "train.method=sup_only", "--set", "train.max_steps=1")
    assert train_main(base) == 0
    capsys.readouterr()
    before = (run / "last.pt").read_bytes(), (run / "metrics.jsonl").read_text()

    assert train_main(base) == 2  # the same command again: refused, the first run untouched
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: {run}: holds a training run (last.pt, best.pt, metrics.jsonl, summary.json"
    )
    assert err.rstrip().endswith("pass --resume auto to continue it or --overwrite to start over")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert ((run / "last.pt").read_bytes(), (run / "metrics.jsonl").read_text()) == before
    with pytest.raises(FileExistsError, match="--overwrite to start over"):
        train(tiny(synthetic_kitti, "train.method=sup_only", "train.max_steps=1"), run, progress=False)

    # --overwrite starts over: the earlier run's files go, other files (evaluation results) stay.
    (run / "eval_val_a").mkdir()
    (run / "eval_val_a" / "metrics.json").write_text("{}")
    (run / "tb" / "stale").write_text("")
    assert train_main([*base, "--set", "train.max_steps=2", "--overwrite"]) == 0
    assert [e["step"] for e in entries(run) if "train/loss" in e] == [1, 2]
    assert load_checkpoint(run / "last.pt")["step"] == 2
    assert (run / "eval_val_a" / "metrics.json").is_file() and not (run / "tb" / "stale").exists()

    # --overwrite and --resume auto contradict each other; --resume into a folder of another run would mix two.
    assert train_main([*base, "--overwrite", "--resume", "auto"]) == 2
    assert "pass one of them" in capsys.readouterr().err
    other = tmp_path / "other"
    assert (
        train_main(
            cli_args(synthetic_kitti, other, "--set", "train.method=sup_only", "--set", "train.max_steps=1")
        )
        == 0
    )
    capsys.readouterr()
    assert train_main([*base, "--set", "train.max_steps=2", "--resume", str(other / "last.pt")]) == 2
    assert "would mix two runs" in capsys.readouterr().err


def test_a_second_process_is_refused_while_the_first_trains(synthetic_kitti: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-c",
        "import sys; from rangecps.cli import train_main; sys.exit(train_main(sys.argv[1:]))",
    ]
    cmd += cli_args(synthetic_kitti, run, "--set", "train.max_steps=1")
    with folder_lock(run, "training run"):  # this process plays the first run
        with pytest.raises(FolderInUse, match=rf"another training run is writing here \(pid {os.getpid()}\)"):
            train(tiny(synthetic_kitti, "train.max_steps=1"), run, progress=False)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith(f"error: {run}: another training run is writing here (pid {os.getpid()})")
    assert "Traceback" not in done.stderr
    assert not (run / "metrics.jsonl").exists() and not (run / "last.pt").exists()


# --- non-finite values ---------------------------------------------------------------------------------------------


def test_a_nan_loss_names_the_batch_and_frees_the_folder(
    synthetic_kitti: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def nan_step(*args: object, **kwargs: object) -> dict[str, torch.Tensor]:
        return {"loss": torch.tensor(float("nan"), requires_grad=True)}

    monkeypatch.setattr("rangecps.train_stream.cps_step", nan_step)
    run = tmp_path / "run"
    with pytest.raises(FloatingPointError) as caught:
        train(tiny(synthetic_kitti, "train.method=cps", "train.max_steps=2"), run, progress=False)
    message = str(caught.value)
    assert message.startswith("step 1: loss is nan on a batch of scans 00/")
    assert "(unlabeled)" in message and "check these scans for invalid values first" in message
    assert "then lower optim.lr or change train.amp" in message
    with folder_lock(run, "training run"):  # the crashed run released its lock
        pass
    assert train_main(cli_args(synthetic_kitti, tmp_path / "cli", "--set", "train.max_steps=2")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: step 1: loss is nan on a batch of scans") and "Traceback" not in err


def test_non_finite_points_are_counted_and_reported(
    synthetic_kitti: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    from rangecps.data.build import build_data

    # Prepared on finite data; then the files go bad behind prep's back (same sizes and times): what training
    # reads may still hold NaN (prep itself refuses them).
    build_data(tiny(synthetic_kitti), progress=False)
    root = tmp_path / "data"
    shutil.copytree(synthetic_kitti, root)
    for scan in sorted((root / "sequences" / "00" / "velodyne").glob("*.bin")):
        stat = scan.stat()
        points = np.fromfile(scan, np.float32).reshape(-1, 4)
        points[7, 3] = np.nan  # one NaN intensity per training scan
        points.tofile(scan)
        os.utime(scan, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    run = tmp_path / "run"
    args = cli_args(root, run, "--set", "train.method=sup_only", "--set", "data.labels=100%")
    assert train_main([*args, "--set", "train.max_steps=2"]) == 0  # trains: the points get no pixel
    out = capsys.readouterr().out
    assert "note: 2 training points had a NaN or infinite value and got no pixel" in out
    assert "points with a NaN or infinite value get no pixel (1 in 00/" in out
    assert json.loads((run / "summary.json").read_text())["non_finite_points"] == 2
    assert all(np.isfinite(e["train/loss"]) for e in entries(run) if "train/loss" in e)
    # A resumed run counts on from its checkpoint.
    assert train_main([*args, "--set", "train.max_steps=3", "--resume", "auto"]) == 0
    assert json.loads((run / "summary.json").read_text())["non_finite_points"] == 3


# --- bad settings refused at load time ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batch_size=0", "data.batch_size: 0 is not allowed; must be >= 1"),
        ("data.unlabeled_batch_size=0", "data.unlabeled_batch_size: 0 is not allowed; must be >= 1"),
        ("train.val_every=0", "train.val_every: 0 is not allowed; must be >= 1"),
        ("train.log_every=0", "train.log_every: 0 is not allowed; must be >= 1"),
        ("train.ckpt_every=0", "train.ckpt_every: 0 is not allowed; must be >= 1"),
        ("train.max_steps=-3", "train.max_steps: -3 is not allowed; must be >= 1, or null for the full run"),
        ("train.max_steps=0", "train.max_steps: 0 is not allowed; must be >= 1, or null"),
        (
            "data.height=0",
            "data.height: 0 is not allowed; must be >= 1, or null for the dataset's native size",
        ),
        ("data.width=0", "data.width: 0 is not allowed; must be >= 1"),
        ("data.augment.dropout=1.0", "data.augment.dropout: 1.0 is not allowed; must lie in [0, 1)"),
        ("data.augment.dropout=-0.1", "data.augment.dropout: -0.1 is not allowed; must lie in [0, 1)"),
        (
            "data.augment.scale=[0, 1.05]",
            "data.augment.scale: (0.0, 1.05) is not allowed; needs 0 < low <= high",
        ),
        (
            "data.augment.scale=[1.1, 0.9]",
            "data.augment.scale: (1.1, 0.9) is not allowed; needs 0 < low <= high",
        ),
        (
            "loss.cps_threshold=1.5",
            "loss.cps_threshold: 1.5 is not allowed; a confidence threshold must lie in [0, 1]",
        ),
        ("semi.pseudo_threshold=-0.1", "semi.pseudo_threshold: -0.1 is not allowed; a confidence threshold"),
        ("loss.lovasz=-1", "loss.lovasz: -1.0 is not allowed; a loss weight must be >= 0"),
        ("loss.cps=-0.5", "loss.cps: -0.5 is not allowed; a loss weight must be >= 0"),
        ("semi.consistency=-1", "semi.consistency: -1.0 is not allowed; a loss weight must be >= 0"),
        ("train.epochs=0", "train.epochs: 0 is not allowed; must be >= 1"),
        (
            "train.epochs_by_labels={'10%': 0}",
            "train.epochs_by_labels: {'10%': 0} is not allowed; epochs must be",
        ),
        ("optim.lr=0", "optim.lr: 0.0 is not allowed; must be > 0"),
        ("optim.lr=-0.01", "optim.lr: -0.01 is not allowed; must be > 0"),
        ("optim.lr=.nan", "optim.lr: nan is not allowed; must be > 0"),
        ("data.labels=150%", "data.labels 150%: the labeled share must lie in (0%, 100%]"),
    ],
)
def test_bad_values_are_refused_at_load_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, [override])
    assert str(caught.value).startswith(f"--set: {message}")
    assert "\n" not in str(caught.value)


def test_bad_values_in_a_file_name_the_file_and_every_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"data": {"batch_size": 0}, "train": {"val_every": 0}}))
    with pytest.raises(ConfigError) as caught:
        load_config(path, ["optim.lr=0"])
    assert str(caught.value) == (
        f"{path}: data.batch_size: 0 is not allowed; must be >= 1; --set: optim.lr: 0.0 is not allowed; must be > 0; "
        f"{path}: train.val_every: 0 is not allowed; must be >= 1 (steps)"
    )


def test_the_cli_refuses_bad_values_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    for args, message in [
        (["--set", "train.val_every=0"], "error: --set: train.val_every: 0 is not allowed; must be >= 1 (steps)"),
        (["--labels", "10"], "error: --labels 10: a bare number is ambiguous; write the labeled share as a "
                             "percentage such as 10% (a bare number below 1 is a fraction: 0.1 means 10%)"),
        (["--labels", "1"], "error: --labels 1: a bare number is ambiguous; write the labeled share as a "
                            "percentage such as 1% or 100%"),
        (["--labels", "-5%"], "error: --labels -5%: the labeled share must lie in (0%, 100%]"),
        (["--labels", "150%"], "error: --labels 150%: the labeled share must lie in (0%, 100%]"),
        (["--labels", "ten"], "error: --labels 'ten': expected a percentage such as 10%"),
    ]:  # fmt: skip
        assert train_main([*args, "--out", str(run)]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith(message), (args, err)
        assert len(err.strip().splitlines()) == 1
    assert not run.exists()


def test_a_fraction_is_a_share_and_keys_the_epochs_of_that_share() -> None:
    cfg = load_config(None, ["data.labels='0.1'", "train.epochs_by_labels={'10.0%': 3, '0.5': 7}"])
    assert cfg.data.labels == "10%" and cfg.train.epochs_by_labels == {"10%": 3, "50%": 7}
    assert load_config(None, ["data.labels= 20 %"]).data.labels == "20%"


# --- resume ----------------------------------------------------------------------------------------------------------


def test_resume_accepts_a_path_written_differently_and_other_workers(
    synthetic_kitti: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    run = tmp_path / "run"
    base = ("train.method=sup_only", "train.epochs=2")
    train(
        tiny(synthetic_kitti, *base, "train.max_steps=1", f"data.root={synthetic_kitti}/"),
        run,
        progress=False,
    )
    monkeypatch.chdir(synthetic_kitti.parent)
    cfg = load_config(None, [f"data.root={synthetic_kitti.name}", *TINY, *base, "train.max_steps=2",
                             "data.num_workers=1"])  # fmt: skip
    summary = train(cfg, run, resume="auto", progress=False)
    assert summary["resumed_at_step"] == 1 and summary["steps"] == 2


def test_a_relative_root_is_recorded_absolute(
    synthetic_kitti: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    run = tmp_path / "run"
    monkeypatch.chdir(synthetic_kitti.parent)
    train(tiny(synthetic_kitti.name, "train.method=sup_only", "train.max_steps=1"), run, progress=False)
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["root"] == str(synthetic_kitti)
    assert load_checkpoint(run / "last.pt")["config"]["data"]["root"] == str(synthetic_kitti)
    assert load_checkpoint(run / "best.pt")["config"]["data"]["root"] == str(synthetic_kitti)
    monkeypatch.chdir(tmp_path)  # evaluation from elsewhere reads the same data
    from rangecps.eval.evaluate import evaluate

    result = evaluate(run, knn=False, progress=False, device="cpu")
    assert result["levels"]


def test_a_resumed_run_logs_every_step_once(synthetic_kitti: Path, tmp_path: Path, one_thread: None) -> None:
    run = tmp_path / "run"
    base = ("train.method=cps", "train.epochs=2", "train.val_every=1")
    train(tiny(synthetic_kitti, *base, "train.max_steps=2"), run, progress=False)
    at_two = tmp_path / "last-at-2.pt"
    shutil.copy(run / "last.pt", at_two)
    train(tiny(synthetic_kitti, *base, "train.max_steps=3"), run, resume="auto", progress=False)
    # A kill after step 3 was logged but before its checkpoint: last.pt is still step 2's, the log has step 3 and a
    # line cut short.
    shutil.copy(at_two, run / "last.pt")
    (run / "summary.json").unlink()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "train/lo')
    summary = train(tiny(synthetic_kitti, *base, "train.max_steps=3"), run, resume="auto", progress=False)
    logged = entries(run)
    assert [e["step"] for e in logged if "train/loss" in e] == [1, 2, 3]
    assert [e["step"] for e in logged if "val/miou_a" in e] == [1, 2, 3]
    assert summary["resumed_at_step"] == 2 and summary["steps"] == 3
    assert load_checkpoint(run / "best.pt")["best_steps"] == summary["best_steps"]


def test_resuming_a_complete_run_changes_nothing(
    synthetic_kitti: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    run = tmp_path / "run"
    args = cli_args(synthetic_kitti, run, "--set", "train.method=sup_only", "--set", "train.max_steps=2")
    args += ["--labels", "0.5"]  # a fraction: 50 %, recorded as such
    assert train_main(args) == 0
    assert "note: --labels 0.5 read as the fraction 50%" in capsys.readouterr().out
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["labels"] == "50%"
    files = ("summary.json", "metrics.jsonl", "config.yaml", "last.pt", "best.pt")
    before = {name: (run / name).read_bytes() for name in files}
    stamps = {name: (run / name).stat().st_mtime_ns for name in files}
    assert train_main([*args, "--resume", "auto"]) == 0
    out = capsys.readouterr().out
    assert f"{run}: the run is complete at step 2; nothing to do (raise train.max_steps to go on)" in out
    assert {name: (run / name).read_bytes() for name in files} == before
    assert {name: (run / name).stat().st_mtime_ns for name in files} == stamps
    summary = json.loads(before["summary.json"])
    assert summary["val_pixel_miou"] and summary["steps"] == 2


# --- the command line -----------------------------------------------------------------------------------------------


def test_every_train_option_has_help(monkeypatch: pytest.MonkeyPatch) -> None:
    parsers: list[argparse.ArgumentParser] = []

    def capture(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        parsers.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(SystemExit):
        train_main([])
    options = {a.option_strings[-1]: a.help for a in parsers[0]._actions}
    assert {"--overwrite", "--resume", "--no-progress", "--labels"} <= set(options)
    assert all(options.values()), [k for k, v in options.items() if not v]
