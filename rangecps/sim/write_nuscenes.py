"""Write simulated scans as a nuScenes-lidarseg dataset that the official devkit loads.

Layout under the data root::

    v1.0-mini/*.json                               the 13 devkit tables + lidarseg.json
    samples/LIDAR_TOP/<log>__LIDAR_TOP__<us>.pcd.bin   float32 x, y, z, intensity (0-255), ring (0-31)
    lidarseg/v1.0-mini/<sample_data token>_lidarseg.bin  uint8 fine category index (category.json ``index``)
    maps/<map token>.png                           semantic-prior map mask (blank: the simulator has no map)

Only LIDAR_TOP keyframes are written: every simulated frame is one ``sample`` with one ``sample_data``; there
are no sweeps, cameras, radars or box annotations (``instance`` and ``sample_annotation`` are empty). As in
the official release, the lidarseg record of a scan and its ego pose share the scan's sample_data token.

Frames: the simulator's points lie in its sensor frame (x forward, y left, z up, as a KITTI Velodyne) and its
pose is sensor-to-world. nuScenes stores LIDAR_TOP points in the lidar's own frame (x right, y forward, z up),
so the writer turns points by -90 deg about z: ``(x, y, z)_nuscenes = (-y, x, z)_sim``. The lidar sits on the
ego vehicle with the nuScenes LIDAR_TOP calibration (0.94 m ahead of the rear axle, 1.84 m up, yawed -90 deg),
so the ego frame (x forward, y left, z up) is parallel to the simulator's sensor frame, and the ego pose is
``sim_pose @ SIM_FROM_LIDAR_TOP @ inv(lidar_to_ego())``.

Tokens are 32 hex digits hashed from the seed and the record's identity and timestamps are counted from a
fixed epoch, so a seed gives byte-identical tables.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rangecps.atomic import atomic_write
from rangecps.io import write_lidarseg, write_nuscenes_points
from rangecps.labels import load_label_map

if TYPE_CHECKING:
    from rangecps.sim import Frame

VERSION = "v1.0-mini"
CHANNEL = "LIDAR_TOP"
# LIDAR_TOP mounting in the ego frame: translation (m) and rotation quaternion (w, x, y, z). The real rig has
# about one degree of roll and pitch as well; a pure yaw keeps the simulated ego poses level.
LIDAR_TOP_TRANSLATION = (0.943713, 0.0, 1.84023)
LIDAR_TOP_ROTATION = (0.7071067811865476, 0.0, 0.0, -0.7071067811865476)
# Maps LIDAR_TOP coordinates (x right, y forward) to the simulator's sensor coordinates (x forward, y left).
SIM_FROM_LIDAR_TOP = np.array(
    [[0.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
# First scene's first timestamp (us, 2018-07-24 03:28:47 UTC, during the nuScenes recording campaign); later
# scenes start an hour apart.
EPOCH_US = 1_532_402_927_647_951
SCENE_SPACING_US = 3_600_000_000

CATEGORY_DESCRIPTIONS: dict[str, str] = {
    "noise": "Points with no usable return: spurious echoes, reflections and sensor artefacts.",
    "animal": "Any animal, of any size.",
    "human.pedestrian.adult": "An adult person walking or standing.",
    "human.pedestrian.child": "A child.",
    "human.pedestrian.construction_worker": "A person working at a construction site.",
    "human.pedestrian.personal_mobility": "A person on a scooter, skateboard, segway or the like.",
    "human.pedestrian.police_officer": "A police officer on foot.",
    "human.pedestrian.stroller": "A stroller or pram, with or without a child inside.",
    "human.pedestrian.wheelchair": "A wheelchair, with or without its user.",
    "movable_object.barrier": "A temporary barrier that keeps traffic out of an area.",
    "movable_object.debris": "Loose objects lying on the road: fallen branches, rubbish, lost cargo.",
    "movable_object.pushable_pullable": "Carts, bins and other objects that a person pushes or pulls.",
    "movable_object.trafficcone": "A traffic cone.",
    "static_object.bicycle_rack": "A rack for parking bicycles, with the bicycles parked in it.",
    "vehicle.bicycle": "A bicycle, with or without a rider.",
    "vehicle.bus.bendy": "An articulated bus.",
    "vehicle.bus.rigid": "A bus with a rigid body.",
    "vehicle.car": "A passenger car, van, SUV or pick-up.",
    "vehicle.construction": "A vehicle built for construction work: excavator, crane, bulldozer.",
    "vehicle.emergency.ambulance": "An ambulance.",
    "vehicle.emergency.police": "A police car or police motorcycle.",
    "vehicle.motorcycle": "A motorcycle or moped, with or without a rider.",
    "vehicle.trailer": "A trailer pulled by another vehicle.",
    "vehicle.truck": "A vehicle built to carry cargo.",
    "flat.driveable_surface": "Ground surface that vehicles may drive on.",
    "flat.other": "Other flat ground: traffic islands, rails, water.",
    "flat.sidewalk": "Ground surface meant for pedestrians and cyclists.",
    "flat.terrain": "Natural ground: grass, soil, gravel, sand.",
    "static.manmade": "Buildings, walls, poles, signs and other structures built by people.",
    "static.other": "Other static objects that fit no other category.",
    "static.vegetation": "Trees, bushes and other plants above the ground.",
    "vehicle.ego": "The vehicle that carries the sensors.",
}
ATTRIBUTES: dict[str, str] = {
    "vehicle.moving": "The vehicle is driving.",
    "vehicle.stopped": "The vehicle stands still with its driver inside, e.g. at a traffic light.",
    "vehicle.parked": "The vehicle is parked and nobody is expected to drive it soon.",
    "cycle.with_rider": "A bicycle or motorcycle with a rider.",
    "cycle.without_rider": "A bicycle or motorcycle without a rider.",
    "pedestrian.sitting_lying_down": "The person is sitting or lying down.",
    "pedestrian.standing": "The person is standing.",
    "pedestrian.moving": "The person is walking or running.",
}
VISIBILITY_LEVELS = (("v0-40", "0-40"), ("v40-60", "40-60"), ("v60-80", "60-80"), ("v80-100", "80-100"))


def make_token(*parts: object) -> str:
    """A 32-hex-digit token hashed from ``parts`` (stable across runs and machines)."""
    return hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).hexdigest()[:32]


def quaternion_wxyz(rotation: np.ndarray) -> list[float]:
    """Unit quaternion (w, x, y, z), w >= 0, of a (3, 3) rotation matrix."""
    r = np.asarray(rotation, dtype=np.float64)
    # Build the quaternion from its largest component first, which keeps the square root well away from zero.
    diag = (np.trace(r), r[0, 0], r[1, 1], r[2, 2])
    i = int(np.argmax(diag))
    if i == 0:
        s = 2.0 * np.sqrt(1.0 + diag[0])
        q = (0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s)
    elif i == 1:
        s = 2.0 * np.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2])
        q = ((r[2, 1] - r[1, 2]) / s, 0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s)
    elif i == 2:
        s = 2.0 * np.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2])
        q = ((r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s)
    else:
        s = 2.0 * np.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1])
        q = ((r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s)
    qa = np.asarray(q) / np.linalg.norm(q)
    return [float(v) for v in (qa if qa[0] >= 0 else -qa)]


def rotation_from_wxyz(q: tuple[float, ...] | list[float]) -> np.ndarray:
    """(3, 3) rotation matrix of a unit quaternion (w, x, y, z)."""
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def lidar_to_ego() -> np.ndarray:
    """(4, 4) float64 LIDAR_TOP-to-ego transform of the calibrated_sensor record."""
    t = np.eye(4)
    t[:3, :3] = rotation_from_wxyz(LIDAR_TOP_ROTATION)
    t[:3, 3] = LIDAR_TOP_TRANSLATION
    return t


def blank_png(width: int, height: int) -> bytes:
    """An all-zero 8-bit greyscale PNG (zlib is deterministic, so the bytes are too)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = b"".join(b"\x00" + bytes(width) for _ in range(height))  # filter byte 0, then the row
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )


