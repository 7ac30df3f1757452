"""Road users as unions of primitives: cars, trucks, buses, trailers, two-wheelers with and without riders, people.

Every builder takes the ground position (scene frame, ground at z = 0), a heading ``yaw`` (rad) and, for moving
objects, a velocity ``(vx, vy)`` (m/s) shared by all of the object's parts. Sizes are drawn from ranges wide
enough that no single dimension identifies a class: small cars are lower than hedges, vans are as tall as
trailers, people are as thin as poles.
"""

from __future__ import annotations

from rangecps.sim.builder import STILL, PrimitiveBuilder, Velocity, along

CAR_SIZES = {  # length, width, height ranges (m)
    "small": ((3.5, 4.0), (1.60, 1.72), (1.40, 1.52)),
    "sedan": ((4.3, 4.9), (1.74, 1.86), (1.40, 1.50)),
    "suv": ((4.4, 5.0), (1.82, 1.98), (1.62, 1.80)),
    "van": ((4.8, 5.6), (1.90, 2.05), (1.85, 2.20)),
}


def add_car(
    b: PrimitiveBuilder, x: float, y: float, yaw: float, velocity: Velocity = STILL, size: str | None = None
) -> None:
    """Car: lower body, glazed cabin and two axle blocks. ``size`` in ``CAR_SIZES`` (random if None)."""
    rng = b.rng
    size = size or str(rng.choice(list(CAR_SIZES), p=[0.25, 0.4, 0.25, 0.1]))
    (l0, l1), (w0, w1), (h0, h1) = CAR_SIZES[size]
    length, width, height = rng.uniform(l0, l1), rng.uniform(w0, w1), rng.uniform(h0, h1)
    inst, rho = b.instance("car"), b.reflectance("car")
    belt = height * (0.62 if size != "van" else 0.5)
    kw = {"inst": inst, "velocity": velocity}
    b.box("car", x, y, yaw, length, width, 0.28, belt, rho=rho, **kw)
    cabin = length * (0.52 if size in ("small", "sedan") else 0.75)
    cx, cy = along(x, y, yaw, -0.08 * length if size in ("small", "sedan") else -0.1)
    b.box("car", cx, cy, yaw, cabin, width * 0.9, belt, height, rho=0.1, loss=0.45, **kw)
    for sgn in (-1.0, 1.0):
        ax, ay = along(x, y, yaw, sgn * (length / 2 - 0.85))
        b.box("car", ax, ay, yaw, 0.62, width - 0.06, 0.0, 0.3, rho=0.08, **kw)


def add_truck(b: PrimitiveBuilder, x: float, y: float, yaw: float, velocity: Velocity = STILL) -> None:
    """Truck: cab in front of a box body, both on wheels."""
    rng = b.rng
    inst = b.instance("truck")
    body_len, width = rng.uniform(4.5, 8.5), rng.uniform(2.3, 2.55)
    cab_len, height = rng.uniform(1.8, 2.4), rng.uniform(2.9, 3.8)
    kw = {"inst": inst, "velocity": velocity}
    total = body_len + cab_len + 0.3
    cx, cy = along(x, y, yaw, total / 2 - cab_len / 2)
    b.box("truck", cx, cy, yaw, cab_len, width, 0.5, rng.uniform(2.5, 3.0), **kw)
    bx, by = along(x, y, yaw, -total / 2 + body_len / 2)
    b.box("truck", bx, by, yaw, body_len, width + 0.05, 0.9, height, **kw)
    for du in (total / 2 - cab_len / 2, -total / 2 + 1.2, -total / 2 + 2.6):
        wx, wy = along(x, y, yaw, du)
        b.box("truck", wx, wy, yaw, 1.0, width - 0.1, 0.0, 0.95, rho=0.08, **kw)


def add_bus(b: PrimitiveBuilder, x: float, y: float, yaw: float, velocity: Velocity = STILL) -> None:
    """City bus: one long box with a glazed band, on wheels."""
    rng = b.rng
    inst = b.instance("bus")
    length, width, height = rng.uniform(10.5, 12.5), rng.uniform(2.45, 2.55), rng.uniform(3.0, 3.3)
    kw = {"inst": inst, "velocity": velocity}
    b.box("bus", x, y, yaw, length, width, 0.35, 1.1, **kw)
    b.box("bus", x, y, yaw, length, width, 1.1, 2.3, rho=0.1, loss=0.35, **kw)
    b.box("bus", x, y, yaw, length, width, 2.3, height, **kw)


def add_trailer(b: PrimitiveBuilder, x: float, y: float, yaw: float, velocity: Velocity = STILL) -> None:
    """Other vehicle: a caravan or box trailer with a drawbar."""
    rng = b.rng
    inst = b.instance("trailer")
    length, width, height = rng.uniform(3.0, 6.5), rng.uniform(1.9, 2.4), rng.uniform(1.6, 2.8)
    kw = {"inst": inst, "velocity": velocity}
    b.box("trailer", x, y, yaw, length, width, 0.45, height, **kw)
    dx, dy = along(x, y, yaw, length / 2 + 0.6)
    b.box("trailer", dx, dy, yaw, 1.2, 0.12, 0.35, 0.5, **kw)
    b.box("trailer", x, y, yaw, 0.7, width - 0.1, 0.0, 0.45, rho=0.08, **kw)


