"""Frontage lots beside a street: building rows, front yards with houses, parks, parking lots, thickets, yards.

A lot is generated in street coordinates: ``s`` along the street and ``d`` away from it (``d = d0`` is the outer
edge of the sidewalk). ``Side`` maps them to the scene frame, so the same generators serve both sides of the main
street and the side streets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rangecps.sim import objects as obj
from rangecps.sim import road_users as ru
from rangecps.sim.builder import PrimitiveBuilder


@dataclass(frozen=True)
class Side:
    """One side of a street: scene position of ``(s, d) = (0, 0)``, unit ``s`` axis, and on which hand ``d`` lies.

    ``orient`` is +1 when ``d`` points to the left of the ``s`` axis and -1 when to the right.
    """

    ox: float
    oy: float
    ux: float
    uy: float
    orient: float

    def xy(self, s: float, d: float) -> tuple[float, float]:
        return (
            self.ox + self.ux * s - self.uy * d * self.orient,
            self.oy + self.uy * s + self.ux * d * self.orient,
        )

    @property
    def yaw(self) -> float:
        return float(np.arctan2(self.uy, self.ux))

    def box(
        self,
        b: PrimitiveBuilder,
        cls: str,
        s0: float,
        s1: float,
        d0: float,
        d1: float,
        z0: float,
        z1: float,
        slope_s: float = 0.0,
        slope_d: float = 0.0,
        **kw: Any,
    ) -> None:
        """Box spanning ``[s0, s1] x [d0, d1]`` from ``z0`` up to a top through ``z1`` at its centre, tilted by
        ``slope_s`` / ``slope_d`` along ``s`` / ``d``; ``kw`` as for ``PrimitiveBuilder.box``."""
        x, y = self.xy((s0 + s1) / 2, (d0 + d1) / 2)
        b.box(
            cls,
            x,
            y,
            self.yaw,
            abs(s1 - s0),
            abs(d1 - d0),
            z0,
            z1,
            sx=slope_s,
            sy=slope_d * self.orient,
            **kw,
        )

    def hedge(self, b: PrimitiveBuilder, s0: float, s1: float, d: float, width: float, height: float) -> None:
        obj.add_hedge(b, self.xy(s0, d), self.xy(s1, d), width, height)

    def fence(
        self, b: PrimitiveBuilder, s0: float, s1: float, d: float, height: float, chain_link: bool
    ) -> None:
        obj.add_fence(b, self.xy(s0, d), self.xy(s1, d), height, chain_link)


def terrain_strip(
    b: PrimitiveBuilder,
    side: Side,
    s0: float,
    s1: float,
    d0: float,
    d1: float,
    base: float,
    amp: float,
    rise: float,
    cls: str = "terrain",
) -> None:
    """Undulating ground from ``d0`` to ``d1``: patches 3-8 m long whose tops join into a continuous
    piecewise-linear profile along ``s`` (heights ``base + amp * noise``), rising by ``rise`` per metre in ``d``."""
    rng = b.rng
    edges = [s0]
    while edges[-1] < s1 - 1e-6:
        edges.append(min(edges[-1] + rng.uniform(3.0, 8.0), s1))
    h = np.maximum(base + amp * rng.standard_normal(len(edges)), 0.03)
    rho = b.reflectance(cls)
    dc = (d0 + d1) / 2
    for i in range(len(edges) - 1):
        length = edges[i + 1] - edges[i]
        z_mid = (h[i] + h[i + 1]) / 2 + rise * (dc - d0)
        side.box(
            b,
            cls,
            edges[i],
            edges[i + 1],
            d0,
            d1,
            -0.3,
            z_mid,
            slope_s=(h[i + 1] - h[i]) / length,
            slope_d=rise,
            rho=rho,
        )


def _frontage(b: PrimitiveBuilder, side: Side, s0: float, s1: float, d0: float) -> None:
    """What separates a yard from the sidewalk: a hedge at car height, a fence, a low wall or nothing."""
    rng = b.rng
    kind = rng.choice(4, p=[0.4, 0.35, 0.15, 0.1])
    if kind == 0:
        side.hedge(b, s0, s1, d0 + 0.6, rng.uniform(0.6, 1.3), rng.uniform(0.9, 2.3))
    elif kind == 1:
        side.fence(b, s0, s1, d0 + 0.2, rng.uniform(0.9, 2.0), chain_link=bool(rng.random() < 0.3))
    elif kind == 2:
        side.box(b, "fence", s0, s1, d0 + 0.1, d0 + 0.35, 0.0, rng.uniform(0.5, 1.6))


def _gable_house(
    b: PrimitiveBuilder, side: Side, s0: float, s1: float, d0: float, depth: float, eaves: float
) -> None:
    """House with a pitched roof: walls up to the eaves and two sloped roof halves meeting at the ridge."""
    rng = b.rng
    rho = b.reflectance("building")
    win = (rng.uniform(2.0, 3.5), rng.uniform(0.2, 0.45))
    side.box(b, "building", s0, s1, d0, d0 + depth, -0.2, eaves, rho=rho, window=win)
    pitch = rng.uniform(0.4, 0.9)
    half = depth / 2
    roof_rho = b.reflectance("building")
    for k, (a, c) in enumerate(((d0 - 0.4, d0 + half), (d0 + half, d0 + depth + 0.4))):
        sign = 1.0 if k == 0 else -1.0
        side.box(
            b,
            "building",
            s0 - 0.3,
            s1 + 0.3,
            a,
            c,
            eaves - 0.3,
            eaves + pitch * (c - a) / 2,
            slope_d=sign * pitch,
            rho=roof_rho,
        )


def building_row(b: PrimitiveBuilder, side: Side, s0: float, s1: float, d0: float, style: dict) -> float:
    """Row of buildings with uneven facades (setbacks, recessed ground floors, balconies, bays, gaps).
    Returns the depth reached (for the background behind)."""
    rng = b.rng
    setback = rng.uniform(0.5, 3.5) if rng.random() < 0.4 else 0.0
    if setback > 0:
        cls = str(rng.choice(["sidewalk", "other-ground", "terrain"], p=[0.4, 0.3, 0.3]))
        side.box(b, cls, s0, s1, d0, d0 + setback + 2.0, -0.3, rng.uniform(0.1, 0.18))
        if setback > 1.2 and rng.random() < 0.8:  # small front gardens
            _frontage(b, side, s0, s1, d0)
            for _ in range(int((s1 - s0) / rng.uniform(3.0, 8.0))):
                obj.add_bush(
                    b, *side.xy(rng.uniform(s0, s1), d0 + rng.uniform(0.8, setback)), rng.uniform(0.3, 0.8)
                )
    s = s0
    deepest = d0 + setback + 10
    while s < s1 - 3.0:
        width = min(rng.uniform(8.0, 25.0), s1 - s)
        if rng.random() < 0.2 and width > 6:  # gap between buildings: driveway with a fence or a tree
            gap = rng.uniform(3.0, 6.0)
            if rng.random() < 0.5:
                side.fence(b, s + 0.3, s + gap - 0.3, d0 + setback + 1.0, rng.uniform(1.2, 2.0), False)
            else:
                x, y = side.xy(s + gap / 2, d0 + setback + rng.uniform(2.0, 5.0))
                obj.add_tree(b, x, y)
            s += gap
            continue
        front = d0 + setback + rng.uniform(0.0, 1.5)
        depth = rng.uniform(10.0, 18.0)
        height = rng.uniform(*style["building_height"])
        rho = b.reflectance("building")
        win = (rng.uniform(1.8, 3.5), rng.uniform(0.25, 0.5))
        if rng.random() < 0.3:  # arcade / recessed ground floor
            inset = rng.uniform(0.8, 1.8)
            side.box(
                b, "building", s, s + width, front + inset, front + depth, -0.2, 3.2, rho=rho, window=win
            )
            side.box(b, "building", s, s + width, front, front + depth, 3.2, height, rho=rho, window=win)
        else:
            side.box(b, "building", s, s + width, front, front + depth, -0.2, height, rho=rho, window=win)
        for _ in range(int(rng.integers(0, 4))):  # balconies and bay windows stick out of the facade
            w = rng.uniform(2.0, 4.0)
            a = s + rng.uniform(0.0, max(width - w, 0.1))
            z = 3.0 * int(rng.integers(1, max(2, int(height / 3.0))))
            if z + 1.0 > height:
                continue
            out = rng.uniform(0.6, 1.3)
            if rng.random() < 0.6:
                side.box(b, "building", a, a + w, front - out, front, z, z + 0.18, rho=rho)
                side.box(b, "building", a, a + w, front - out, front - out + 0.08, z + 0.18, z + 1.1, rho=rho)
            else:
                side.box(
                    b, "building", a, a + w, front - out, front, z, min(z + 2.8, height), rho=rho, window=win
                )
        deepest = max(deepest, front + depth)
        s += width
    return deepest


def front_yards(b: PrimitiveBuilder, side: Side, s0: float, s1: float, d0: float, style: dict) -> float:
    """Detached houses behind front yards: lawn, frontage hedge or fence, bushes, trees, driveways."""
    rng = b.rng
    s = s0
    deepest = d0 + 12
    while s < s1 - 4.0:
        plot = min(rng.uniform(14.0, 28.0), s1 - s)
        yard = rng.uniform(4.0, 12.0)
        terrain_strip(
            b, side, s, s + plot, d0, d0 + yard + 14.0, rng.uniform(0.1, 0.25), 0.04, rng.uniform(-0.01, 0.03)
        )
        drive = rng.random() < 0.5 and plot > 12
        a = s + 3.5 if drive else s
        _frontage(b, side, a, s + plot, d0)
        if drive:
            side.box(
                b,
                "other-ground" if rng.random() < 0.7 else "parking",
                s,
                s + 3.2,
                d0,
                d0 + yard + 1,
                -0.3,
                0.14,
            )
            if rng.random() < 0.5:
                x, y = side.xy(s + 1.6, d0 + rng.uniform(2.5, max(yard - 2.0, 2.6)))
                ru.add_car(b, x, y, side.yaw + np.pi / 2 + rng.normal(0, 0.05))
        house_w = min(rng.uniform(8.0, 14.0), plot - 4.0)
        hs = s + rng.uniform(3.5, max(plot - house_w, 3.6))
        _gable_house(
            b, side, hs, hs + house_w, d0 + yard, rng.uniform(8.0, 12.0), rng.uniform(*style["eaves"])
        )
        for _ in range(int(rng.integers(2, 9))):
            x, y = side.xy(rng.uniform(s + 1, s + plot - 1), d0 + rng.uniform(1.5, yard - 0.5))
            obj.add_bush(b, x, y, rng.uniform(0.4, 1.5))
        for _ in range(int(rng.integers(1, 4))):
            x, y = side.xy(rng.uniform(s + 2, s + plot - 2), d0 + rng.uniform(2.0, yard + 14.0))
            obj.add_tree(b, x, y, scale=rng.uniform(0.7, 1.3))
        deepest = max(deepest, d0 + yard + 12.0)
        s += plot
    return deepest


def park(b: PrimitiveBuilder, side: Side, s0: float, s1: float, d0: float, style: dict) -> float:
    """Green area: undulating lawn, a footpath, trees and bushes, sometimes fenced."""
    rng = b.rng
    depth = rng.uniform(20.0, 40.0)
    terrain_strip(b, side, s0, s1, d0, d0 + depth, 0.12, 0.08, rng.uniform(-0.01, 0.04))
    path_d = d0 + rng.uniform(4.0, 12.0)
    side.box(b, "sidewalk", s0, s1, path_d, path_d + rng.uniform(1.5, 3.0), -0.3, 0.2 + 0.04 * (path_d - d0))
    if rng.random() < 0.6:
        _frontage(b, side, s0, s1, d0)
    area = (s1 - s0) * depth
    for _ in range(int(area / rng.uniform(50.0, 110.0))):
        x, y = side.xy(rng.uniform(s0, s1), d0 + rng.uniform(1.5, depth))
        obj.add_tree(b, x, y, scale=rng.uniform(0.8, 1.5))
    for _ in range(int(area / rng.uniform(30.0, 80.0))):
        x, y = side.xy(rng.uniform(s0, s1), d0 + rng.uniform(1.0, depth))
        obj.add_bush(b, x, y, rng.uniform(0.4, 1.5))
    return d0 + depth


def parking_lot(b: PrimitiveBuilder, side: Side, s0: float, s1: float, d0: float, style: dict) -> float:
    """Parking lot with one or two rows of perpendicular bays, lamps, a low hedge, a building behind."""
    rng = b.rng
    depth = rng.uniform(14.0, 24.0)
    side.box(b, "parking", s0, s1, d0, d0 + depth, -0.3, rng.uniform(0.1, 0.16))
    if rng.random() < 0.5:
        side.hedge(b, s0 + 2.0, s1 - 2.0, d0 + 0.5, rng.uniform(0.6, 1.0), rng.uniform(0.7, 1.4))
    rows = [d0 + 3.5] + ([d0 + depth - 3.0] if depth > 18 else [])
    occupancy = rng.uniform(0.4, 0.95)
    for row_d in rows:
        for s in np.arange(s0 + 2.0, s1 - 2.0, rng.uniform(2.5, 2.9)):
            if rng.random() < occupancy:
                x, y = side.xy(float(s), row_d)
                yaw = side.yaw + np.pi / 2 + (np.pi if rng.random() < 0.3 else 0.0) + rng.normal(0, 0.04)
                if rng.random() < 0.04:
                    ru.add_trailer(b, x, y, yaw)
                else:
                    ru.add_car(b, x, y, yaw)
    for s in np.arange(s0 + 5.0, s1, 20.0):
        x, y = side.xy(float(s), d0 + depth / 2)
        obj.add_lamp(b, x, y, 1.0)
    building_row(b, side, s0, s1, d0 + depth, style)
    return d0 + depth + 15.0


def thicket(b: PrimitiveBuilder, side: Side, s0: float, s1: float, d0: float, style: dict) -> float:
    """Grass verge in front of a continuous mass of shrubs and trees (country-road edge), maybe fenced."""
    rng = b.rng
    strip = rng.uniform(1.0, 6.0)
    terrain_strip(b, side, s0, s1, d0, d0 + strip + 8.0, 0.1, 0.06, rng.uniform(0.0, 0.1))
    if rng.random() < 0.5:
        side.fence(
            b, s0, s1, d0 + strip * rng.uniform(0.2, 0.8), rng.uniform(1.0, 2.0), bool(rng.random() < 0.4)
        )
    s = s0
    while s < s1:
        r = rng.uniform(1.5, 4.5)
        h = rng.uniform(1.5, 5.0)
        x, y = side.xy(s, d0 + strip + r * 0.8 + rng.uniform(0.0, 2.0))
        b.ellipsoid("vegetation", x, y, h * 0.6, r, r, h, gap=0.08, depth=0.3)
        if rng.random() < 0.35:
            x, y = side.xy(s + rng.uniform(-1, 1), d0 + strip + rng.uniform(1.0, 6.0))
            obj.add_tree(b, x, y, scale=rng.uniform(1.0, 1.6))
        s += rng.uniform(1.5, 4.0)
    for _ in range(int((s1 - s0) / rng.uniform(6.0, 15.0))):
        x, y = side.xy(rng.uniform(s0, s1), d0 + rng.uniform(0.5, strip))
        obj.add_bush(b, x, y, rng.uniform(0.3, 1.0))
    return d0 + strip + 10.0


def industrial(b: PrimitiveBuilder, side: Side, s0: float, s1: float, d0: float, style: dict) -> float:
    """Fenced yard with parked trucks and trailers in front of a large hall."""
    rng = b.rng
    yard = rng.uniform(10.0, 22.0)
    side.box(b, "other-ground", s0, s1, d0, d0 + yard + 2, -0.3, rng.uniform(0.1, 0.16))
    side.fence(b, s0 + 0.5, s1 - 0.5, d0 + 0.6, rng.uniform(1.6, 2.4), chain_link=True)
    for s in np.arange(s0 + 6.0, s1 - 6.0, rng.uniform(9.0, 16.0)):
        if rng.random() < 0.6:
            x, y = side.xy(float(s), d0 + yard * rng.uniform(0.4, 0.7))
            yaw = side.yaw + np.pi / 2 + rng.normal(0, 0.1)
            kind = rng.choice(3, p=[0.5, 0.3, 0.2])
            (ru.add_truck, ru.add_trailer, ru.add_construction_vehicle)[kind](b, x, y, yaw)
    height = rng.uniform(6.0, 12.0)
    side.box(
        b,
        "building",
        s0 + 2,
        s1 - 2,
        d0 + yard,
        d0 + yard + rng.uniform(15.0, 30.0),
        -0.2,
        height,
        window=(rng.uniform(4.0, 8.0), rng.uniform(0.1, 0.2)),
    )
    return d0 + yard + 20.0


LOT_TYPES = {
    "building_row": building_row,
    "front_yards": front_yards,
    "park": park,
    "parking_lot": parking_lot,
    "thicket": thicket,
    "industrial": industrial,
}
