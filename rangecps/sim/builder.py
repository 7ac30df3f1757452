"""Accumulates a scene's primitives with their labels, instances and materials."""

from __future__ import annotations

import numpy as np

from rangecps.sim.classes import SIM_CLASSES, class_id
from rangecps.sim.raycast import BOX, CYLINDER, ELLIPSOID, NPAR

Velocity = tuple[float, float]
STILL: Velocity = (0.0, 0.0)


class PrimitiveBuilder:
    """Accumulates primitives with their labels and materials; ``arrays()`` returns them as NumPy arrays."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self._rows: list[tuple] = []
        self._next_instance = 1

    def __len__(self) -> int:
        return len(self._rows)

    def instance(self, cls: str) -> int:
        """A new instance id for a thing class, 0 for stuff."""
        if not SIM_CLASSES[class_id(cls)].thing:
            return 0
        inst = self._next_instance
        if inst > 0xFFFF:
            raise ValueError("more than 65535 object instances in one sequence")
        self._next_instance += 1
        return inst

    def reflectance(self, cls: str) -> float:
        """Reflectance of one object of class ``cls``, drawn around the class mean."""
        c = SIM_CLASSES[class_id(cls)]
        return float(np.clip(self.rng.normal(c.reflectance, c.reflectance_std), 0.03, 0.95))

    def _add(
        self,
        kind: int,
        params: tuple[float, ...],
        cls: str,
        rho: float,
        inst: int,
        velocity: Velocity,
        gap: float,
        depth: float,
        loss: float,
        window: tuple[float, float],
    ) -> None:
        row = np.zeros(NPAR)
        row[: len(params)] = params
        self._rows.append((kind, row, class_id(cls), rho, inst, velocity, gap, depth, loss, window))

    def box(
        self,
        cls: str,
        cx: float,
        cy: float,
        yaw: float,
        length: float,
        width: float,
        z0: float,
        z1: float,
        *,
        sx: float = 0.0,
        sy: float = 0.0,
        rho: float | None = None,
        inst: int = 0,
        velocity: Velocity = STILL,
        gap: float = 0.0,
        depth: float = 0.0,
        loss: float = 0.0,
        window: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        """Box of ``length`` along ``yaw`` and ``width`` across, from ``z0`` up to a top plane through ``z1``
        at its centre with slopes ``sx`` (along) and ``sy`` (across)."""
        rho = self.reflectance(cls) if rho is None else rho
        params = (cx, cy, np.cos(yaw), np.sin(yaw), length / 2, width / 2, z0, z1, sx, sy)
        self._add(BOX, params, cls, rho, inst, velocity, gap, depth, loss, window)

    def cylinder(
        self,
        cls: str,
        cx: float,
        cy: float,
        r: float,
        z0: float,
        z1: float,
        *,
        rho: float | None = None,
        inst: int = 0,
        velocity: Velocity = STILL,
        gap: float = 0.0,
        depth: float = 0.0,
        loss: float = 0.0,
    ) -> None:
        rho = self.reflectance(cls) if rho is None else rho
        self._add(CYLINDER, (cx, cy, r, z0, z1), cls, rho, inst, velocity, gap, depth, loss, (0.0, 0.0))

    def ellipsoid(
        self,
        cls: str,
        cx: float,
        cy: float,
        cz: float,
        rx: float,
        ry: float,
        rz: float,
        *,
        rho: float | None = None,
        inst: int = 0,
        velocity: Velocity = STILL,
        gap: float = 0.0,
        depth: float = 0.0,
        loss: float = 0.0,
    ) -> None:
        rho = self.reflectance(cls) if rho is None else rho
        self._add(ELLIPSOID, (cx, cy, cz, rx, ry, rz), cls, rho, inst, velocity, gap, depth, loss, (0.0, 0.0))

    def arrays(self) -> dict[str, np.ndarray]:
        """Primitive table: kinds (P,) int32, params (P, NPAR) float64, cls (P,) int16, rho/gap/depth/loss (P,)
        float64, instance (P,) uint16, velocity (P, 2) float64, window (P, 2) float64."""
        if not self._rows:
            raise ValueError("the scene has no primitives")
        cols = list(zip(*self._rows, strict=True))
        return {
            "kinds": np.array(cols[0], np.int32),
            "params": np.stack(cols[1]).astype(np.float64),
            "cls": np.array(cols[2], np.int16),
            "rho": np.array(cols[3], np.float64),
            "instance": np.array(cols[4], np.uint16),
            "velocity": np.array(cols[5], np.float64).reshape(-1, 2),
            "gap": np.array(cols[6], np.float64),
            "depth": np.array(cols[7], np.float64),
            "loss": np.array(cols[8], np.float64),
            "window": np.array(cols[9], np.float64).reshape(-1, 2),
        }


def along(x: float, y: float, yaw: float, du: float, dv: float = 0.0) -> tuple[float, float]:
    """Point ``du`` ahead and ``dv`` to the left of ``(x, y)`` for heading ``yaw``."""
    c, s = np.cos(yaw), np.sin(yaw)
    return x + c * du - s * dv, y + s * du + c * dv