def add_construction_vehicle(b: PrimitiveBuilder, x: float, y: float, yaw: float) -> None:
    """Other vehicle: an excavator-like machine on tracks, with a cab and a raised boom."""
    rng = b.rng
    inst = b.instance("construction-vehicle")
    kw = {"inst": inst, "rho": b.reflectance("construction-vehicle")}
    length, width = rng.uniform(3.5, 5.5), rng.uniform(2.2, 2.8)
    b.box("construction-vehicle", x, y, yaw, length, width, 0.0, 0.9, **kw)  # tracks
    b.box("construction-vehicle", x, y, yaw, length * 0.7, width * 0.95, 0.9, 1.9, **kw)  # turret
    cx, cy = along(x, y, yaw, 0.2 * length, 0.25 * width)
    b.box("construction-vehicle", cx, cy, yaw, 1.2, 1.0, 1.9, 3.0, **kw)  # cab
    bx, by = along(x, y, yaw, 0.55 * length, -0.2 * width)
    b.box("construction-vehicle", bx, by, yaw, 2.2, 0.35, 1.6, 2.6, sx=0.6, **kw)  # boom
    ax, ay = along(x, y, yaw, 0.55 * length + 1.4, -0.2 * width)
    b.box("construction-vehicle", ax, ay, yaw, 0.4, 0.35, 0.3, 2.9, **kw)  # arm down to the bucket


def _two_wheeler(
    b: PrimitiveBuilder, cls: str, x: float, y: float, yaw: float, inst: int, velocity: Velocity, motor: bool
) -> None:
    rng = b.rng
    kw = {"inst": inst, "velocity": velocity}
    wheel = rng.uniform(0.6, 0.7)
    base = rng.uniform(1.0, 1.15) if not motor else rng.uniform(1.3, 1.5)
    tyre = 0.05 if not motor else 0.14
    for sgn in (-1.0, 1.0):
        wx, wy = along(x, y, yaw, sgn * base / 2)
        b.box(cls, wx, wy, yaw, wheel, tyre, 0.0, wheel, rho=0.1, **kw)
    if motor:
        b.box(cls, x, y, yaw, base * 0.9, rng.uniform(0.45, 0.7), 0.3, rng.uniform(0.95, 1.15), **kw)
    else:
        b.box(cls, x, y, yaw, base * 0.85, 0.06, wheel * 0.6, wheel * 1.35, **kw)
    hx, hy = along(x, y, yaw, base / 2 - 0.1)
    b.box(cls, hx, hy, yaw, 0.06, rng.uniform(0.5, 0.75), 0.95, 1.1 if not motor else 1.2, **kw)


def _rider(
    b: PrimitiveBuilder,
    cls: str,
    x: float,
    y: float,
    yaw: float,
    inst: int,
    velocity: Velocity,
    seat: float,
    helmet: bool,
) -> None:
    rng = b.rng
    kw = {"inst": inst, "velocity": velocity}
    torso = rng.uniform(0.55, 0.7)
    sx, sy = along(x, y, yaw, -0.15)
    b.cylinder(cls, sx, sy, rng.uniform(0.16, 0.21), seat, seat + torso, **kw)
    b.box(cls, x, y, yaw, 0.5, 0.34, seat - 0.45, seat, **kw)  # thighs and legs
    r_head = 0.14 if helmet else 0.11
    b.ellipsoid(
        cls,
        sx,
        sy,
        seat + torso + r_head + 0.03,
        r_head,
        r_head,
        r_head * 1.1,
        rho=0.5 if helmet else None,
        **kw,
    )


def add_bicycle(b: PrimitiveBuilder, x: float, y: float, yaw: float) -> None:
    """Parked bicycle (no rider)."""
    _two_wheeler(b, "bicycle", x, y, yaw, b.instance("bicycle"), STILL, motor=False)


def add_motorcycle(b: PrimitiveBuilder, x: float, y: float, yaw: float) -> None:
    """Parked motorcycle or scooter (no rider)."""
    _two_wheeler(b, "motorcycle", x, y, yaw, b.instance("motorcycle"), STILL, motor=True)


def add_bicyclist(b: PrimitiveBuilder, x: float, y: float, yaw: float, velocity: Velocity = STILL) -> None:
    """Bicycle with its rider; SemanticKITTI labels both as bicyclist."""
    inst = b.instance("bicyclist")
    _two_wheeler(b, "bicyclist", x, y, yaw, inst, velocity, motor=False)
    _rider(b, "bicyclist", x, y, yaw, inst, velocity, seat=b.rng.uniform(0.95, 1.1), helmet=False)


def add_motorcyclist(b: PrimitiveBuilder, x: float, y: float, yaw: float, velocity: Velocity = STILL) -> None:
    """Motorcycle with its rider, labelled motorcyclist."""
    inst = b.instance("motorcyclist")
    _two_wheeler(b, "motorcyclist", x, y, yaw, inst, velocity, motor=True)
    _rider(b, "motorcyclist", x, y, yaw, inst, velocity, seat=b.rng.uniform(0.8, 0.95), helmet=True)


def add_person(b: PrimitiveBuilder, x: float, y: float, yaw: float, velocity: Velocity = STILL) -> None:
    """Pedestrian 1.45-1.95 m tall: two legs, torso with arms, head."""
    rng = b.rng
    inst, rho = b.instance("person"), b.reflectance("person")
    h = rng.uniform(1.45, 1.95)
    kw = {"inst": inst, "velocity": velocity, "rho": rho}
    stride = 0.12 if velocity != STILL else 0.0
    for sgn in (-1.0, 1.0):
        lx, ly = along(x, y, yaw, sgn * stride, sgn * 0.1)
        b.cylinder("person", lx, ly, 0.075, 0.0, 0.47 * h, **kw)
    b.cylinder("person", x, y, rng.uniform(0.17, 0.23), 0.47 * h, 0.82 * h, **kw)
    b.ellipsoid("person", x, y, 0.9 * h, 0.095, 0.095, 0.11, **kw)
