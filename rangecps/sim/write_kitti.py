"""Write simulated scans as one SemanticKITTI + ScribbleKITTI sequence, in the official file formats.

Layout of one sequence folder ``sequences/XX/``::

    velodyne/NNNNNN.bin      float32 x, y, z, remission (0-1), sensor frame
    labels/NNNNNN.label      uint32: raw semantic id (low 16 bits), instance id (high 16 bits)
    scribbles/NNNNNN.label   ScribbleKITTI: same format, ~8 % of points labeled, instance 0, the rest 0
    poses.txt                one line per scan: 3x4 row-major pose of camera 0, '%e' x 12
    calib.txt                P0: P1: P2: P3: Tr: lines, 12 values each, '%.12e'
    times.txt                one line per scan: seconds since the first scan, '%e'

Pose convention (KITTI odometry, as the semantic-kitti-api reads it): ``poses.txt`` holds the pose of the left
grey camera (cam0) relative to cam0 at the first scan, and ``Tr`` in ``calib.txt`` maps Velodyne coordinates
to cam0 coordinates. Readers recover the Velodyne poses as ``inv(Tr) @ pose_cam @ Tr``, so we write
``pose_cam_i = Tr @ inv(P_0) @ P_i @ inv(Tr)`` where ``P_i`` is the simulator's sensor-to-world pose; the
recovered pose is then the sensor pose relative to the first scan (identity on the first line, as in the
official files).

ScribbleKITTI keeps no instance ids in its scribble files (its loader masks them off), so scribbles carry
instance 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rangecps.atomic import atomic_write
from rangecps.io import write_kitti_labels, write_kitti_points
from rangecps.labels import load_label_map
from rangecps.sim.scribbles import scribble_mask

if TYPE_CHECKING:
    from rangecps.sim import Frame

# Calibration of KITTI odometry sequences 00-02 (recording day 2011_10_03): stereo projections P0-P3 and the
# Velodyne -> cam0 transform Tr, each a row-major 3x4 matrix. One calibration serves every simulated sequence.
# fmt: off
KITTI_CALIB: dict[str, tuple[float, ...]] = {
    "P0": (7.188560e02, 0.0, 6.071928e02, 0.0,
           0.0, 7.188560e02, 1.852157e02, 0.0,
           0.0, 0.0, 1.0, 0.0),
    "P1": (7.188560e02, 0.0, 6.071928e02, -3.861448e02,
           0.0, 7.188560e02, 1.852157e02, 0.0,
           0.0, 0.0, 1.0, 0.0),
    "P2": (7.188560e02, 0.0, 6.071928e02, 4.538225e01,
           0.0, 7.188560e02, 1.852157e02, -1.130887e-01,
           0.0, 0.0, 1.0, 3.779761e-03),
    "P3": (7.188560e02, 0.0, 6.071928e02, -3.372877e02,
           0.0, 7.188560e02, 1.852157e02, 2.369057e00,
           0.0, 0.0, 1.0, 4.915215e-03),
    "Tr": (4.276802385584e-04, -9.999672484946e-01, -8.084491683471e-03, -1.198459927713e-02,
           -7.210626507497e-03, 8.081198471645e-03, -9.999413164504e-01, -5.403984729748e-02,
           9.999738645903e-01, 4.859485810390e-04, -7.206933692422e-03, -2.921968648686e-01),
}
# fmt: on

SCAN_NAME = "{:06d}"


def velo_to_cam() -> np.ndarray:
    """The calibration's ``Tr`` as a (4, 4) float64 homogeneous matrix (Velodyne -> cam0)."""
    tr = np.eye(4)
    tr[:3, :] = np.asarray(KITTI_CALIB["Tr"], dtype=np.float64).reshape(3, 4)
    return tr


