"""Road users of a scene: moving traffic spread along the whole street, and featured actors near the ego path.

Moving objects travel in straight lines at constant speed (``velocity`` of their primitives). Featured actors
make sure that the rare classes (two-wheelers, riders, people, large vehicles) appear within sensor range of every
drive, however short, at the low rates they have in real data.
"""

from __future__ import annotations

import numpy as np

from rangecps.sim import objects as obj
from rangecps.sim import road_users as ru
from rangecps.sim.builder import PrimitiveBuilder
from rangecps.sim.trajectory import EgoPath


def _vehicle(b: PrimitiveBuilder, x: float, y: float, yaw: float, v: tuple[float, float], mix: dict) -> None:
    """One moving road user drawn from ``mix`` (type -> weight)."""
    rng = b.rng
    names = list(mix)
    w = np.array([mix[n] for n in names])
    kind = names[rng.choice(len(names), p=w / w.sum())]
    if kind == "car_trailer":  # a car towing a trailer: the trailer is the "other-vehicle"
        ru.add_car(b, x, y, yaw, v)
        ru.add_trailer(b, x - np.cos(yaw) * 6.0, y - np.sin(yaw) * 6.0, yaw, v)
    else:
        {
            "car": ru.add_car,
            "truck": ru.add_truck,
            "bus": ru.add_bus,
            "motorcyclist": ru.add_motorcyclist,
            "bicyclist": ru.add_bicyclist,
        }[kind](b, x, y, yaw, v)


TRAFFIC_MIX = {"car": 0.86, "truck": 0.05, "bus": 0.03, "motorcyclist": 0.04, "car_trailer": 0.02}


def traffic(
    b: PrimitiveBuilder,
    prof: dict,
    ego: EgoPath,
    x0: float,
    x1: float,
    duration: float,
    style: dict,
    crossings: list[tuple[float, float]],
) -> None:
    """Moving road users: oncoming and same-direction traffic, a lead car, cyclists, walkers, side-street cars."""
    rng = b.rng
    lw, m, lanes = prof["lane_w"], prof["median"] / 2, prof["lanes"]
    for k in range(lanes):  # oncoming lanes, spread so that traffic keeps passing for the whole sequence
        y = m + (k + 0.5) * lw
        x = x0 + rng.uniform(0.0, 30.0)
        while x < x1 + 14.0 * duration:
            _vehicle(b, x, y, np.pi, (-rng.uniform(7.0, 14.0), 0.0), TRAFFIC_MIX)
            x += rng.uniform(40.0, 180.0)
    for k in range(lanes):  # same direction, other than the ego's lane
        y = -(m + (k + 0.5) * lw)
        if abs(y - ego.lane_y) < 0.5:
            for gap in (rng.uniform(10.0, 30.0), -rng.uniform(10.0, 25.0)):
                if rng.random() < 0.35:  # lead and following car keep the ego's speed
                    ru.add_car(b, ego.x0 + gap, y, 0.0, (ego.speed, 0.0))
            continue
        x = x0 + rng.uniform(0.0, 30.0)
        while x < x1:
            if abs(x - ego.x0) > 8.0:
                _vehicle(
                    b,
                    x,
                    y,
                    0.0,
                    (float(np.clip(ego.speed + rng.normal(0, 2.5), 3.0, 16.0)), 0.0),
                    TRAFFIC_MIX,
                )
            x += rng.uniform(20.0, 70.0)
    sides = prof["sides"]
    for _ in range(rng.poisson((x1 - x0) / 300.0)):  # cyclists along the curb of the oncoming side
        y = prof["road"] + sides[1.0]["parking"] - 0.8 if sides[1.0]["parking"] == 0 else prof["road"] - 0.8
        ru.add_bicyclist(b, rng.uniform(x0, x1 + 5.0 * duration), y, np.pi, (-rng.uniform(3.0, 6.5), 0.0))
    for sign in (1.0, -1.0):  # walkers and cyclists on the sidewalks
        p = sides[sign]
        d0 = prof["road"] + p["parking"] + p["verge"]
        for _ in range(rng.poisson((x1 - x0) / 100.0 * style["pedestrians"])):
            v = rng.uniform(0.8, 1.6) * (1.0 if rng.random() < 0.5 else -1.0)
            y = sign * (d0 + rng.uniform(0.5, max(p["sidewalk"] - 0.4, 0.6)))
            ru.add_person(b, rng.uniform(x0, x1), y, 0.0 if v > 0 else np.pi, (v, 0.0))
        for _ in range(rng.poisson((x1 - x0) / 600.0)):
            v = rng.uniform(2.5, 5.0) * (1.0 if rng.random() < 0.5 else -1.0)
            y = sign * (d0 + p["sidewalk"] / 2)
            ru.add_bicyclist(b, rng.uniform(x0, x1), y, 0.0 if v > 0 else np.pi, (v, 0.0))
    for xc, hw in crossings:  # side-street cars leaving the junction, so none drives through the ego's path
        for _ in range(int(rng.integers(0, 3))):
            sgn = 1.0 if rng.random() < 0.5 else -1.0
            y = sgn * (prof["road"] + rng.uniform(8.0, 40.0))
            _vehicle(
                b, xc - sgn * hw / 2, y, sgn * np.pi / 2, (0.0, sgn * rng.uniform(4.0, 10.0)), TRAFFIC_MIX
            )


