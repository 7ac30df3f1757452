"""The simulator's writers produce the official SemanticKITTI, ScribbleKITTI and nuScenes-lidarseg layouts.

The KITTI files are read back with rangecps.io and parsed the way the semantic-kitti-api parses poses and
calib; the nuScenes output is loaded and evaluated by the real nuscenes-devkit.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from rangecps.io import read_kitti_labels, read_kitti_points, read_lidarseg, read_nuscenes_points
from rangecps.sim import simulate_sequence
from rangecps.sim.generate import (
    KITTI_VAL_SEQUENCE,
    NUSCENES_MINI_TRAIN,
    NUSCENES_MINI_VAL,
    generate_dataset,
    kitti_sequence_ids,
    nuscenes_scene_names,
)
from rangecps.sim.scribbles import scribble_mask
from rangecps.sim.write_kitti import KITTI_CALIB, camera_poses, scribble_ignore_ids
from rangecps.sim.write_nuscenes import lidar_to_ego, quaternion_wxyz, rotation_from_wxyz

SEED = 7
SCANS = 2
KITTI_SEQUENCES = 2  # sequence 00 (train) + 08 (val)
NUSCENES_SCENES = 3  # scene-0061 (mini_train) + scene-0103, scene-0916 (mini_val)
OFFICIAL_FLOAT = r"-?\d\.\d{6}e[+-]\d{2}"


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, keyed by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def kitti_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "kitti"
    return generate_dataset("semantickitti", out, KITTI_SEQUENCES, SCANS, SEED, progress=False)


@pytest.fixture(scope="module")
def nuscenes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "nuscenes"
    return generate_dataset("nuscenes", out, NUSCENES_SCENES, SCANS, SEED, progress=False)


@pytest.fixture(scope="module")
def nusc(nuscenes_root: Path):
    nuscenes = pytest.importorskip("nuscenes.nuscenes")
    return nuscenes.NuScenes(version="v1.0-mini", dataroot=str(nuscenes_root), verbose=False)


# ---------------------------------------------------------------- SemanticKITTI / ScribbleKITTI


def parse_kitti_calib(path: Path) -> dict[str, np.ndarray]:
    """calib.txt -> {key: (4, 4)}, as semantic-kitti-api's parse_calibration does."""
    calib = {}
    for line in path.read_text().splitlines():
        key, values = line.split(":")
        m = np.eye(4)
        m[:3, :] = np.array([float(v) for v in values.split()]).reshape(3, 4)
        calib[key] = m
    return calib


def parse_kitti_poses(path: Path, tr: np.ndarray) -> np.ndarray:
    """poses.txt -> (T, 4, 4) Velodyne poses, as semantic-kitti-api's parse_poses does: inv(Tr) @ P @ Tr."""
    poses = []
    for line in path.read_text().splitlines():
        m = np.eye(4)
        m[:3, :] = np.array([float(v) for v in line.split()]).reshape(3, 4)
        poses.append(np.linalg.inv(tr) @ m @ tr)
    return np.stack(poses)


def test_kitti_layout(kitti_root: Path) -> None:
    seqs = sorted(p.name for p in (kitti_root / "sequences").iterdir())
    assert seqs == ["00", "08"] == kitti_sequence_ids(KITTI_SEQUENCES)
    for seq in seqs:
        d = kitti_root / "sequences" / seq
        names = [f"{i:06d}" for i in range(SCANS)]
        assert sorted(p.stem for p in (d / "velodyne").glob("*.bin")) == names
        assert sorted(p.stem for p in (d / "labels").glob("*.label")) == names
        # ScribbleKITTI annotates the training sequences only.
        assert (d / "scribbles").is_dir() == (seq != KITTI_VAL_SEQUENCE)
        for name in names:
            points = read_kitti_points(d / "velodyne" / f"{name}.bin")
            semantic, _ = read_kitti_labels(d / "labels" / f"{name}.label", num_points=len(points))
            assert len(points) > 1000 and np.isfinite(points).all()
            assert points[:, 3].min() >= 0.0 and points[:, 3].max() <= 1.0
            assert len(np.unique(semantic)) >= 3