def camera_poses(sensor_poses: np.ndarray) -> np.ndarray:
    """Convert sensor-to-world poses to the cam0 poses that ``poses.txt`` stores.

    Args:
        sensor_poses: (T, 4, 4) float64 Velodyne-to-world poses.

    Returns:
        (T, 4, 4) float64 cam0 poses relative to cam0 at the first scan.
    """
    tr = velo_to_cam()
    relative = np.linalg.inv(sensor_poses[0]) @ sensor_poses
    return tr @ relative @ np.linalg.inv(tr)


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path, "wb") as f:
        f.write(text.encode("ascii"))


def write_calib(path: Path) -> None:
    """Write ``calib.txt`` in the official layout (``KEY: v1 ... v12``, '%.12e')."""
    lines = [f"{key}: " + " ".join(f"{v:.12e}" for v in values) for key, values in KITTI_CALIB.items()]
    _write_text(path, "\n".join(lines) + "\n")


def write_poses(path: Path, sensor_poses: np.ndarray) -> None:
    """Write ``poses.txt`` from (T, 4, 4) float64 sensor-to-world poses (see the module docstring)."""
    rows = camera_poses(sensor_poses)[:, :3, :].reshape(len(sensor_poses), 12)
    # Rounding noise can print as -0.000000e+00; the official files never do, so fold it to +0.
    rows = np.where(rows == 0.0, 0.0, rows)
    _write_text(path, "".join(" ".join(f"{v:e}" for v in row) + "\n" for row in rows))


def write_times(path: Path, timestamps: np.ndarray) -> None:
    """Write ``times.txt``: (T,) seconds since the first scan, one '%e' value per line."""
    times = np.asarray(timestamps, dtype=np.float64) - float(timestamps[0])
    _write_text(path, "".join(f"{t:e}\n" for t in times))


def scribble_ignore_ids() -> tuple[int, ...]:
    """Raw SemanticKITTI ids that map to the ignore class; annotators left these points unscribbled."""
    label_map = load_label_map("semantickitti")
    return tuple(int(i) for i in np.flatnonzero(label_map.raw_known & (label_map.raw_to_train == 0)))


def write_kitti_sequence(
    seq_dir: Path,
    frames: Iterable[Frame],
    scribble_seed: tuple[int, ...] | None,
    scribble_coverage: float = 0.08,
) -> int:
    """Write every frame of one sequence and the sequence's text files.

    Args:
        seq_dir: the sequence folder, ``.../sequences/XX``.
        frames: simulated frames in time order (consumed once).
        scribble_seed: non-negative entropy of the scribble strokes (scan ``i`` draws from
            ``default_rng([*scribble_seed, i])``); None writes no ``scribbles/`` folder (ScribbleKITTI only
            annotates the training sequences).
        scribble_coverage: fraction of points a scribble file labels.

    Returns:
        number of scans written.
    """
    seq_dir = Path(seq_dir)
    skip_ids = scribble_ignore_ids()
    poses: list[np.ndarray] = []
    times: list[float] = []
    for index, frame in enumerate(frames):
        name = SCAN_NAME.format(index)
        if len(frame.points) == 0:
            raise ValueError(f"{seq_dir}: simulated scan {name} has no points")
        write_kitti_points(seq_dir / "velodyne" / f"{name}.bin", frame.points)
        write_kitti_labels(seq_dir / "labels" / f"{name}.label", frame.semantic, frame.instance)
        if scribble_seed is not None:
            rng = np.random.default_rng([*scribble_seed, index])
            mask = scribble_mask(
                frame.points, frame.ring, frame.semantic, frame.instance, rng, scribble_coverage, skip_ids
            )
            scribbles = np.where(mask, frame.semantic, 0).astype(np.uint16)
            write_kitti_labels(seq_dir / "scribbles" / f"{name}.label", scribbles)
        poses.append(np.asarray(frame.pose, dtype=np.float64))
        times.append(float(frame.timestamp))
    if not poses:
        raise ValueError(f"{seq_dir}: no frames to write")
    write_poses(seq_dir / "poses.txt", np.stack(poses))
    write_times(seq_dir / "times.txt", np.asarray(times))
    write_calib(seq_dir / "calib.txt")
    return len(poses)
