"""Render scans of a simulated drive: the ``Frame`` contract and ``simulate_sequence``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numba as nb
import numpy as np

from rangecps.sim.raycast import GROUND, NO_HIT, cast
from rangecps.sim.scene import Scene, build_scene
from rangecps.sim.sensors import SensorModel, get_sensor, sensor_rays
from rangecps.sim.trajectory import relative_pose

SPEED_RANGE = (5.0, 15.0)  # ego speed (m/s), drawn once per sequence
_GLASS_RHO, _GLASS_LOSS = 0.08, 0.6  # facade windows return little and often nothing


@dataclass(frozen=True)
class Frame:
    """One simulated scan.

    Attributes:
        points: ``(N, 4) float32`` x, y, z in the sensor frame (m; x forward, y left, z up), reflectance in [0, 1].
        ring: ``(N,) int32`` laser index, 0 = lowest beam.
        semantic: ``(N,) uint16`` SemanticKITTI raw ids (10 car, 40 road, 252 moving-car, ...).
        nuscenes: ``(N,) uint8`` nuScenes lidarseg fine category index (0..31).
        instance: ``(N,) uint16`` instance id, 0 for stuff; unique per object within a sequence.
        pose: ``(4, 4) float64`` sensor-to-world pose; world = the sensor frame of the first scan.
        timestamp: seconds since the start of the sequence.
    """

    points: np.ndarray
    ring: np.ndarray
    semantic: np.ndarray
    nuscenes: np.ndarray
    instance: np.ndarray
    pose: np.ndarray
    timestamp: float


def sequence_scene(sensor: str, num_scans: int, seed: int, sequence: int = 0) -> Scene:
    """The scene that ``simulate_sequence`` with the same arguments renders."""
    model = get_sensor(sensor)
    if isinstance(num_scans, bool) or not isinstance(num_scans, int | np.integer) or num_scans < 1:
        raise ValueError(f"num_scans must be a positive integer, got {num_scans!r}")
    for name, value in (("seed", seed), ("sequence", sequence)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    rng = np.random.default_rng([int(seed), int(sequence), 0])
    speed = float(rng.uniform(*SPEED_RANGE))
    duration = model.scan_interval * (num_scans - 1)
    return build_scene(rng, speed * duration, duration, speed, model.mount_height, model.region)


def render_scan(scene: Scene, model: SensorModel, time: float, rng: np.random.Generator) -> Frame:
    """Render one scan at ``time`` (s); its pose is sensor-to-scene (``simulate_sequence`` makes it relative)."""
    pose = scene.ego.pose(time)
    base, ring = sensor_rays(model)
    # a free-running sensor starts each revolution at a slightly different angle
    a = rng.uniform(0.0, 2.0 * np.pi / model.azimuth_steps)
    spin = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    to_scene = pose[:3, :3] @ spin  # base ray frame -> scene
    origin = pose[:3, 3]
    seed = int(rng.integers(0, 2**62))
    t, prim, cos = cast(scene.cast_table(time), origin, base, model.max_range + 1.0, seed, rotation=to_scene)

    hi = np.flatnonzero(prim != NO_HIT)
    row = prim[hi].astype(np.int64)
    on_ground = np.flatnonzero(row == GROUND)
    xy = origin[:2] + _rotate(to_scene[:2], base[hi[on_ground]]) * t[hi[on_ground], None]
    row[on_ground] = scene.ground(xy[:, 0], xy[:, 1])
    rho, loss = scene.rho[row], scene.loss[row]

    # Facade windows: a grid of glass panes per storey, from the hit position and the building's pattern.
    wi = np.flatnonzero(scene.glazed[row])
    if wi.size:
        period, frac = scene.window[row[wi], 0], scene.window[row[wi], 1]
        p = origin + _rotate(to_scene, base[hi[wi]]) * t[hi[wi], None]
        storey = np.mod(p[:, 2], 3.0)
        glass = (np.mod(p[:, 0] + p[:, 1], period) < frac * period) & (storey > 0.9) & (storey < 2.4)
        glass &= p[:, 2] < scene.params[row[wi], 7] - 0.4  # not on the roof
        rho[wi[glass]], loss[wi[glass]] = _GLASS_RHO, _GLASS_LOSS

    keep, measured, refl = model.returns(hi, t, cos, ring, rho, loss, int(rng.integers(0, 2**62)))
    points, ring_out, semantic, nusc, instance = _pack(
        base, spin, hi, keep, measured, refl, ring, row, scene.semantic, scene.nuscenes, scene.instance
    )
    return Frame(points, ring_out, semantic, nusc, instance, pose, float(time))


def _rotate(rot: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``(M, k)``: ``v (M, 3)`` times the transpose of ``rot (k, 3)``, without a multi-threaded BLAS call."""
    return v[:, 0, None] * rot[:, 0] + v[:, 1, None] * rot[:, 1] + v[:, 2, None] * rot[:, 2]


@nb.njit(cache=True)
def _pack(base, spin, hits, keep, measured, refl, ring, row, semantic, nuscenes, instance):
    """Gather the kept returns into the frame arrays in one pass (storage order is kept); ``spin`` turns the
    base ray directions into this scan's sensor-frame directions."""
    n = 0
    for k in range(keep.shape[0]):
        n += keep[k]
    points = np.empty((n, 4), np.float32)
    ring_out = np.empty(n, np.int32)
    sem_out, nus_out, inst_out = np.empty(n, np.uint16), np.empty(n, np.uint8), np.empty(n, np.uint16)
    j = 0
    for k in range(keep.shape[0]):
        if keep[k]:
            i, r = hits[k], row[k]
            for a in range(3):
                d = spin[a, 0] * base[i, 0] + spin[a, 1] * base[i, 1] + spin[a, 2] * base[i, 2]
                points[j, a] = d * measured[k]
            points[j, 3] = refl[k]
            ring_out[j] = ring[i]
            sem_out[j], nus_out[j], inst_out[j] = semantic[r], nuscenes[r], instance[r]
            j += 1
    return points, ring_out, sem_out, nus_out, inst_out


def simulate_sequence(sensor: str, num_scans: int, seed: int, sequence: int = 0) -> Iterator[Frame]:
    """Simulate ``num_scans`` consecutive scans of one drive, ``scan_interval`` seconds apart.

    Deterministic: the same ``(sensor, num_scans, seed, sequence)`` gives byte-identical frames. Different
    ``sequence`` values give different streets (layout, widths, densities, object sizes, traffic).
    The arguments are checked and the scene is built when this is called; scans are rendered one by one as
    the iterator is consumed.

    Args:
        sensor: a key of ``SENSORS``: ``"hdl64"`` (KITTI formats) or ``"hdl32"`` (nuScenes).
        num_scans: number of scans (>= 1).
        seed: dataset seed (>= 0).
        sequence: sequence number within the dataset (>= 0).
    """
    model = get_sensor(sensor)
    scene = sequence_scene(sensor, num_scans, seed, sequence)
    return _render_all(scene, model, num_scans, int(seed), int(sequence))


def _render_all(
    scene: Scene, model: SensorModel, num_scans: int, seed: int, sequence: int
) -> Iterator[Frame]:
    first = scene.ego.pose(0.0)
    for k in range(num_scans):
        rng = np.random.default_rng([seed, sequence, 1, k])
        frame = render_scan(scene, model, k * model.scan_interval, rng)
        pose = relative_pose(first, frame.pose)
        yield Frame(
            frame.points, frame.ring, frame.semantic, frame.nuscenes, frame.instance, pose, frame.timestamp
        )
