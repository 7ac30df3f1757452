"""Velodyne HDL-64E (KITTI) and HDL-32E (nuScenes) models: beam layout, firing order and the return model.

The return model turns an ideal ray hit into what the sensor reports:

- a hit is lost when the received power is too low. Power falls with range squared and rises with the material's
  reflectance and the incidence cosine, so the range at which half the returns survive is
  ``ref_range * sqrt(rho * cos^a / 0.8)`` (``ref_range`` = datasheet range for an 80 % target). Dark, far and
  grazing surfaces (road far ahead, black cars, glass) thin out first, as in real scans;
- a small random dropout and material-specific losses (glass) on top; no return at all where the ray misses
  (sky) or leaves ``max_range``;
- near-gaussian range noise (sigma ``range_sigma``); reported reflectance ``rho * (b + (1 - b) cos)`` times
  per-laser gain and multiplicative noise, rounded to ``reflectance_step`` and clipped to [0, 1];
- rays that hit the ego vehicle's own roof (HDL-32E on the nuScenes car) are removed, not returned.

The noise comes from a hash of (scan seed, ray index), so a scan is reproducible and the kernel needs no
random state.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numba as nb
import numpy as np

from rangecps.sim.raycast import hash64, hash_uniforms


@dataclass(frozen=True)
class SensorModel:
    """A spinning multi-beam LiDAR.

    Attributes:
        name: ``"hdl64"`` or ``"hdl32"``.
        elevations_deg: elevation of each laser (deg), ring 0 = lowest beam.
        azimuth_steps: firings per revolution.
        mount_height: sensor origin above the road (m).
        max_range: returns beyond this are discarded (m).
        min_range: returns closer than this are discarded (m).
        ref_range: range at which a 0.8-reflectance target at normal incidence is detected half the time (m).
        range_sigma: standard deviation of the range noise (m).
        dropout: probability that any return is lost at random.
        scan_interval: time between consecutive emitted scans (s).
        firing_order: True: points stored firing by firing, rings 0..N-1 within a firing, azimuth decreasing
            (nuScenes ``.pcd.bin``); False: ring by ring from the top laser, azimuth increasing (KITTI ``.bin``).
        ego_roof: ``(x_min, x_max, y_min, y_max, z)`` roof rectangle in the sensor frame that blocks the lowest
            beams, or None.
        laser_gain: per-ring intensity gain (uncalibrated lasers differ), or None for 1.
        reflectance_step: reported reflectance is rounded to this step (0 = continuous).
        incidence_exponent: ``a`` in the detection range ``ref_range * sqrt(rho * cos^a / 0.8)``.
        reflectance_floor: ``b`` in the reported reflectance ``rho * (b + (1 - b) cos)``.
        reflectance_noise: sigma of the multiplicative reflectance noise.
        region: kind of streets the sensor's dataset was recorded in (a key of ``scene.REGIONS``).
    """

    name: str
    elevations_deg: tuple[float, ...]
    azimuth_steps: int
    mount_height: float
    max_range: float
    min_range: float
    ref_range: float
    range_sigma: float
    dropout: float
    scan_interval: float
    firing_order: bool
    ego_roof: tuple[float, float, float, float, float] | None = None
    laser_gain: tuple[float, ...] | None = None
    reflectance_step: float = 0.0
    incidence_exponent: float = 0.3
    reflectance_floor: float = 0.7
    reflectance_noise: float = 0.12
    region: str = "karlsruhe"

    @property
    def num_rings(self) -> int:
        return len(self.elevations_deg)

    @property
    def num_rays(self) -> int:
        return self.num_rings * self.azimuth_steps

    def ray_directions(self, azimuth_offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Unit ray directions in the sensor frame (x forward, y left, z up), in the sensor's storage order.

        Args:
            azimuth_offset: rotation of the firing pattern (rad), in [0, 2 pi / azimuth_steps) to vary the
                exact firing angles from scan to scan as a real free-running sensor does.

        Returns:
            ``dirs (R, 3) float64`` and ``ring (R,) int32`` with ``R = num_rays``.
        """
        step = 2.0 * np.pi / self.azimuth_steps
        elev = np.radians(np.asarray(self.elevations_deg, dtype=np.float64))
        rings = np.arange(self.num_rings, dtype=np.int32)
        cols = np.arange(self.azimuth_steps, dtype=np.float64)
        if self.firing_order:
            az = np.pi - azimuth_offset - cols * step  # clockwise from behind
            az_grid, ring_grid = np.meshgrid(az, rings, indexing="ij")  # (firings, rings)
        else:
            az = -np.pi + azimuth_offset + cols * step  # counter-clockwise from behind, top ring first
            ring_grid, az_grid = np.meshgrid(rings[::-1], az, indexing="ij")  # (rings, columns)
        ring = ring_grid.reshape(-1).astype(np.int32)
        az = az_grid.reshape(-1)
        el = elev[ring]
        dirs = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=1)
        return dirs, ring

    def ego_blocked(self, dirs: np.ndarray) -> np.ndarray:
        """``(R,) bool``: rays whose first surface is the ego vehicle's roof."""
        if self.ego_roof is None:
            return np.zeros(dirs.shape[0], dtype=bool)
        x0, x1, y0, y1, z = self.ego_roof
        down = dirs[:, 2] < 0.0
        t = np.where(down, z / np.where(down, dirs[:, 2], -1.0), 0.0)
        px, py = t * dirs[:, 0], t * dirs[:, 1]
        return down & (px > x0) & (px < x1) & (py > y0) & (py < y1)

    def returns(
        self,
        hits: np.ndarray,
        t: np.ndarray,
        cos: np.ndarray,
        ring: np.ndarray,
        rho: np.ndarray,
        extra_loss: np.ndarray,
        seed: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Apply the return model to the ``M`` rays ``hits`` (indices into the scan's ``R`` rays) that hit a surface.

        Args:
            hits: ``(M,) int64`` indices of the rays that hit something.
            t: ``(R,) float64`` ideal hit distance of every ray (m).
            cos: ``(R,) float32`` incidence cosine of every ray.
            ring: ``(R,) int32`` laser of every ray.
            rho: ``(M,) float64`` material reflectance of each hit surface.
            extra_loss: ``(M,) float64`` material-specific loss probability (glass).
            seed: seed of this scan's noise (hashed with the ray index, so the result is reproducible).

        Returns:
            ``keep (M,) bool``, measured range ``(M,) float64``, reported reflectance ``(M,) float32``.
        """
        gain = np.ones(self.num_rings) if self.laser_gain is None else np.asarray(self.laser_gain, np.float64)
        physics = (self.ref_range, self.incidence_exponent, self.dropout, self.range_sigma)
        limits = (self.min_range, self.max_range)
        reflectance = (self.reflectance_floor, self.reflectance_noise, self.reflectance_step)
        return _returns(
            hits, t, cos, ring, rho, extra_loss, gain, np.int64(seed), physics, limits, reflectance
        )


@nb.njit(cache=True, fastmath=True)
def _returns(hits, t, cos, ring, rho, loss, gain, seed, physics, limits, reflectance):
    ref_range, a, dropout, sigma = physics
    min_range, max_range = limits
    b, refl_sigma, step = reflectance
    n = hits.shape[0]
    keep = np.empty(n, np.bool_)
    measured = np.empty(n)
    refl = np.empty(n, np.float32)
    for k in range(n):
        i = hits[k]
        c = min(max(cos[i], 1e-3), 1.0)
        half_range = ref_range * np.sqrt(max(rho[k], 1e-3) * c**a / 0.8)
        # logistic fall-off around half_range, 10 % of it wide: a soft limit, as returns fade in noise
        p_detect = 1.0 / (1.0 + np.exp(min((t[i] - half_range) / (0.1 * half_range), 50.0)))  # finite
        survive = p_detect * (1.0 - dropout) * (1.0 - loss[k])  # independent ways to lose a return
        u1, u2 = hash_uniforms(seed, i, 1)
        # Sums of uniforms (unit variance, bounded) stand in for gaussian noise: plenty for a sensor, and cheap:
        # one more hash gives four 16-bit uniforms.
        z = hash64(seed, i, 2)
        mask = np.uint64(0xFFFF)
        a0, a1 = float(z & mask), float((z >> np.uint64(16)) & mask)
        a2, a3 = float((z >> np.uint64(32)) & mask), float(z >> np.uint64(48))
        n_range = ((a0 + a1 + a2 + 1.5) / 65536.0 - 1.5) * 2.0
        n_refl = ((a3 + 0.5) / 65536.0 + u2 - 1.0) * 2.449489742783178
        m = t[i] + sigma * n_range
        keep[k] = u1 < survive and min_range <= m <= max_range
        measured[k] = m
        r = rho[k] * (b + (1.0 - b) * c) * max(1.0 + refl_sigma * n_refl, 0.0) * gain[ring[i]]
        if step > 0.0:
            r = np.floor(r / step + 0.5) * step
        refl[k] = min(max(r, 0.0), 1.0)
    return keep, measured, refl


@functools.lru_cache(maxsize=4)
def sensor_rays(model: SensorModel) -> tuple[np.ndarray, np.ndarray]:
    """Rays of ``model`` at azimuth offset 0 that are not blocked by the ego roof (read-only, cached).

    Returns ``dirs (R, 3) float64`` in storage order and ``ring (R,) int32``.
    """
    dirs, ring = model.ray_directions(0.0)
    free = ~model.ego_blocked(dirs)
    dirs, ring = dirs[free], ring[free]
    dirs.setflags(write=False)
    ring.setflags(write=False)
    return dirs, ring


def _hdl64_elevations() -> tuple[float, ...]:
    # Two blocks of 32 lasers: the upper at ~1/3 deg spacing from +2.0 deg, the lower at 1/2 deg from -8.83 deg.
    # Real units deviate from the nominal angles by a few hundredths of a degree (per-unit calibration); a fixed
    # jitter reproduces the uneven row spacing that leaves some range-image rows doubly hit and others empty.
    upper = 2.0 - np.arange(32) / 3.0
    lower = -8.83 - 0.5 * np.arange(32)
    jitter = np.random.default_rng(64).normal(0.0, 0.04, 64)
    return tuple(float(e) for e in np.sort(np.concatenate([upper, lower])) + jitter)


def _laser_gains(num: int, sigma: float) -> tuple[float, ...]:
    # Fixed per-unit spread of laser intensity gains (the same for every scan, like a real sensor's).
    return tuple(float(g) for g in np.exp(np.random.default_rng(num).normal(0.0, sigma, num)))


def _hdl32_elevations() -> tuple[float, ...]:
    return tuple(float(e) for e in -30.67 + (41.34 / 31.0) * np.arange(32))


SENSORS: dict[str, SensorModel] = {
    "hdl64": SensorModel(
        name="hdl64",
        elevations_deg=_hdl64_elevations(),
        azimuth_steps=2083,
        mount_height=1.73,
        max_range=100.0,
        min_range=1.0,
        ref_range=120.0,
        range_sigma=0.02,
        dropout=0.01,
        scan_interval=0.1,
        firing_order=False,
        laser_gain=_laser_gains(64, 0.25),
        reflectance_step=0.01,  # KITTI stores remission with two decimals
    ),
    "hdl32": SensorModel(
        name="hdl32",
        elevations_deg=_hdl32_elevations(),
        azimuth_steps=1084,
        mount_height=1.84,
        max_range=100.0,
        min_range=1.0,
        ref_range=100.0,
        range_sigma=0.02,
        dropout=0.01,
        scan_interval=0.5,
        firing_order=True,
        # Fitted to the share of each low ring that the real nuScenes scan loses to its own roof.
        ego_roof=(-1.5, 1.2, -0.95, 0.95, -0.6),
        laser_gain=_laser_gains(32, 0.2),
        region="city",
    ),
}


def get_sensor(name: str) -> SensorModel:
    """Sensor model by name; raises ``KeyError`` listing the known sensors."""
    try:
        return SENSORS[name]
    except KeyError:
        raise KeyError(f"unknown sensor {name!r}; known sensors: {sorted(SENSORS)}") from None
