"""Evaluation and inference outputs: nothing lost, nothing mixed, every bad input named.

Results folders are replaced whole and only when complete, under a lock; a finished evaluation's metrics survive a
full disk or a read-only folder; readers refuse prediction trees without a complete manifest; non-finite points are
counted; the command lines name every option and print no Open3D noise.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_evaluate import make_run

from rangecps.checkpoint import load_checkpoint, save_checkpoint
from rangecps.cli import eval_main
from rangecps.eval.evaluate import ResultsNotWritten, evaluate
from rangecps.eval.outputs import MANIFEST, IncompleteResults
from rangecps.eval.submit import KittiWriter
from rangecps.folders import folder_lock
from rangecps.io import read_kitti_labels, read_kitti_points
from rangecps.labels import load_label_map

KITTI_LM = load_label_map("semantickitti")
FAST = ["--no-knn", "--num-workers", "0", "--no-progress"]


@pytest.fixture(scope="module")
def kitti_run(synthetic_kitti: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-net (CPS) run on the synthetic KITTI root, 32 x 96 images."""
    return make_run(
        tmp_path_factory.mktemp("rel_run"), synthetic_kitti, "synthetic_kitti", 2, "data.height=32"
    )


@pytest.fixture
def run_copy(kitti_run: Path, tmp_path: Path) -> Path:
    """A private copy of the run folder (tests that replace its checkpoint or fill its eval folders)."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(kitti_run / "best.pt", run / "best.pt")
    return run


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (the lock aside) and its bytes."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def hidden_siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


def swap_nets(run: Path) -> None:
    """Make the run's checkpoint another model: net a takes net b's weights (a retrained run, say)."""
    state = load_checkpoint(run / "best.pt", "cpu")
    state["nets"] = state["nets"][::-1]
    state["step"] = 8
    save_checkpoint(run / "best.pt", state)


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------ earlier results and the lock


def test_eval_out_holding_results_needs_overwrite(
    run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    assert eval_main([str(run_copy), "--out", str(out), *FAST]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line == (
        f"error: {out}: holds earlier results (metrics.json, notes.txt); choose another --out or pass "
        "--overwrite to replace them"
    )
    assert snapshot(out) == before
    # --overwrite replaces the whole folder: nothing of the earlier one stays beside the new results.
    assert eval_main([str(run_copy), "--out", str(out), "--overwrite", *FAST]) == 0
    assert "note: replaced the earlier results in" in capsys.readouterr().out
    assert sorted(snapshot(out)) == ["manifest.json", "metrics.json"]
    assert json.loads((out / "metrics.json").read_text())["step"] == 7
    # A folder that holds the checkpoint is never replaced, --overwrite or not.
    assert eval_main([str(run_copy), "--out", str(run_copy), "--overwrite", *FAST]) == 2
    assert "holds the checkpoint" in one_line_error(capsys.readouterr().err)
    assert (run_copy / "best.pt").is_file()


def test_default_eval_folder_is_replaced_by_a_complete_evaluation(
    run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default folder is the tool's own: evaluating again replaces it, predictions of the earlier
    checkpoint included, with no --overwrite; stale staging folders of killed runs are removed."""
    assert eval_main([str(run_copy), "--write-predictions", *FAST]) == 0
    default = run_copy / "eval_val_a"
    assert (default / "sequences" / "08" / "predictions" / "000000.label").is_file()
    stale = run_copy / ".eval_val_a.partial-999999"
    (stale / "sequences").mkdir(parents=True)
    capsys.readouterr()
    assert eval_main([str(run_copy), *FAST]) == 0
    assert f"note: replaced the earlier results in {default}" in capsys.readouterr().out
    assert sorted(snapshot(default)) == ["manifest.json", "metrics.json"]  # no predictions of the earlier run
    assert not stale.exists() and hidden_siblings(default) == []