def _dump(path: Path, rows: list[dict[str, Any]]) -> None:
    # indent=0 puts one key per line without indentation, as the official tables do.
    with atomic_write(path, "wb") as f:
        f.write(json.dumps(rows, indent=0).encode("ascii"))


class NuScenesWriter:
    """Accumulates scenes of simulated LIDAR_TOP keyframes, then writes the tables.

    Usage: ``w = NuScenesWriter(root, seed); w.write_scene("scene-0061", frames); ...; w.finish()``.
    """

    def __init__(self, root: Path, seed: int, version: str = VERSION) -> None:
        self.root = Path(root)
        self.seed = seed
        self.version = version
        self.tables: dict[str, list[dict[str, Any]]] = {
            name: []
            for name in ("log", "scene", "sample", "sample_data", "ego_pose", "calibrated_sensor", "lidarseg")
        }
        self.sensor_token = make_token("sensor", CHANNEL)
        self.map_token = make_token(seed, "map")
        self._scene_names: set[str] = set()

    def token(self, *parts: object) -> str:
        return make_token(self.seed, *parts)

    def write_scene(self, name: str, frames: Iterable[Frame], description: str = "") -> int:
        """Write the point clouds and labels of one scene and record its table rows.

        Args:
            name: scene name, e.g. ``"scene-0061"`` (the devkit's splits refer to scenes by name).
            frames: simulated LIDAR_TOP frames in time order (consumed once); each one becomes a keyframe.
            description: free text for the scene record.

        Returns:
            number of samples written.
        """
        if name in self._scene_names:
            raise ValueError(f"{self.root}: scene {name!r} written twice")
        self._scene_names.add(name)
        start_us = EPOCH_US + SCENE_SPACING_US * (len(self._scene_names) - 1)
        logfile = f"rangecps-sim-{name}"
        log_token, scene_token = self.token("log", name), self.token("scene", name)
        calib_token = self.token("calibrated_sensor", name)
        self.tables["log"].append(
            {
                "token": log_token,
                "logfile": logfile,
                "vehicle": "rangecps-sim",
                "date_captured": "2018-07-24",
                "location": "rangecps-sim",
            }
        )
        self.tables["calibrated_sensor"].append(
            {
                "token": calib_token,
                "sensor_token": self.sensor_token,
                "translation": list(LIDAR_TOP_TRANSLATION),
                "rotation": list(LIDAR_TOP_ROTATION),
                "camera_intrinsic": [],
            }
        )
        sim_from_ego = SIM_FROM_LIDAR_TOP @ np.linalg.inv(lidar_to_ego())
        samples: list[dict[str, Any]] = []
        sample_data: list[dict[str, Any]] = []
        last_us = None
        for index, frame in enumerate(frames):
            us = start_us + round(float(frame.timestamp) * 1e6)
            if last_us is not None and us <= last_us:
                raise ValueError(
                    f"{self.root}: scene {name} frame {index} timestamp {us} us does not increase"
                )
            last_us = us
            sample_token, sd_token = self.token("sample", name, index), self.token("sample_data", name, index)
            filename = f"samples/{CHANNEL}/{logfile}__{CHANNEL}__{us}.pcd.bin"
            labels_name = f"lidarseg/{self.version}/{sd_token}_lidarseg.bin"
            self._write_frame(frame, self.root / filename, self.root / labels_name)

            ego = np.asarray(frame.pose, dtype=np.float64) @ sim_from_ego
            self.tables["ego_pose"].append(
                {
                    "token": sd_token,
                    "timestamp": us,
                    "rotation": quaternion_wxyz(ego[:3, :3]),
                    "translation": [float(v) for v in ego[:3, 3]],
                }
            )
            samples.append(
                {"token": sample_token, "timestamp": us, "prev": "", "next": "", "scene_token": scene_token}
            )
            sample_data.append(
                {
                    "token": sd_token,
                    "sample_token": sample_token,
                    "ego_pose_token": sd_token,
                    "calibrated_sensor_token": calib_token,
                    "timestamp": us,
                    "fileformat": "pcd",
                    "is_key_frame": True,
                    "height": 0,
                    "width": 0,
                    "filename": filename,
                    "prev": "",
                    "next": "",
                }
            )
            self.tables["lidarseg"].append(
                {"token": sd_token, "sample_data_token": sd_token, "filename": labels_name}
            )
        if not samples:
            raise ValueError(f"{self.root}: scene {name} has no frames")
        for rows in (samples, sample_data):
            for a, b in itertools.pairwise(rows):
                a["next"], b["prev"] = b["token"], a["token"]
        self.tables["sample"] += samples
        self.tables["sample_data"] += sample_data
        self.tables["scene"].append(
            {
                "token": scene_token,
                "log_token": log_token,
                "nbr_samples": len(samples),
                "first_sample_token": samples[0]["token"],
                "last_sample_token": samples[-1]["token"],
                "name": name,
                "description": description,
            }
        )
        return len(samples)

    @staticmethod
    def _write_frame(frame: Frame, points_path: Path, labels_path: Path) -> None:
        if len(frame.points) == 0:
            raise ValueError(f"{points_path}: simulated scan has no points")
        points = np.array(frame.points, dtype=np.float32)
        points[:, 0], points[:, 1] = -frame.points[:, 1], frame.points[:, 0]
        # nuScenes stores the HDL-32E's 8-bit intensity as a whole number in a float.
        points[:, 3] = np.round(np.clip(points[:, 3], 0.0, 1.0) * 255.0)
        write_nuscenes_points(points_path, points, frame.ring)
        write_lidarseg(labels_path, frame.nuscenes)

    def finish(self) -> None:
        """Write every table of ``<root>/<version>/`` and the map mask. Call once, after the last scene."""
        if not self.tables["scene"]:
            raise ValueError(f"{self.root}: no scenes to write")
        names = load_label_map("nuscenes").raw_names
        if set(names.values()) != set(CATEGORY_DESCRIPTIONS) or sorted(names) != list(range(len(names))):
            raise ValueError(
                "the nuScenes label map does not list the 32 lidarseg categories with indices 0..31"
            )
        tables = dict(self.tables)
        tables["category"] = [
            {
                "token": make_token("category", names[i]),
                "name": names[i],
                "description": CATEGORY_DESCRIPTIONS[names[i]],
                "index": i,
            }
            for i in sorted(names)
        ]
        tables["attribute"] = [
            {"token": make_token("attribute", n), "name": n, "description": d} for n, d in ATTRIBUTES.items()
        ]
        tables["visibility"] = [
            {
                "token": str(i + 1),
                "level": level,
                "description": f"{span} % of the object is visible in the camera images",
            }
            for i, (level, span) in enumerate(VISIBILITY_LEVELS)
        ]
        tables["sensor"] = [{"token": self.sensor_token, "channel": CHANNEL, "modality": "lidar"}]
        tables["instance"] = []
        tables["sample_annotation"] = []
        map_file = f"maps/{self.map_token}.png"
        tables["map"] = [
            {
                "token": self.map_token,
                "log_tokens": [log["token"] for log in self.tables["log"]],
                "category": "semantic_prior",
                "filename": map_file,
            }
        ]
        with atomic_write(self.root / map_file, "wb") as f:
            f.write(blank_png(64, 64))
        table_root = self.root / self.version
        for name in sorted(tables):
            _dump(table_root / f"{name}.json", tables[name])