def test_kitti_text_files_official_format(kitti_root: Path) -> None:
    d = kitti_root / "sequences" / "00"
    calib_lines = (d / "calib.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in calib_lines] == ["P0", "P1", "P2", "P3", "Tr"]
    for line in calib_lines:
        assert re.fullmatch(r"P[0-3]: |Tr: ", line[:4]) and len(line[4:].split()) == 12
    pose_lines = (d / "poses.txt").read_text().splitlines()
    assert len(pose_lines) == SCANS
    for line in pose_lines:
        assert re.fullmatch(" ".join([OFFICIAL_FLOAT] * 12), line), line
    times = [float(t) for t in (d / "times.txt").read_text().split()]
    assert len(times) == SCANS and times[0] == 0.0 and all(np.diff(times) > 0)
    assert re.fullmatch(OFFICIAL_FLOAT, (d / "times.txt").read_text().splitlines()[1])


def test_kitti_matches_simulator_and_recovers_sensor_poses(kitti_root: Path) -> None:
    d = kitti_root / "sequences" / "08"
    frames = list(simulate_sequence("hdl64", SCANS, SEED, sequence=8))
    calib = parse_kitti_calib(d / "calib.txt")
    np.testing.assert_allclose(calib["Tr"][:3].ravel(), KITTI_CALIB["Tr"], rtol=0, atol=1e-15)
    recovered = parse_kitti_poses(d / "poses.txt", calib["Tr"])
    for i, frame in enumerate(frames):
        points = read_kitti_points(d / "velodyne" / f"{i:06d}.bin")
        semantic, instance = read_kitti_labels(d / "labels" / f"{i:06d}.label")
        assert points.tobytes() == frame.points.astype(np.float32).tobytes()
        np.testing.assert_array_equal(semantic, frame.semantic)
        np.testing.assert_array_equal(instance, frame.instance)
        # KITTI poses are relative to the first scan; '%e' keeps 7 significant digits.
        expected = np.linalg.inv(frames[0].pose) @ frame.pose
        np.testing.assert_allclose(recovered[i][:3, :3], expected[:3, :3], atol=1e-5)
        np.testing.assert_allclose(recovered[i][:3, 3], expected[:3, 3], atol=1e-3)
    np.testing.assert_allclose(recovered[0], np.eye(4), atol=1e-6)


def test_camera_poses_invert_the_official_reader() -> None:
    rng = np.random.default_rng(0)
    poses = np.tile(np.eye(4), (5, 1, 1))
    for p in poses:
        q = rng.normal(size=4)
        p[:3, :3] = rotation_from_wxyz(q / np.linalg.norm(q))
        p[:3, 3] = rng.uniform(-500, 500, size=3)
    tr = parse_kitti_calib_from_constant()
    recovered = np.linalg.inv(tr) @ camera_poses(poses) @ tr
    np.testing.assert_allclose(recovered, np.linalg.inv(poses[0]) @ poses, atol=1e-9)


def parse_kitti_calib_from_constant() -> np.ndarray:
    tr = np.eye(4)
    tr[:3, :] = np.asarray(KITTI_CALIB["Tr"]).reshape(3, 4)
    return tr


def test_scribbles_are_sparse_subset_of_labels(kitti_root: Path) -> None:
    d = kitti_root / "sequences" / "00"
    skip = set(scribble_ignore_ids())
    for i in range(SCANS):
        semantic, instance = read_kitti_labels(d / "labels" / f"{i:06d}.label")
        scribble, scribble_instance = read_kitti_labels(d / "scribbles" / f"{i:06d}.label", len(semantic))
        drawn = scribble != 0
        np.testing.assert_array_equal(scribble[drawn], semantic[drawn])
        assert not (scribble_instance != 0).any()
        assert 0.05 <= drawn.mean() <= 0.12, drawn.mean()
        assert not np.isin(scribble[drawn], list(skip)).any()
        # Every visible region and object of a labeled class receives a stroke.
        key = semantic.astype(np.int64) << 16 | instance
        for k in np.unique(key[~np.isin(semantic, list(skip))]):
            region = key == k
            if region.sum() >= 10:
                assert drawn[region].any(), (k >> 16, k & 0xFFFF, region.sum())


def grid_scan(rings: int = 16, cols: int = 400) -> tuple[np.ndarray, ...]:
    """A synthetic range image: road below, a wall above, three cars (instances) on the middle rings."""
    ring, col = np.meshgrid(np.arange(rings), np.arange(cols), indexing="ij")
    az = col / cols * 2 * np.pi - np.pi
    points = np.stack([np.cos(az), np.sin(az)], axis=-1).reshape(-1, 2)
    semantic = np.where(ring < rings // 2, 40, 50)
    instance = np.zeros_like(semantic)
    for i, c0 in enumerate((20, 150, 300)):
        car = (ring >= 5) & (ring < 9) & (col >= c0) & (col < c0 + 12 + 20 * i)
        semantic[car], instance[car] = 10, i + 1
    semantic[0, :5] = 0  # a few unlabeled points
    return points, ring.ravel(), semantic.ravel(), instance.ravel()


def test_scribble_mask_strokes() -> None:
    points, ring, semantic, instance = grid_scan()
    mask = scribble_mask(points, ring, semantic, instance, np.random.default_rng(3), coverage=0.08)
    assert abs(mask.mean() - 0.08) < 0.01
    assert not mask[semantic == 0].any()
    for inst in (1, 2, 3):
        assert mask[instance == inst].any()
    # Strokes are runs, not scattered points: most scribbled points have a scribbled neighbour in their ring.
    img = mask.reshape(16, 400)
    neighbour = np.zeros_like(img)
    neighbour[:, 1:] |= img[:, :-1]
    neighbour[:, :-1] |= img[:, 1:]
    assert (neighbour[img]).mean() > 0.8
    again = scribble_mask(points, ring, semantic, instance, np.random.default_rng(3), coverage=0.08)
    other = scribble_mask(points, ring, semantic, instance, np.random.default_rng(4), coverage=0.08)
    np.testing.assert_array_equal(mask, again)
    assert (mask != other).any()


def test_scribble_mask_rejects_bad_input() -> None:
    points, ring, semantic, instance = grid_scan()
    with pytest.raises(ValueError, match="coverage"):
        scribble_mask(points, ring, semantic, instance, np.random.default_rng(0), coverage=1.5)
    with pytest.raises(ValueError, match="ring has"):
        scribble_mask(points, ring[:-1], semantic, instance, np.random.default_rng(0))


# ---------------------------------------------------------------- nuScenes-lidarseg


def test_nuscenes_devkit_loads_and_reads_lidarseg(nusc, nuscenes_root: Path) -> None:
    from nuscenes.utils.data_classes import LidarPointCloud
    from nuscenes.utils.data_io import load_bin_file

    assert len(nusc.scene) == NUSCENES_SCENES and len(nusc.sample) == NUSCENES_SCENES * SCANS
    assert sorted(c["index"] for c in nusc.category) == list(range(32))
    assert nusc.lidarseg_idx2name_mapping[24] == "flat.driveable_surface"
    assert nusc.lidarseg_idx2name_mapping[31] == "vehicle.ego"
    for sample in nusc.sample:
        sd_token = sample["data"]["LIDAR_TOP"]
        record = nusc.get("lidarseg", sd_token)
        labels = load_bin_file(str(nuscenes_root / record["filename"]))
        pc = LidarPointCloud.from_file(nusc.get_sample_data_path(sd_token))
        assert pc.points.shape[1] == len(labels) > 1000
        assert labels.max() <= 31 and len(np.unique(labels)) >= 3
        points, ring = read_nuscenes_points(nusc.get_sample_data_path(sd_token))
        assert (points[:, 3] == np.round(points[:, 3])).all() and points[:, 3].max() <= 255
        assert ring.min() >= 0 and ring.max() <= 31
        np.testing.assert_array_equal(read_lidarseg(nuscenes_root / record["filename"], len(points)), labels)


def test_nuscenes_splits_and_scene_links(nusc) -> None:
    from nuscenes.eval.lidarseg.utils import get_samples_in_eval_set
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes()
    assert (
        tuple(splits["mini_train"]) == NUSCENES_MINI_TRAIN and tuple(splits["mini_val"]) == NUSCENES_MINI_VAL
    )
    names = {s["name"] for s in nusc.scene}
    assert names == set(nuscenes_scene_names(NUSCENES_SCENES))
    assert set(splits["mini_val"]) <= names and names - set(splits["mini_val"]) <= set(splits["mini_train"])
    val_samples = get_samples_in_eval_set(nusc, "mini_val")
    assert len(val_samples) == len(NUSCENES_MINI_VAL) * SCANS
    for scene in nusc.scene:
        first = nusc.get("sample", scene["first_sample_token"])
        last = nusc.get("sample", scene["last_sample_token"])
        assert first["prev"] == "" and last["next"] == "" and scene["nbr_samples"] == SCANS
        assert nusc.get("sample", first["next"])["timestamp"] > first["timestamp"]


def test_nuscenes_points_land_where_the_simulator_put_them(nusc) -> None:
    """Points read from disk and moved to the world with the devkit's ego pose and calibration equal the
    simulator's points moved with its own sensor pose: frames, axes and poses are consistent."""
    scene = next(s for s in nusc.scene if s["name"] == "scene-0103")
    frames = list(simulate_sequence("hdl32", SCANS, SEED, sequence=103))
    token = scene["first_sample_token"]
    for frame in frames:
        sd = nusc.get("sample_data", nusc.get("sample", token)["data"]["LIDAR_TOP"])
        ego = nusc.get("ego_pose", sd["ego_pose_token"])
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        world_from_ego, ego_from_lidar = np.eye(4), np.eye(4)
        world_from_ego[:3, :3], world_from_ego[:3, 3] = (
            rotation_from_wxyz(ego["rotation"]),
            ego["translation"],
        )
        ego_from_lidar[:3, :3], ego_from_lidar[:3, 3] = rotation_from_wxyz(cs["rotation"]), cs["translation"]
        np.testing.assert_allclose(cs["translation"], [0.943713, 0.0, 1.84023])
        points, _ = read_nuscenes_points(nusc.get_sample_data_path(sd["token"]))
        world = points[:, :3].astype(np.float64) @ (world_from_ego @ ego_from_lidar)[:3, :3].T
        world += (world_from_ego @ ego_from_lidar)[:3, 3]
        expected = frame.points[:, :3].astype(np.float64) @ frame.pose[:3, :3].T + frame.pose[:3, 3]
        np.testing.assert_allclose(world, expected, atol=1e-6)
        # The ego frame looks where the simulated sensor looks (x forward, z up); the lidar sits 0.94 m ahead
        # of the ego origin and 1.84 m above it.
        np.testing.assert_allclose(world_from_ego[:3, :3], frame.pose[:3, :3], atol=1e-9)
        lidar_in_ego = np.linalg.inv(world_from_ego) @ frame.pose[:, 3]
        np.testing.assert_allclose(lidar_in_ego[:3], [0.943713, 0.0, 1.84023], atol=1e-9)
        token = nusc.get("sample", token)["next"]


def test_quaternion_round_trip() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        q = rng.normal(size=4)
        q = q / np.linalg.norm(q) * (1 if q[0] >= 0 else -1)
        np.testing.assert_allclose(quaternion_wxyz(rotation_from_wxyz(q)), q, atol=1e-12)
    np.testing.assert_allclose(lidar_to_ego()[:3, :3] @ [0, 1, 0], [1, 0, 0], atol=1e-12)  # lidar y = forward


def test_nuscenes_lidarseg_evaluation_accepts_dataset(nusc, tmp_path: Path) -> None:
    from nuscenes.eval.lidarseg.evaluate import LidarSegEval
    from nuscenes.eval.lidarseg.utils import LidarsegClassMapper, get_samples_in_eval_set
    from nuscenes.eval.lidarseg.validate_submission import validate_submission

    mapper = LidarsegClassMapper(nusc)
    lut = np.array([mapper.fine_idx_2_coarse_idx_mapping[i] for i in range(32)], dtype=np.uint8)
    (tmp_path / "lidarseg" / "mini_val").mkdir(parents=True)
    (tmp_path / "mini_val").mkdir()
    meta = dict.fromkeys(("use_camera", "use_radar", "use_map", "use_external"), False) | {"use_lidar": True}
    (tmp_path / "mini_val" / "submission.json").write_text(json.dumps({"meta": meta}))
    for token in get_samples_in_eval_set(nusc, "mini_val"):
        sd_token = nusc.get("sample", token)["data"]["LIDAR_TOP"]
        truth = lut[
            np.fromfile(Path(nusc.dataroot) / nusc.get("lidarseg", sd_token)["filename"], dtype=np.uint8)
        ]
        # Predictions must lie in 1..16; an ignored ground-truth point may receive any of them.
        np.where(truth == 0, 1, truth).astype(np.uint8).tofile(
            tmp_path / "lidarseg" / "mini_val" / f"{sd_token}_lidarseg.bin"
        )
    validate_submission(nusc, str(tmp_path), "mini_val")
    result = LidarSegEval(nusc, str(tmp_path), "mini_val").evaluate()
    assert result["miou"] == pytest.approx(1.0)


# ---------------------------------------------------------------- determinism and arguments


@pytest.mark.parametrize(
    "fmt, sequences", [("semantickitti", KITTI_SEQUENCES), ("nuscenes", NUSCENES_SCENES)]
)
def test_generation_is_deterministic(
    fmt: str, sequences: int, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    reference = request.getfixturevalue("kitti_root" if fmt == "semantickitti" else "nuscenes_root")
    same = generate_dataset(fmt, tmp_path / "same", sequences, SCANS, SEED, progress=False)
    other = generate_dataset(fmt, tmp_path / "other", sequences, SCANS, SEED + 1, progress=False)
    digest = tree_digest(reference)
    assert tree_digest(same) == digest
    other_digest = tree_digest(other)
    changed = [path for path in digest if other_digest.get(path) != digest[path]]
    assert any(p.endswith((".bin", ".label")) for p in changed)
    if fmt == "nuscenes":
        assert other_digest["v1.0-mini/sample.json"] != digest["v1.0-mini/sample.json"]


def test_generate_rejects_bad_arguments(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="full"):
        generate_dataset("semantickitti", tmp_path / "full", 2, 1, 0, progress=False)
    with pytest.raises(ValueError, match="unknown dataset format"):
        generate_dataset("kitti360", tmp_path / "a", 2, 1, 0, progress=False)
    with pytest.raises(ValueError, match=r"1\.\.11"):
        generate_dataset("semantickitti", tmp_path / "a", 0, 1, 0, progress=False)
    with pytest.raises(ValueError, match=r"2\.\.10"):
        generate_dataset("nuscenes", tmp_path / "a", 11, 1, 0, progress=False)
    with pytest.raises(ValueError, match="scans_per_sequence"):
        generate_dataset("nuscenes", tmp_path / "a", 3, 0, 0, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # nothing half-written left behind


def test_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rangecps.sim.generate as generate

    def failing(sensor: str, num_scans: int, seed: int, sequence: int = 0):
        yield from simulate_sequence(sensor, 1, seed, sequence=sequence)
        raise RuntimeError("simulator crashed")

    monkeypatch.setattr(generate, "simulate_sequence", failing)
    with pytest.raises(RuntimeError, match="simulator crashed"):
        generate.generate_dataset("semantickitti", tmp_path / "kitti", 2, 3, 0, progress=False)
    assert list(tmp_path.iterdir()) == []