def test_second_writer_is_refused_by_the_lock(
    run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "busy"
    with folder_lock(out, "evaluation"):  # another process's evaluation, as far as the lock can tell
        assert eval_main([str(run_copy), "--out", str(out), *FAST]) == 2
        line = one_line_error(capsys.readouterr().err)
        assert line.startswith(f"error: {out}: another evaluation is writing here (pid {os.getpid()})")
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    assert eval_main([str(run_copy), "--out", str(out), *FAST]) == 0  # free again


# ---------------------------------------------------------------------------------------- all or nothing


def test_failed_evaluation_leaves_the_earlier_folder_as_it_was(
    run_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash (or kill) half-way used to leave prediction files of two checkpoints side by side, with the old
    metrics.json; now the earlier folder stays exactly as it was and no staging folder is left."""
    evaluate(run_copy, knn=False, write_predictions=True, num_workers=0, progress=False)
    default = run_copy / "eval_val_a"
    before = snapshot(default)
    swap_nets(run_copy)  # a different model now: its predictions differ

    import rangecps.eval.evaluate as ev

    real, calls = ev.segment_batch, []

    def crash_on_second(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a Ctrl-C, or any failure, half-way through the split
        return real(*args, **kwargs)

    monkeypatch.setattr(ev, "segment_batch", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        evaluate(run_copy, knn=False, write_predictions=True, num_workers=0, progress=False)
    assert len(calls) == 2
    assert snapshot(default) == before
    assert hidden_siblings(default) == []
    manifest = json.loads((default / MANIFEST).read_text())
    assert manifest["step"] == 7 and manifest["complete"] is True


def test_manifest_is_written_and_readers_refuse_trees_without_it(
    run_copy: Path, synthetic_kitti: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rangecps.vis import vis_main
    from rangecps.vis.scans import find_prediction_dir, open_dataset, read_predictions

    evaluate(run_copy, knn=False, write_predictions=True, num_workers=0, progress=False)
    default = run_copy / "eval_val_a"
    manifest = json.loads((default / MANIFEST).read_text())
    assert manifest["complete"] is True and manifest["checkpoint"] == str(run_copy / "best.pt")
    assert manifest["step"] == 7 and manifest["revision"] == "test-revision" and manifest["scans"] == 3
    assert manifest["predictions"] is True and manifest["net"] == "a" and manifest["split"] == "val"
    assert manifest["files"] == [
        "metrics.json",
        *(f"sequences/08/predictions/00000{i}.label" for i in range(3)),
    ]
    label = default / "sequences" / "08" / "predictions" / "000001.label"
    n = len(read_kitti_points(synthetic_kitti / "sequences" / "08" / "velodyne" / "000001.bin"))
    assert find_prediction_dir(run_copy, "val") == default
    assert read_predictions(label, "kitti", KITTI_LM, n).shape == (n,)

    # A stray file in the tree (left by another evaluation) is not read, nor zipped.
    stray = default / "sequences" / "08" / "predictions" / "000009.label"
    shutil.copy(label, stray)
    with pytest.raises(IncompleteResults, match=r"not among the files .*manifest\.json lists"):
        read_predictions(stray, "kitti", KITTI_LM, n)
    writer = KittiWriter(default, KITTI_LM)
    writer.written = [f"sequences/08/predictions/00000{i}.label" for i in range(3)]
    with pytest.raises(ValueError, match=r"000009\.label: not written by this evaluation"):
        writer.finish()
    assert not (default / "submission.zip").exists()
    stray.unlink()

    # Without its manifest (an evaluation from before manifests, or one that mixed two) the tree is refused.
    (default / MANIFEST).unlink()
    with pytest.raises(IncompleteResults, match=re.escape(f"{default}: no manifest.json")):
        find_prediction_dir(run_copy, "val")
    with pytest.raises(IncompleteResults, match=r"no manifest\.json"):
        read_predictions(label, "kitti", KITTI_LM, n)
    with pytest.raises(IncompleteResults, match=r"no manifest\.json"):
        open_dataset(synthetic_kitti, "val", pred_dir=default)
    args = ["dataset", str(synthetic_kitti), "--run", str(run_copy), "--save", str(tmp_path / "x.png")]
    assert vis_main(args) == 2
    line = one_line_error(capsys.readouterr().err)
    assert f"{default}: no manifest.json" in line and "--write-predictions" in line
    (default / MANIFEST).write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(IncompleteResults, match="does not mark the results complete"):
        find_prediction_dir(run_copy, "val")
    # Prediction files of other tools (no rangecps-eval folder around them) are read as they are.
    other = tmp_path / "other" / "sequences" / "08" / "predictions" / "000001.label"
    other.parent.mkdir(parents=True)
    shutil.copy(label, other)
    assert read_predictions(other, "kitti", KITTI_LM, n).shape == (n,)


def enospc(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_while_writing_predictions_keeps_the_metrics(
    run_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import rangecps.eval.submit as submit

    real, calls = submit.write_kitti_labels, []

    def full_on_second(*args: object) -> None:
        calls.append(1)
        if len(calls) == 2:
            enospc()
        real(*args)

    monkeypatch.setattr(submit, "write_kitti_labels", full_on_second)
    out = tmp_path / "res"
    assert eval_main([str(run_copy), "--out", str(out), "--write-predictions", *FAST]) == 2
    captured = capsys.readouterr()
    line = one_line_error(captured.err)
    assert line == (
        f"error: {out}/sequences/08/predictions/000001.label: No space left on device; no predictions written; "
        f"metrics.json written to {out}"
    )
    assert "range-pixel mIoU" in captured.out  # the report, as after any evaluation
    assert sorted(snapshot(out)) == ["manifest.json", "metrics.json"]  # no half prediction tree
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["predictions"] is False and set(metrics["levels"]) == {"point", "range_pixel"}
    assert json.loads((out / MANIFEST).read_text())["predictions"] is False

    # The archive fails on a full disk: metrics and predictions stay, no zip, one line.
    monkeypatch.setattr(submit, "write_kitti_labels", real)
    monkeypatch.setattr(submit, "_write_zip", enospc)
    sub = tmp_path / "sub"
    assert eval_main([str(run_copy), "--out", str(sub), "--submission", *FAST]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line == (
        f"error: {sub}/submission.zip: No space left on device; no submission written; "
        f"metrics.json written to {sub}"
    )
    assert (sub / "metrics.json").is_file() and not (sub / "submission.zip").exists()
    assert len(list((sub / "sequences" / "08" / "predictions").glob("*.label"))) == 3


@pytest.fixture
def tmp_cleanup() -> Iterator[list[Path]]:
    made: list[Path] = []
    yield made
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


def test_metrics_that_cannot_be_written_go_elsewhere(
    run_copy: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_cleanup: list[Path],
) -> None:
    """A finished evaluation is not lost when its folder is full: the report goes to the console, metrics.json
    to a temporary folder, the message says where, and the earlier results folder stays as it was."""
    import rangecps.eval.evaluate as ev

    real = ev.atomic_write

    def full_results_folder(path: Path, mode: str = "wb") -> object:
        if ".partial-" in str(path):
            enospc()
        return real(path, mode)

    out = tmp_path / "res"
    out.mkdir()
    (out / "metrics.json").write_text('{"earlier": true}')
    monkeypatch.setattr(ev, "atomic_write", full_results_folder)
    assert eval_main([str(run_copy), "--out", str(out), "--overwrite", *FAST]) == 2
    captured = capsys.readouterr()
    line = one_line_error(captured.err)
    prefix = f"error: {out}/metrics.json: No space left on device; metrics.json written to "
    assert line.startswith(prefix) and line.endswith("/metrics.json instead")
    saved = Path(line[len(prefix) : -len(" instead")])
    tmp_cleanup.append(saved.parent)
    metrics = json.loads(saved.read_text())
    assert metrics["step"] == 7 and metrics["out_dir"] == str(out)
    miou = metrics["levels"]["point"]["miou"]
    assert f"{100 * miou:.2f}" in captured.out  # the report printed the same figure
    assert snapshot(out) == {"metrics.json": b'{"earlier": true}'} and hidden_siblings(out) == []

    # The Python API raises with the result attached.
    with pytest.raises(ResultsNotWritten) as info:
        evaluate(run_copy, knn=False, out=out, overwrite=True, num_workers=0, progress=False)
    assert info.value.result["levels"]["point"]["miou"] == miou
    tmp_cleanup.append(Path(str(info.value).split("written to ")[1].split(" instead")[0]).parent)


def test_read_only_output_is_one_line(
    run_copy: Path, infer_run: Path, synthetic_kitti: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder that cannot be written was an OSError traceback: now one line naming it, before any work."""
    from rangecps.deploy.infer import infer_main
    from rangecps.vis import vis_main

    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        if os.access(parent, os.W_OK):
            pytest.skip("chmod does not stop this user (root) from writing")
        out = parent / "res"
        assert eval_main([str(run_copy), "--out", str(out), *FAST]) == 2
        assert one_line_error(capsys.readouterr().err) == (
            f"error: {out}: cannot write the results folder (Permission denied); choose another --out"
        )
        velodyne = synthetic_kitti / "sequences" / "08" / "velodyne"
        assert infer_main([str(infer_run), str(velodyne), "--out", str(out), "--no-progress"]) == 2
        assert one_line_error(capsys.readouterr().err) == (
            f"error: {out}: cannot write the results folder (Permission denied); choose another --out"
        )
        strip = parent / "strip.png"
        assert vis_main(["scan", str(velodyne / "000000.bin"), "--strip", str(strip)]) == 2
        assert one_line_error(capsys.readouterr().err) == f"error: {strip}: Permission denied"
        assert not out.exists() and sorted(p.name for p in parent.iterdir()) == []
    finally:
        parent.chmod(0o755)


# ----------------------------------------------------------------------------------------- rangecps-infer


@pytest.fixture(scope="module")
def infer_run(kitti_run: Path, synthetic_kitti: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CPS run with the pipeline rangecps-infer reads (geometry, statistics) stored in its checkpoint."""
    from rangecps.data.build import build_data
    from rangecps.data.pipeline import ScanPipeline
    from rangecps.eval.runs import load_run

    run = tmp_path_factory.mktemp("infer_run")
    state = load_checkpoint(kitti_run / "best.pt", "cpu")
    cfg = load_run(kitti_run).cfg
    state["derived"]["pipeline"] = ScanPipeline.from_bundle(build_data(cfg, progress=False)).to_dict()
    save_checkpoint(run / "best.pt", state)
    return run


def test_infer_lock_full_disk_and_earlier_results(
    infer_run: Path,
    synthetic_kitti: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from rangecps.deploy import infer

    velodyne = synthetic_kitti / "sequences" / "08" / "velodyne"
    out = tmp_path / "preds"
    base = [str(infer_run), str(velodyne), "--out", str(out), "--no-progress", "--no-knn"]
    with folder_lock(out, "rangecps-infer run"):
        assert infer.infer_main(base) == 2
        line = one_line_error(capsys.readouterr().err)
        assert line.startswith(
            f"error: {out}: another rangecps-infer run is writing here (pid {os.getpid()})"
        )
    shutil.rmtree(out)

    assert infer.infer_main(base) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert infer.infer_main(base) == 2
    assert one_line_error(capsys.readouterr().err) == (
        f"error: {out}: holds earlier results (predictions, summary.json); choose another --out or pass "
        "--overwrite to replace them"
    )

    real, calls = infer.write_kitti_labels, []

    def full_on_second(*args: object) -> None:
        calls.append(1)
        if len(calls) == 2:
            enospc()
        real(*args)

    monkeypatch.setattr(infer, "write_kitti_labels", full_on_second)
    assert infer.infer_main([*base, "--overwrite"]) == 2
    assert one_line_error(capsys.readouterr().err) == (
        f"error: {out}/predictions/000001.label: No space left on device; nothing written to --out"
    )
    assert snapshot(out) == before and hidden_siblings(out) == []


# ----------------------------------------------------------------------------------------- non-finite points


def test_nan_intensities_evaluate_with_finite_metrics(
    synthetic_kitti: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Points with a NaN intensity get no pixel, still get a label (the fallback class), are counted in
    metrics.json and named in the report, and the metrics stay finite."""
    root = tmp_path / "kitti"
    for seq in ("00", "08"):
        shutil.copytree(synthetic_kitti / "sequences" / seq, root / "sequences" / seq)
    run = make_run(tmp_path / "run", root, "synthetic_kitti", 1, "data.height=32")  # prepares the root
    scan = root / "sequences" / "08" / "velodyne" / "000001.bin"
    points = read_kitti_points(scan).copy()
    bad = np.arange(0, len(points), 50)
    points[bad, 3] = np.nan
    # Prep refuses non-finite values and prepares a root again when a file's size or time changes; this file
    # keeps both, as a file rewritten in place with its time kept would, so evaluation meets the NaN points.
    stamp = scan.stat()
    points.astype(np.float32).tofile(scan)
    os.utime(scan, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))

    assert eval_main([str(run), "--write-predictions", "--num-workers", "0", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"{len(bad)} points with a NaN or infinite value" in printed
    metrics = json.loads((run / "eval_val_a" / "metrics.json").read_text())
    assert metrics["non_finite_points"] == len(bad)
    assert metrics["points_without_pixel"] >= len(bad)
    for level in metrics["levels"].values():
        assert np.isfinite(level["miou"]) and np.isfinite(level["accuracy"])
        assert all(v is None or np.isfinite(v) for v in level["iou"].values())
    labels, _ = read_kitti_labels(run / "eval_val_a" / "sequences" / "08" / "predictions" / "000001.label")
    assert len(labels) == len(points)
    train = KITTI_LM.to_train(labels)
    assert train.min() >= 1 and len(np.unique(train[bad])) == 1  # every NaN point: the one fallback class


# ------------------------------------------------------------------------------------------ command lines


def _parsers(monkeypatch: pytest.MonkeyPatch) -> dict[str, argparse.ArgumentParser]:
    """The parsers of rangecps-eval, rangecps-vis (and its sub-commands) and rangecps-infer."""
    from rangecps.deploy.infer import parser as infer_parser
    from rangecps.vis.main import _parser as vis_parser

    caught: list[argparse.ArgumentParser] = []

    class Stop(Exception):
        pass

    def grab(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        caught.append(self)
        raise Stop

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", grab)
    with pytest.raises(Stop):
        eval_main([])
    monkeypatch.undo()
    found = {"rangecps-eval": caught[0], "rangecps-infer": infer_parser()}
    vis = vis_parser()
    found["rangecps-vis"] = vis
    for action in vis._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[f"rangecps-vis {name}"] = sub
    return found


def test_every_option_has_a_help_text(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = [
        f"{prog} {action.option_strings[-1] if action.option_strings else action.dest}"
        for prog, p in _parsers(monkeypatch).items()
        for action in p._actions
        if not isinstance(action, argparse._SubParsersAction) and not (action.help or "").strip()
    ]
    assert missing == []


RENDER = """
import sys
from rangecps.vis.main import vis_main
sys.exit(vis_main(["scan", sys.argv[1], "--save", sys.argv[2], "--width", "64", "--height", "48"]))
"""


@pytest.mark.parametrize("xdg", [None, "relative"])
def test_offscreen_render_prints_no_xdg_error(synthetic_kitti: Path, tmp_path: Path, xdg: str | None) -> None:
    """Open3D's window library said ``error: XDG_RUNTIME_DIR is invalid or not set in the environment.`` on
    every off-screen render without that variable. The render runs in a fresh process: the library reads the
    variable once."""
    pytest.importorskip("open3d", reason="the 3D views need the vis extra: pip install 'rangecps[vis]'")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "XDG_RUNTIME_DIR")}
    if xdg is not None:
        env["XDG_RUNTIME_DIR"] = xdg
    scan = synthetic_kitti / "sequences" / "08" / "velodyne" / "000000.bin"
    out = tmp_path / "render.png"
    done = subprocess.run(
        [sys.executable, "-c", RENDER, str(scan), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "XDG_RUNTIME_DIR" not in done.stderr, done.stderr
    assert out.is_file()


def test_runtime_dir_is_private_and_restored(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from rangecps.vis.viewer import runtime_dir, usable_runtime_dir

    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    with runtime_dir():
        inside = os.environ["XDG_RUNTIME_DIR"]
        assert usable_runtime_dir(inside)
    assert "XDG_RUNTIME_DIR" not in os.environ and not Path(inside).exists()
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(shared))  # others may enter: not a runtime dir
    with runtime_dir():
        assert os.environ["XDG_RUNTIME_DIR"] != str(shared)
    assert os.environ["XDG_RUNTIME_DIR"] == str(shared)
    shared.chmod(0o700)
    with runtime_dir():  # a usable one is kept
        assert os.environ["XDG_RUNTIME_DIR"] == str(shared)


def test_evaluation_normalises_with_the_checkpoints_statistics(synthetic_kitti: Path, tmp_path: Path) -> None:
    """A root prepared again with other training statistics evaluates a run exactly as before: the input
    encoding comes from the checkpoint, not from the root's stats.json of today."""
    import shutil

    from tiny_runs import tiny

    from rangecps.eval.evaluate import evaluate as run_eval
    from rangecps.io import read_kitti_labels, read_kitti_points, write_kitti_labels, write_kitti_points
    from rangecps.train import train

    root = tmp_path / "root"
    shutil.copytree(synthetic_kitti, root)
    shutil.rmtree(root / "rangecps", ignore_errors=True)
    cfg = tiny(root, "train.method=sup_only", "train.epochs=1", "train.max_steps=1")
    train(cfg, tmp_path / "run", progress=False)
    before = run_eval(tmp_path / "run", out=tmp_path / "e1", num_workers=0, progress=False)
    stats_before = (root / "rangecps" / "stats.json").read_text()
    # A far-away copy of a training scan shifts the training statistics; the root is prepared again.
    seq = root / "sequences" / "00"
    points = read_kitti_points(seq / "velodyne" / "000000.bin")
    points[:, :3] *= 3.0
    write_kitti_points(seq / "velodyne" / "000099.bin", points)
    write_kitti_labels(seq / "labels" / "000099.label", read_kitti_labels(seq / "labels" / "000000.label")[0])
    after = run_eval(tmp_path / "run", out=tmp_path / "e2", num_workers=0, progress=False)
    assert (root / "rangecps" / "stats.json").read_text() != stats_before
    assert after["levels"] == before["levels"]