def featured(b: PrimitiveBuilder, prof: dict, ego: EgoPath, duration: float) -> None:
    """Actors placed where the ego will see them: parked two-wheelers, people, a cyclist, a motorcyclist, a truck,
    bus or trailer, each with a probability, within a few tens of metres of the path."""
    rng = b.rng
    sides = prof["sides"]
    path = ego.speed * duration

    def sidewalk_point(margin: float = 0.3) -> tuple[float, float, float]:
        sign = 1.0 if rng.random() < 0.5 else -1.0
        p = sides[sign]
        d = (
            prof["road"]
            + p["parking"]
            + p["verge"]
            + rng.uniform(margin, max(p["sidewalk"] - margin, margin + 0.1))
        )
        # ahead of the drive or behind its start: near enough to be seen, not so near as to fill the scan
        x = ego.x0 + (path + rng.uniform(8.0, 40.0) if rng.random() < 0.7 else -rng.uniform(8.0, 25.0))
        return x, sign * d, sign

    if rng.random() < 0.8:
        x, y, _ = sidewalk_point()
        ru.add_bicycle(b, x, y, rng.uniform(-0.3, 0.3) + (np.pi if rng.random() < 0.5 else 0.0))
    if rng.random() < 0.6:
        x, y, _ = sidewalk_point(0.6)
        ru.add_motorcycle(b, x, y, rng.uniform(-0.3, 0.3) + (np.pi if rng.random() < 0.5 else 0.0))
    for _ in range(int(rng.integers(0, 3))):
        x, y, _ = sidewalk_point()
        v = rng.uniform(0.8, 1.5) * (1.0 if rng.random() < 0.5 else -1.0) if rng.random() < 0.6 else 0.0
        ru.add_person(b, x, y, 0.0 if v >= 0 else np.pi, (v, 0.0))
    if rng.random() < 0.5:  # works ahead: cones and barriers along the curb, sometimes a machine behind them
        sign = 1.0 if rng.random() < 0.5 else -1.0
        p = sides[sign]
        curb = prof["road"] + p["parking"]
        x = ego.x0 + path + rng.uniform(10.0, 40.0)
        for k in range(int(rng.integers(3, 7))):
            obj.add_cone(b, x + 1.8 * k, sign * (curb + 0.3))
        for k in range(int(rng.integers(1, 4))):
            obj.add_barrier(b, x + 1.0 + 2.2 * k, sign * (curb + 0.8), 0.0)
        if rng.random() < 0.6:
            d = curb + p["verge"] + p["sidewalk"] + rng.uniform(2.5, 5.0)
            ru.add_construction_vehicle(b, x + rng.uniform(0.0, 8.0), sign * d, rng.uniform(0.0, 2.0 * np.pi))
    oncoming = prof["median"] / 2 + 0.5 * prof["lane_w"]
    if rng.random() < 0.6:  # cyclist coming the other way along the far curb
        v = rng.uniform(3.0, 6.0)
        x = ego.x0 + rng.uniform(10.0, 40.0) + (ego.speed + v) * duration * rng.uniform(0.2, 0.8)
        ru.add_bicyclist(b, x, prof["road"] - 0.8, np.pi, (-v, 0.0))
    if rng.random() < 0.5:  # oncoming motorcyclist passing during the drive
        v = rng.uniform(8.0, 14.0)
        x = ego.x0 + rng.uniform(15.0, 50.0) + (ego.speed + v) * duration * rng.uniform(0.2, 0.8)
        ru.add_motorcyclist(b, x, oncoming, np.pi, (-v, 0.0))
    if rng.random() < 0.6:  # a large vehicle coming the other way
        v = rng.uniform(6.0, 12.0)
        x = ego.x0 + rng.uniform(25.0, 70.0) + (ego.speed + v) * duration * rng.uniform(0.2, 0.8)
        kind = rng.choice(3)
        if kind == 2:
            ru.add_car(b, x, oncoming, np.pi, (-v, 0.0))
            ru.add_trailer(b, x + 6.0, oncoming, np.pi, (-v, 0.0))
        else:
            (ru.add_truck, ru.add_bus)[kind](b, x, oncoming, np.pi, (-v, 0.0))
