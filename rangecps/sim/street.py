"""Street cross-sections: parking lanes, curbs, verges, sidewalks and their furniture, lots, side streets.

Coordinates as in ``scene.py``; a ``Side`` maps street coordinates (``s`` along, ``d`` away from the axis) to the
scene frame, so one set of builders serves both sides of the main street and the side streets.
"""

from __future__ import annotations

import numpy as np

from rangecps.sim import objects as obj
from rangecps.sim import road_users as ru
from rangecps.sim.builder import PrimitiveBuilder
from rangecps.sim.lots import LOT_TYPES, Side, terrain_strip


def intervals(x0: float, x1: float, crossings: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Pieces of ``[x0, x1]`` between the side streets (each ``(xc, half width incl. sidewalks)``)."""
    out, a = [], x0
    for xc, hw in sorted(crossings):
        out.append((a, xc - hw))
        a = xc + hw
    out.append((a, x1))
    return [(a, b) for a, b in out if b - a > 1.0]


def lots(b: PrimitiveBuilder, side: Side, s0: float, s1: float, d0: float, style: dict) -> None:
    """Fill ``[s0, s1]`` with lots of random types, then a backdrop behind the deepest one."""
    rng = b.rng
    names, weights = list(style["lots"]), np.array(list(style["lots"].values()))
    s = s0
    while s < s1 - 2.0:
        length = min(rng.uniform(20.0, 70.0), s1 - s)
        if s1 - (s + length) < 10.0:
            length = s1 - s
        depth = LOT_TYPES[names[rng.choice(len(names), p=weights / weights.sum())]](
            b, side, s, s + length, d0, style
        )
        if rng.random() < style["planting"]:
            _planting(b, side, s, s + length, d0)
        back = max(depth, d0 + 25.0) + rng.uniform(0.0, 10.0)
        if rng.random() < 0.5:  # backdrop: tall buildings or a wood edge that the upper beams hit
            side.box(
                b,
                "building",
                s,
                s + length,
                back,
                back + 15.0,
                -0.2,
                rng.uniform(8.0, 30.0),
                window=(rng.uniform(2.0, 3.5), 0.3),
            )
        else:
            for a in np.arange(s, s + length, 5.0):
                x, y = side.xy(float(a), back + 3.0)
                b.ellipsoid("vegetation", x, y, 5.0, 4.0, 4.0, rng.uniform(6.0, 11.0), gap=0.1, depth=0.4)
        s += length


def _planting(b: PrimitiveBuilder, side: Side, s0: float, s1: float, d0: float) -> None:
    """Shrub beds along the back of the sidewalk, in front of whatever the lot holds."""
    rng = b.rng
    cover = rng.uniform(0.4, 0.9)
    s = s0 + rng.uniform(0.0, 3.0)
    while s < s1 - 1.0:
        length = min(rng.uniform(2.0, 8.0), s1 - s)
        if rng.random() < cover:
            if rng.random() < 0.5:
                side.hedge(b, s, s + length, d0 + 0.7, rng.uniform(0.6, 1.2), rng.uniform(0.6, 2.2))
            else:
                for a in np.arange(s, s + length, rng.uniform(0.8, 1.6)):
                    obj.add_bush(b, *side.xy(float(a), d0 + rng.uniform(0.5, 1.5)), rng.uniform(0.4, 1.2))
        s += length


def _sidewalk_furniture(
    b: PrimitiveBuilder,
    side: Side,
    s0: float,
    s1: float,
    curb_d: float,
    walk: tuple,
    style: dict,
    toward_road: float,
) -> None:
    """Street trees, lamps, signs, standing people, parked bicycles along one sidewalk piece."""
    rng = b.rng
    length = s1 - s0
    near = curb_d + 0.6
    poles = []
    if rng.random() < style["street_trees"]:
        spacing = rng.uniform(9.0, 18.0)
        scale = rng.uniform(0.9, 1.4)
        for s in np.arange(s0 + rng.uniform(2, spacing), s1 - 2, spacing):
            x, y = side.xy(float(s), near + 0.3)
            obj.add_tree(b, x, y, scale=scale * rng.uniform(0.85, 1.15), base=(1.6, 2.6))
            for _ in range(int(rng.integers(0, 3))):  # planted tree pit
                obj.add_bush(
                    b, *side.xy(float(s) + rng.uniform(-2.0, 2.0), near + 0.3), rng.uniform(0.3, 0.8)
                )
    for s in np.arange(s0 + rng.uniform(3, 20), s1 - 2, rng.uniform(35.0, 60.0)):
        x, y = side.xy(float(s), near)
        obj.add_lamp(b, x, y, toward_road)
        poles.append((float(s), near))
    for _ in range(rng.poisson(length / 80.0)):
        s = rng.uniform(s0 + 1, s1 - 1)
        x, y = side.xy(s, near)
        obj.add_sign(b, x, y, facing_x=side.yaw == 0.0)
        poles.append((s, near))
    for _ in range(rng.poisson(length / 100.0 * style["pedestrians"])):
        if poles and rng.random() < 0.5:  # waiting next to a pole, the hardest place to tell them apart
            s, d = poles[int(rng.integers(len(poles)))]
            s, d = s + rng.uniform(-0.9, 0.9), d + rng.uniform(0.4, 0.9)
        else:
            s, d = rng.uniform(s0, s1), rng.uniform(*walk)
        ru.add_person(b, *side.xy(s, d), rng.uniform(0, 2 * np.pi))
    for _ in range(rng.poisson(length / 150.0)):
        s, d = (
            poles[int(rng.integers(len(poles)))]
            if poles and rng.random() < 0.5
            else (rng.uniform(s0, s1), walk[1])
        )
        ru.add_bicycle(b, *side.xy(s + 0.5, d + 0.2), side.yaw + rng.normal(0.0, 0.2))


def street_side(b: PrimitiveBuilder, prof: dict, sign: float, pieces: list, style: dict) -> None:
    """Parking lane, curb, verge, sidewalk, furniture and lots of one side of the main street."""
    rng = b.rng
    p = prof["sides"][sign]
    side = Side(0.0, 0.0, 1.0, 0.0, sign)
    d = prof["road"]
    for s0, s1 in pieces:
        d_curb = d + p["parking"]
        if p["parking"] > 0:
            side.box(b, "parking", s0, s1, d, d_curb, -0.3, 0.015)
            lo, hi = style["parked"]
            occupancy = rng.uniform(lo, hi)
            s = s0 + rng.uniform(0.5, 3.0)
            while s < s1 - 5.0:
                kind = rng.random()
                x, y = side.xy(s + 2.5, d + p["parking"] / 2)
                yaw = 0.0 if rng.random() < 0.8 else np.pi
                if rng.random() > occupancy:
                    s += rng.uniform(4.0, 7.0)
                elif kind < 0.02:
                    ru.add_truck(b, x + 2.5, y, yaw)
                    s += 12.0
                elif kind < 0.035:
                    ru.add_trailer(b, x, y, yaw)
                    s += 7.5
                elif kind < 0.07:
                    ru.add_motorcycle(b, x - 1.0, y, yaw + rng.normal(0, 0.3))
                    s += 3.0
                else:
                    ru.add_car(b, x, y, yaw + rng.normal(0.0, 0.03))
                    s += rng.uniform(5.3, 7.5)
            if rng.random() < 0.3:  # road works on the parking lane
                a = rng.uniform(s0, max(s0, s1 - 12))
                for k in range(int(rng.integers(3, 7))):
                    obj.add_cone(b, *side.xy(a + 1.8 * k, d + 0.4))
                for k in range(int(rng.integers(1, 4))):
                    obj.add_barrier(b, *side.xy(a + 2.0 + 2.2 * k, d + p["parking"] - 0.4), side.yaw)
        walk0 = d_curb + p["verge"]
        walk1 = walk0 + p["sidewalk"]
        if p["verge"] > 0:
            terrain_strip(b, side, s0, s1, d_curb, walk0, p["curb"] + 0.04, 0.02, 0.0)
            if rng.random() < 0.6:  # low hedge along the verge
                side.hedge(
                    b,
                    s0 + 1.0,
                    s1 - 1.0,
                    (d_curb + walk0) / 2,
                    min(p["verge"] * 0.6, 1.0),
                    rng.uniform(0.5, 1.5),
                )
        # sidewalk drains towards the road: 2 % cross slope
        top = p["curb"] + 0.02 * (walk1 - d_curb) / 2
        side.box(b, "sidewalk", s0, s1, d_curb if p["verge"] == 0 else walk0, walk1, -0.3, top, slope_d=0.02)
        _sidewalk_furniture(b, side, s0, s1, d_curb, (walk0 + 0.5, walk1 - 0.3), style, -sign)
        lots(b, side, s0, s1, walk1, style)
    if prof["median"] > 0 and sign > 0:
        for s0, s1 in pieces:
            m = prof["median"] / 2
            if rng.random() < 0.5:
                terrain_strip(b, side, s0, s1, -m, m, 0.15, 0.03, 0.0)
                for s in np.arange(s0 + 4.0, s1 - 2, rng.uniform(8.0, 16.0)):
                    obj.add_tree(b, *side.xy(float(s), 0.0), scale=0.8)
            else:
                side.box(b, "other-ground", s0, s1, -m, m, -0.3, 0.15)
                for s in np.arange(s0 + 4.0, s1 - 2, rng.uniform(6.0, 12.0)):
                    obj.add_bush(b, *side.xy(float(s), 0.0), min(m, 0.7))


def side_street(
    b: PrimitiveBuilder,
    xc: float,
    hw: float,
    walk: float,
    curb_y: tuple[float, float],
    y_far: float,
    style: dict,
) -> None:
    """A side street crossing the main one at ``x = xc``: sidewalks, corner lights, lots beyond the corners."""
    rng = b.rng
    for orient in (-1.0, 1.0):
        side = Side(xc, 0.0, 0.0, 1.0, orient)  # s along +y, d away from the side street's axis
        for s0, s1 in ((curb_y[0], y_far), (-y_far, -curb_y[1])):
            side.box(b, "sidewalk", s0, s1, hw, hw + walk, -0.3, rng.uniform(0.1, 0.16))
            corner = s0 if s0 > 0 else s1
            obj.add_traffic_light(b, *side.xy(corner + np.sign(corner) * 1.0, hw + 0.5))
            lot0, lot1 = (s0 + 40.0, s1) if s0 > 0 else (s0, s1 - 40.0)
            if lot1 - lot0 > 10.0:
                lots(b, side, lot0, lot1, hw + walk, style)
            for s in np.arange(min(s0, s1) + 5.0, max(s0, s1), rng.uniform(25.0, 40.0)):
                obj.add_lamp(b, *side.xy(float(s), hw + 0.5), 1.0)
