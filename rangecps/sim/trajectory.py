"""The ego vehicle's path along the main street, as sensor-to-scene poses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EgoPath:
    """Constant-speed drive along +x in one lane, with a slow lateral sway and small body pitch and roll.

    Attributes:
        x0: scene x of the sensor at time 0 (m).
        lane_y: scene y of the lane centre (m).
        speed: forward speed (m/s).
        mount_height: sensor height above the road (m).
        sway: lateral sway amplitude (m) and period (s) and phase (rad).
        wobble: pitch and roll amplitude (rad) and their periods (s).
    """

    x0: float
    lane_y: float
    speed: float
    mount_height: float
    sway: tuple[float, float, float] = (0.15, 12.0, 0.0)
    wobble: tuple[float, float, float, float] = (0.003, 0.002, 1.7, 2.3)

    def position(self, t: float) -> tuple[float, float]:
        amp, period, phase = self.sway
        return self.x0 + self.speed * t, self.lane_y + amp * np.sin(2.0 * np.pi * t / period + phase)

    def pose(self, t: float) -> np.ndarray:
        """``(4, 4) float64`` sensor-to-scene transform at time ``t`` (s)."""
        amp, period, phase = self.sway
        x, y = self.position(t)
        dy = amp * 2.0 * np.pi / period * np.cos(2.0 * np.pi * t / period + phase)
        yaw = np.arctan2(dy, self.speed)
        pitch_amp, roll_amp, pitch_period, roll_period = self.wobble
        pitch = pitch_amp * np.sin(2.0 * np.pi * t / pitch_period)
        roll = roll_amp * np.sin(2.0 * np.pi * t / roll_period + 1.0)
        cy, sy = np.cos(yaw), np.sin(yaw)
        cp, sp = np.cos(pitch), np.sin(pitch)
        cr, sr = np.cos(roll), np.sin(roll)
        rz = np.array([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]])
        ry = np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]])
        rx = np.array([[1.0, 0.0, 0.0], [0.0, cr, -sr], [0.0, sr, cr]])
        pose = np.eye(4)
        pose[:3, :3] = rz @ ry @ rx
        pose[:3, 3] = (x, y, self.mount_height)
        return pose


def relative_pose(first: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Pose of ``current`` in the frame of ``first`` (KITTI convention: world = the first scan's sensor frame)."""
    inv = np.eye(4)
    inv[:3, :3] = first[:3, :3].T
    inv[:3, 3] = -first[:3, :3].T @ first[:3, 3]
    return inv @ current
