"""Submission writers: official layouts, raw ids, and no file at all for a prediction that does not fit."""

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from rangecps.data.index import ScanRecord
from rangecps.eval.submit import KittiWriter, NuScenesWriter, make_writer, nuscenes_eval_set
from rangecps.labels import load_label_map

KITTI = load_label_map("semantickitti")
NUSCENES = load_label_map("nuscenes")


def kitti_record(scan_id: str) -> ScanRecord:
    seq, frame = scan_id.split("/")
    return ScanRecord(scan_id, f"sequences/{seq}/velodyne/{frame}.bin", None)


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_kitti_writer_writes_raw_ids_and_zip(tmp_path: Path) -> None:
    writer = KittiWriter(tmp_path, KITTI)
    rng = np.random.default_rng(0)
    labels = {
        "11/000000": rng.integers(1, 20, 1000),
        "11/000001": rng.integers(1, 20, 7),
        "12/000000": np.arange(1, 20),
    }
    for scan_id, train in labels.items():
        path = writer.write(kitti_record(scan_id), train, len(train))
        assert path == tmp_path / "sequences" / scan_id.split("/")[0] / "predictions" / f"{scan_id[3:]}.label"
        raw = np.fromfile(path, dtype=np.uint32)
        assert np.array_equal(raw >> 16, np.zeros_like(raw))  # no instance bits
        assert np.array_equal(KITTI.to_train(raw & 0xFFFF), train)
    # The train ids 1..19 become the official learning_map_inv raw ids.
    raw = np.fromfile(tmp_path / "sequences" / "12" / "predictions" / "000000.label", dtype=np.uint32)
    assert raw.tolist() == [10, 11, 15, 18, 20, 30, 31, 32, 40, 44, 48, 49, 50, 51, 70, 71, 72, 80, 81]

    (zip_path,) = writer.finish({"method name": "test method"})
    with zipfile.ZipFile(zip_path) as archive:
        names = archive.namelist()
        description = archive.read("description.txt").decode()
        sizes = {i.filename: i.file_size for i in archive.infolist()}
    for folder in (
        "sequences/",
        "sequences/11/",
        "sequences/11/predictions/",
        "sequences/12/",
        "sequences/12/predictions/",
    ):
        assert folder in names
    assert sizes["sequences/11/predictions/000001.label"] == 7 * 4
    assert sorted(n for n in names if n.endswith(".label")) == [
        "sequences/11/predictions/000000.label",
        "sequences/11/predictions/000001.label",
        "sequences/12/predictions/000000.label",
    ]
    assert "method name: test method\n" in description and "bibtex: \n" in description
    assert not any(n.startswith("/") or ".." in n for n in names)


@pytest.mark.parametrize(
    ("labels", "count", "message"),
    [
        (np.ones(99, np.int64), 100, "99 predictions for a scan of 100 points; not written"),
        (np.ones(101, np.int64), 100, "101 predictions for a scan of 100 points"),
        (np.zeros(100, np.int64), 100, "0 = ignore is not a prediction"),
        (np.full(100, 20, np.int64), 100, "must be classes 1..19"),
        (np.ones(100, np.float32), 100, "must be a (N,) integer array"),
    ],
)
def test_kitti_writer_refuses_bad_predictions(
    tmp_path: Path, labels: np.ndarray, count: int, message: str
) -> None:
    writer = KittiWriter(tmp_path, KITTI)
    with pytest.raises(ValueError, match=r"sequences/08/predictions/000004\.label: .*") as info:
        writer.write(kitti_record("08/000004"), labels, count)
    assert message in str(info.value)
    assert files_under(tmp_path) == []  # neither the file nor a temporary one
    assert writer.written == []


def test_nuscenes_writer_layout_and_refusals(tmp_path: Path) -> None:
    writer = NuScenesWriter(tmp_path, "mini_val")
    record = ScanRecord("sampletoken", "samples/LIDAR_TOP/x.pcd.bin", None, token="sdtoken")
    labels = np.arange(1, 17).repeat(3)
    path = writer.write(record, labels, len(labels))
    assert path == tmp_path / "lidarseg" / "mini_val" / "sdtoken_lidarseg.bin"
    assert np.array_equal(np.fromfile(path, np.uint8), labels)

    other = ScanRecord("s2", "samples/LIDAR_TOP/y.pcd.bin", None, token="sd2")
    for bad, count, message in (
        (labels, len(labels) + 1, "48 predictions for a scan of 49 points"),
        (np.zeros(5, np.int64), 5, "classes 1..16"),
        (np.full(5, 17), 5, "classes 1..16"),
    ):
        with pytest.raises(ValueError, match=r"sd2_lidarseg\.bin: ") as info:
            writer.write(other, bad, count)
        assert message in str(info.value)
    assert files_under(tmp_path) == [path]
    with pytest.raises(ValueError, match="no LIDAR_TOP sample_data token"):
        writer.write(ScanRecord("s3", "p", None), labels, len(labels))

    meta_path, zip_path = writer.finish()
    assert meta_path == tmp_path / "mini_val" / "submission.json"
    meta = json.loads(meta_path.read_text())["meta"]
    assert meta == {
        "use_camera": False,
        "use_lidar": True,
        "use_radar": False,
        "use_map": False,
        "use_external": False,
    }
    with zipfile.ZipFile(zip_path) as archive:
        names = set(archive.namelist())
    assert {"lidarseg/mini_val/sdtoken_lidarseg.bin", "mini_val/submission.json", "lidarseg/"} <= names
    with pytest.raises(ValueError, match="must map exactly"):
        NuScenesWriter(tmp_path, "val", {"use_lidar": True})
    with pytest.raises(ValueError, match="must map exactly"):
        NuScenesWriter(tmp_path, "val", {**meta, "use_map": 1})


def test_eval_set_names_and_writer_choice(tmp_path: Path) -> None:
    (tmp_path / "mini" / "v1.0-mini").mkdir(parents=True)
    (tmp_path / "full" / "v1.0-trainval").mkdir(parents=True)
    assert nuscenes_eval_set(tmp_path / "mini", "val") == "mini_val"
    assert nuscenes_eval_set(tmp_path / "mini", "train") == "mini_train"
    assert nuscenes_eval_set(tmp_path / "full", "val") == "val"
    assert nuscenes_eval_set(tmp_path / "full", "test") == "test"
    assert isinstance(make_writer("kitti", tmp_path, KITTI, tmp_path, "val"), KittiWriter)
    writer = make_writer("nuscenes", tmp_path, NUSCENES, tmp_path / "mini", "val")
    assert isinstance(writer, NuScenesWriter) and writer.eval_set == "mini_val"
    with pytest.raises(ValueError, match="submissions need the 16 challenge classes"):
        make_writer("nuscenes", tmp_path, KITTI, tmp_path / "mini", "val")
    with pytest.raises(ValueError, match="no submission writer for file format 'ply'"):
        make_writer("ply", tmp_path, KITTI, tmp_path, "val")
