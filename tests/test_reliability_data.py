"""Nothing lost, nothing mixed, every bad input named: the data side (simulator staging, stale indexes and caches,
prepared data apart from a read-only root, one-line messages for bad roots and files, partial roots)."""

import argparse
import fcntl
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tiny_runs import TINY, tiny

from rangecps.cli import prep_main
from rangecps.data import DATASETS
from rangecps.data.build import build_data
from rangecps.data.prep import DatasetProblems, load_prepared, prepare
from rangecps.io import ScanFormatError, read_nuscenes_points
from rangecps.sim import generate


def copy_root(src: Path, dst: Path) -> Path:
    """A private copy of a session dataset (without what earlier tests prepared inside it)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("rangecps"))
    return dst


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    out["."] = (0, root.stat().st_mtime_ns)
    return out


def error_lines(err: str) -> list[str]:
    """The messages of stderr (progress bars left out); a traceback shows as its first line."""
    return [line for line in err.splitlines() if line.startswith(("error", "problem", "note", "Traceback"))]


# ----------------------------------------------------------------------------------------- simulator staging


def staging_folders(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.endswith(".partial")]


def test_staging_folder_is_removed_when_generation_is_terminated(tmp_path: Path) -> None:
    out = tmp_path / "root"
    code = (
        "from rangecps.sim.generate import generate_dataset\n"
        f"generate_dataset('semantickitti', {str(out)!r}, 2, 200, 0, progress=False)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not any((p / "sequences").exists() for p in staging_folders(tmp_path)):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the generator never started writing"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGTERM  # still ends as a terminated process
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no .partial, no dataset, no lock


def test_terminated_generation_ends_by_the_signal_whatever_exception_carried_it(tmp_path: Path) -> None:
    # A handler that runs inside a call from numba's compiled code surfaces as a SystemError wrapping the
    # handler's exception; a library may likewise convert it. The process must still end as terminated.
    code = (
        "import os, signal\n"
        "from rangecps.sim.generate import _terminate_cleanly\n"
        "with _terminate_cleanly():\n"
        "    try:\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        signal.pause()\n"
        "    except BaseException as e:\n"
        "        raise SystemError('returned a result with an exception set') from e\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGTERM, proc.stderr.decode()


def test_staging_folder_of_a_killed_run_is_removed_by_the_next_run(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname().replace(".", "_")
    abandoned = tmp_path / f".root.{host}.{dead.pid}.x1y2z3.partial"
    (abandoned / "sequences").mkdir(parents=True)
    (abandoned / "sequences" / "half.bin").write_bytes(b"\0" * 16)
    other_host = tmp_path / f".root.otherhost.{dead.pid}.x1y2z3.partial"
    other_host.mkdir()
    generate.generate_dataset("semantickitti", tmp_path / "root", 2, 1, 0, progress=False)
    assert not abandoned.exists()
    assert other_host.exists()  # another machine's writer may be alive: left alone
    assert sorted(p.name for p in tmp_path.iterdir()) == [other_host.name, "root"]


def test_second_generation_into_one_folder_is_refused_before_simulating(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "root"
    simulated = []
    monkeypatch.setattr(generate, "simulate_sequence", lambda *a, **k: simulated.append(a) or iter(()))
    with open(tmp_path / ".root.lock", "a") as held:  # what a running rangecps-prep holds
        fcntl.flock(held, fcntl.LOCK_EX)
        assert prep_main(["synthetic", "--out", str(out), "--sequences", "2"]) == 2
    err = capsys.readouterr().err
    assert error_lines(err) == [f"error: {out}: another rangecps-prep is writing this folder now; "
                                "wait for it or choose another folder"]  # fmt: skip
    assert simulated == [] and not out.exists() and staging_folders(tmp_path) == []


def test_generation_that_loses_the_race_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "root"
    real = generate.GENERATORS["semantickitti"]

    def other_run_finishes_first(*args) -> None:
        real(*args)
        (out / "sequences").mkdir(parents=True)  # what the other run renamed into place meanwhile

    monkeypatch.setitem(generate.GENERATORS, "semantickitti", other_run_finishes_first)
    with pytest.raises(FileExistsError) as err:
        generate.generate_dataset("semantickitti", out, 1, 1, 0, progress=False)
    assert (
        str(err.value) == f"{out}: another rangecps-prep wrote {out} first; this run's dataset was discarded"
    )
    assert staging_folders(tmp_path) == []


# --------------------------------------------------------------------------------- stale indexes and caches


def test_cache_of_full_labels_is_not_used_by_a_scribble_run(
    synthetic_kitti: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = copy_root(synthetic_kitti, tmp_path / "root")
    assert prep_main(["synthetic_kitti", "--root", str(root), "--cache"]) == 0
    # ScribbleKITTI prepared on the same root (without --cache) leaves the full-label cache beside its index.
    assert prep_main(["synthetic_scribblekitti", "--root", str(root)]) == 0
    capsys.readouterr()
    data = build_data(tiny(root, "data.dataset=synthetic_scribblekitti", "data.width=2048"), progress=False)
    assert data.cache_dir() is None and data.cache_dir() is None
    err = capsys.readouterr().err
    assert error_lines(err) == [
        f"note: {root / 'rangecps' / 'cache'}: cached range images not used: it holds synthetic_kitti scans "
        "labeled from labels (train), this run reads synthetic_scribblekitti scans labeled from scribbles (train)"
    ]  # said once
    ds = data.dataset("train", labels=True)
    full = DATASETS["synthetic_kitti"]
    assert all("/scribbles/" in r.labels for r in ds.records) and ds.cache_dir is None
    labeled = (ds[0]["label"] > 0).float().mean()
    data_full = build_data(tiny(root, f"data.dataset={full.name}", "data.width=2048"), progress=False)
    assert data_full.cache_dir() == root / "rangecps" / "cache"  # the matching run still uses it
    assert labeled < 0.5 * (data_full.dataset("train")[0]["label"] > 0).float().mean()


def test_index_of_another_dataset_kind_is_made_again_with_a_note(
    synthetic_kitti: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = copy_root(synthetic_kitti, tmp_path / "root")
    prepare(DATASETS["synthetic_kitti"], root, progress=False)
    index, stats = load_prepared(DATASETS["synthetic_scribblekitti"], root, progress=False)
    assert index.dataset == "synthetic_scribblekitti"
    assert all("/scribbles/" in r.labels for r in index.split("train"))
    assert stats.class_counts[0] > 3 * sum(stats.class_counts[1:])  # scribbles label few points
    err = capsys.readouterr().err
    assert f"note: {root / 'rangecps'}: prepared files not used: it indexes synthetic_kitti, not " in err


def test_index_is_made_again_when_files_change(
    synthetic_kitti: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cls = DATASETS["synthetic_kitti"]
    root = copy_root(synthetic_kitti, tmp_path / "root")
    prepare(cls, root, progress=False)
    # Unchanged: used as it is, silently.
    load_prepared(cls, root, progress=False)
    assert capsys.readouterr().err == ""
    # A new scan: indexed.
    seq = root / "sequences" / "08"
    shutil.copy(seq / "velodyne" / "000002.bin", seq / "velodyne" / "000003.bin")
    shutil.copy(seq / "labels" / "000002.label", seq / "labels" / "000003.label")
    index, _ = load_prepared(cls, root, progress=False)
    assert index.ids("val")[-1] == "08/000003"
    assert "scans were added to or removed from" in capsys.readouterr().err
    # A label file rewritten in place: the statistics are computed again.
    label = root / "sequences" / "00" / "labels" / "000000.label"
    raw = np.fromfile(label, np.uint32)
    raw[:] = 40  # every point road
    raw.tofile(label)
    _, stats = load_prepared(cls, root, progress=False)
    assert "files under" in capsys.readouterr().err
    _, before = prepare(cls, synthetic_kitti, tmp_path / "reference", progress=False)[:2]
    assert stats.class_counts != before.class_counts


def test_index_of_an_older_rangecps_is_made_again(synthetic_kitti: Path, tmp_path: Path) -> None:
    cls = DATASETS["synthetic_kitti"]
    root = copy_root(synthetic_kitti, tmp_path / "root")
    prepare(cls, root, progress=False)
    path = root / "rangecps" / "index.json"
    data = json.loads(path.read_text())
    del data["source"]
    path.write_text(json.dumps(data))
    index, _ = load_prepared(cls, root, progress=False)
    assert index.source is not None and "source" in json.loads(path.read_text())


# ------------------------------------------------------------------------------ prepared data apart from the root


def test_read_only_root_trains_from_a_separate_prep_dir(
    synthetic_kitti: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from rangecps.cli import train_main

    root = copy_root(synthetic_kitti, tmp_path / "root")
    prep = tmp_path / "prep"
    assert prep_main(["synthetic_kitti", "--root", str(root), "--out", str(prep), "--cache"]) == 0
    make_read_only(root)
    try:
        before = tree(root)
        capsys.readouterr()
        cfg = tiny(root, f"data.prep_dir={prep}", "data.width=2048")
        data = build_data(cfg, progress=False)
        assert data.cache_dir() == prep / "cache"  # the cache of the prep dir, made from these files
        assert data.dataset("val")[0]["input"].shape == (6, 64, 2048)
        run = tmp_path / "run"
        argv = [
            "--set",
            f"data.root={root}",
            "--set",
            f"data.prep_dir={prep}",
            "--out",
            str(run),
            "--no-progress",
        ]
        overrides = [*TINY, "train.method=sup_only", "train.max_steps=1", "train.epochs=1"]
        for o in overrides:
            argv += ["--set", o]
        assert train_main(argv) == 0, capsys.readouterr().err
        assert (run / "last.pt").is_file()
        assert tree(root) == before  # nothing written into the dataset root
        assert "prepared files not used" not in capsys.readouterr().err  # used as they are
    finally:
        make_writable(root)


def make_read_only(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def make_writable(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)


def test_read_only_root_without_prep_dir_names_the_setting(synthetic_kitti: Path, tmp_path: Path) -> None:
    root = copy_root(synthetic_kitti, tmp_path / "root")
    make_read_only(root)
    try:
        if os.access(root, os.W_OK):
            pytest.skip("running as root: permissions do not make the dataset root read-only here")
        with pytest.raises(ValueError) as err:
            build_data(tiny(root), progress=False)
        assert str(err.value) == (
            f"{root / 'rangecps'}: cannot write the prepared files (Permission denied); choose a writable "
            "folder with data.prep_dir (rangecps-prep --out)"
        )
    finally:
        make_writable(root)


def test_unwritable_prep_dir_is_named_with_the_setting(synthetic_kitti: Path, tmp_path: Path) -> None:
    root = copy_root(synthetic_kitti, tmp_path / "root")
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the prep folder should be")
    with pytest.raises(ValueError) as err:
        build_data(tiny(root, f"data.prep_dir={blocked}"), progress=False)
    assert str(err.value).startswith(f"{blocked}: cannot write the prepared files (")
    assert str(err.value).endswith("choose a writable folder with data.prep_dir (rangecps-prep --out)")
    assert not (root / "rangecps").exists()


# ------------------------------------------------------------------------------------ messages, not tracebacks


def break_scans(root: Path) -> None:
    seq = root / "sequences" / "00"
    scan = seq / "velodyne" / "000000.bin"
    scan.write_bytes(scan.read_bytes()[:-6])
    (seq / "labels" / "000001.label").unlink()


def test_training_on_a_root_with_bad_files_prints_one_error_line(
    synthetic_kitti: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from rangecps.cli import train_main

    root = copy_root(synthetic_kitti, tmp_path / "root")
    break_scans(root)
    with pytest.raises(DatasetProblems) as err:
        build_data(tiny(root), progress=False)
    assert isinstance(err.value, ValueError)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(
        f"{root}: 2 problems: {root}/sequences/00/velodyne/000000.bin: size"
    )
    assert "000001.label: KITTI label file not found" in msg
    many = DatasetProblems(root, [f"p{i}" for i in range(25)], "semantickitti")
    assert str(many) == (
        f"{root}: 25 problems: " + "; ".join(f"p{i}" for i in range(10))
        + f"; ... and 15 more (rangecps-prep semantickitti --root {root} lists them all)"
    )  # fmt: skip
    import pickle

    assert pickle.loads(pickle.dumps(many)).problems == many.problems
    rc = train_main(["--set", f"data.root={root}", "--out", str(tmp_path / "run"), "--no-progress"])
    err_text = capsys.readouterr().err
    assert rc == 2 and error_lines(err_text) == [f"error: {msg}"]


def test_prep_where_every_training_scan_is_empty(
    synthetic_kitti: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = copy_root(synthetic_kitti, tmp_path / "root")
    for f in (root / "sequences" / "00").glob("*/*"):
        if f.suffix in (".bin", ".label"):
            f.write_bytes(b"")
    assert prep_main(["synthetic_kitti", "--root", str(root)]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert lines == [
        f"error: {root}: all 3 scans of the train split are empty (no point with finite values), so no input "
        "statistics can be computed (first: sequences/00/velodyne/000000.bin)"
    ]


def test_nuscenes_root_missing_one_lidarseg_file(
    synthetic_nuscenes: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("nuscenes")
    root = copy_root(synthetic_nuscenes, tmp_path / "root")
    lost = sorted((root / "lidarseg" / "v1.0-mini").iterdir())[1]
    lost.unlink()
    assert prep_main(["synthetic_nuscenes", "--root", str(root)]) == 2
    table = root / "v1.0-mini" / "lidarseg.json"
    assert error_lines(capsys.readouterr().err) == [
        f"error: {lost}: lidarseg label file not found (listed in {table})"
    ]
    with pytest.raises(DatasetProblems, match="lidarseg label file not found"):
        build_data(tiny(root, "data.dataset=synthetic_nuscenes"), progress=False)
    # A label file the table does not list: named too (the devkit would only assert that the counts differ).
    (lost.parent / "stray_lidarseg.bin").write_bytes(b"\0")
    shutil.copy(synthetic_nuscenes / "lidarseg" / "v1.0-mini" / lost.name, lost)
    with pytest.raises(DatasetProblems, match=r"1 label file\(s\) that lidarseg.json does not list: stray"):
        prepare(DATASETS["synthetic_nuscenes"], root, progress=False)


def test_missing_file_in_a_loader_worker_is_one_line(synthetic_kitti: Path, tmp_path: Path) -> None:
    from rangecps.data.loader import make_loader

    root = copy_root(synthetic_kitti, tmp_path / "root")
    data = build_data(tiny(root), progress=False)
    (root / "sequences" / "00" / "velodyne" / "000001.bin").unlink()
    ds = data.dataset("train", with_points=False)
    loader = make_loader(ds, list(range(len(ds))), batch_size=1, num_workers=1, seed=0)
    with pytest.raises(ScanFormatError) as err:
        for _ in loader:
            pass
    assert str(err.value) == f"{root}/sequences/00/velodyne/000001.bin: KITTI point file not found"
    assert "Traceback" in err.value.worker_traceback  # the worker's traceback is kept, apart


# ------------------------------------------------------------------------------------------------ partial roots


def test_project_rings_takes_the_float_ring_column_of_a_pcd_bin(synthetic_nuscenes: Path) -> None:
    from rangecps.projection import project_rings

    scan = next((synthetic_nuscenes / "samples" / "LIDAR_TOP").glob("*.pcd.bin"))
    raw = np.fromfile(scan, np.float32).reshape(-1, 5)
    points, ring = read_nuscenes_points(scan)
    as_stored = project_rings(raw[:, :3], raw[:, 4])
    np.testing.assert_array_equal(as_stored.rows, project_rings(points, ring).rows)
    np.testing.assert_array_equal(as_stored.index, project_rings(points, ring).index)
    raw[7, 4] = 3.5
    with pytest.raises(ValueError, match=r"ring must hold whole numbers; 1 of .* float32 values are not "
                                         r"\(first: 3.5 at point 7\)"):  # fmt: skip
        project_rings(raw[:, :3], raw[:, 4])
    raw[7, 4] = np.nan
    with pytest.raises(ValueError, match=r"ring must hold whole numbers.*nan at point 7"):
        project_rings(raw[:, :3], raw[:, 4])


def test_one_sequence_synthetic_dataset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from rangecps.cli import train_main

    root = tmp_path / "one"
    rc = prep_main(["synthetic", "--out", str(root), "--sequences", "1", "--scans-per-sequence", "2"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert sorted(p.name for p in (root / "sequences").iterdir()) == ["08"]
    assert (
        f"note: {root}: no scans for the train split (sequences 00-07, 09, 10): training on this root is "
        in out
    )
    assert "val points per class:" in out
    data = build_data(tiny(root), progress=False)
    assert len(data.dataset("val")) == 2  # evaluation works
    with pytest.raises(ValueError) as e:
        data.split  # noqa: B018
    expected = (
        f"{root}: no scans in the train split (sequences 00-07, 09, 10); training needs the train and the val "
        "split"
    )
    assert str(e.value) == expected
    rc = train_main(["--set", f"data.root={root}", "--out", str(tmp_path / "run"), "--no-progress"])
    assert rc == 2 and error_lines(capsys.readouterr().err)[-1] == f"error: {expected}"


def test_semantickitti_root_with_only_some_sequences(
    synthetic_kitti: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = copy_root(synthetic_kitti, tmp_path / "root")
    assert prep_main(["semantickitti", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if "sequences not there" in line]
    assert notes == [
        f"note: {root}: sequences not there (no velodyne folder), left out of the index: train 01-07, 09, 10; "
        "test 11-21 (the whole split)"
    ]
    assert "semantickitti: 6 scans checked, no problems (train 3, val 3, test 0)" in out
    # Only the validation sequence: indexed; training says what is missing.
    shutil.rmtree(root / "sequences" / "00")
    shutil.rmtree(root / "rangecps")
    assert prep_main(["semantickitti", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "train 00-07, 09, 10 (the whole split)" in out and "(train 0, val 3, test 0)" in out
    data = build_data(tiny(root, "data.dataset=semantickitti"), progress=False)
    assert len(data.dataset("val")) == 3
    with pytest.raises(
        ValueError, match=r"no scans in the train split \(sequences 00-07, 09, 10\); training"
    ):
        data.split  # noqa: B018
    # Labels missing in a sequence that is there are still a problem.
    shutil.rmtree(root / "sequences" / "08" / "labels")
    assert prep_main(["semantickitti", "--root", str(root)]) == 2
    assert f"problem: {root}/sequences/08/labels: missing folder (val split)" in capsys.readouterr().err


def test_every_prep_option_has_a_help_text(monkeypatch: pytest.MonkeyPatch) -> None:
    parsers = []

    def capture(self: argparse.ArgumentParser, *args, **kwargs):
        parsers.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(SystemExit):
        prep_main([])
    todo, missing = list(parsers), []
    while todo:
        parser = todo.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())
                names = {c.dest for c in action._choices_actions}
                missing += [f"{parser.prog} {n}" for n in action.choices if n not in names]
            if not action.help:
                missing.append(f"{parser.prog} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []
    assert len(parsers) == 1 and len(parsers[0]._subparsers._group_actions[0].choices) == 1 + len(DATASETS)
