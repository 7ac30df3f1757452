"""Static street objects as unions of primitives: trees, bushes, hedges, poles, lamps, signs, fences, cones.

Positions are ground points in the scene frame (ground at z = 0). Shapes overlap in height on purpose: hedges
stand at car height, bushes near fences, trunks inside crowns, sign plates at head height on thin poles.
"""

from __future__ import annotations

import numpy as np

from rangecps.sim.builder import PrimitiveBuilder, along


def add_tree(
    b: PrimitiveBuilder, x: float, y: float, scale: float = 1.0, base: tuple[float, float] = (1.0, 2.6)
) -> None:
    """Tree: trunk reaching into a porous crown of one to three overlapping ellipsoids starting ``base`` m up."""
    rng = b.rng
    crown_r = rng.uniform(2.0, 4.0) * scale
    crown_h = rng.uniform(0.8, 1.3) * crown_r
    base = rng.uniform(*base)
    b.cylinder("trunk", x, y, rng.uniform(0.05, 0.15) * (0.6 + 0.4 * scale), 0.0, base + crown_h)
    rho = b.reflectance("vegetation")
    for k in range(int(rng.integers(1, 4))):
        ox, oy = rng.normal(0.0, 0.35 * crown_r, 2) if k else (0.0, 0.0)
        f = 1.0 if k == 0 else rng.uniform(0.55, 0.8)
        b.ellipsoid(
            "vegetation",
            x + ox,
            y + oy,
            base + crown_h * rng.uniform(0.9, 1.2),
            crown_r * f,
            crown_r * f * rng.uniform(0.85, 1.15),
            crown_h * f,
            rho=rho,
            gap=0.12,
            depth=0.35,
        )


def add_bush(b: PrimitiveBuilder, x: float, y: float, size: float) -> None:
    """Bush sunk slightly into the ground: 0.4-2.5 m tall for ``size`` 0.3-1.5."""
    rng = b.rng
    rz = size * rng.uniform(0.7, 1.0)
    b.ellipsoid(
        "vegetation",
        x,
        y,
        rz * 0.65,
        size * rng.uniform(0.8, 1.3),
        size * rng.uniform(0.8, 1.3),
        rz,
        gap=0.05,
        depth=0.15,
    )


def add_hedge(
    b: PrimitiveBuilder, p0: tuple[float, float], p1: tuple[float, float], width: float, height: float
) -> None:
    """Clipped hedge along the segment ``p0 -> p1``, in pieces 2-5 m long of slightly uneven height."""
    rng = b.rng
    (x0, y0), (x1, y1) = p0, p1
    total = float(np.hypot(x1 - x0, y1 - y0))
    yaw = float(np.arctan2(y1 - y0, x1 - x0))
    rho = b.reflectance("vegetation")
    u = 0.0
    while u < total - 0.3:
        seg = min(rng.uniform(2.0, 5.0), total - u)
        cx, cy = along(x0, y0, yaw, u + seg / 2)
        b.box(
            "vegetation",
            cx,
            cy,
            yaw,
            seg,
            width,
            -0.1,
            height + rng.normal(0.0, 0.06),
            rho=rho,
            gap=0.03,
            depth=0.12,
        )
        u += seg


def add_pole(b: PrimitiveBuilder, x: float, y: float, height: float, radius: float) -> None:
    b.cylinder("pole", x, y, radius, 0.0, height)


def add_lamp(b: PrimitiveBuilder, x: float, y: float, toward_road: float) -> None:
    """Street lamp: tall pole with an arm reaching over the road (``toward_road`` = +1 or -1 in y)."""
    rng = b.rng
    h = rng.uniform(5.5, 9.0)
    add_pole(b, x, y, h, rng.uniform(0.07, 0.13))
    arm = rng.uniform(0.8, 2.0)
    b.box("pole", x, y + toward_road * arm / 2, np.pi / 2, arm, 0.08, h - 0.12, h)
    b.box("pole", x, y + toward_road * arm, np.pi / 2, 0.6, 0.3, h - 0.25, h)


def add_sign(b: PrimitiveBuilder, x: float, y: float, facing_x: bool) -> None:
    """Traffic sign: thin pole (``pole``) carrying one or two plates (``traffic-sign``)."""
    rng = b.rng
    h = rng.uniform(2.0, 3.2)
    add_pole(b, x, y, h + 0.1, rng.uniform(0.03, 0.05))
    top = h
    for _ in range(int(rng.integers(1, 3))):
        size = rng.uniform(0.45, 0.9)
        yaw = np.pi / 2 if facing_x else 0.0  # plate's long axis across the traffic it faces
        b.box("traffic-sign", x, y, yaw, size, 0.04, top - size, top)
        top -= size + 0.05


def add_traffic_light(b: PrimitiveBuilder, x: float, y: float) -> None:
    """Pole with a signal head; the head is labelled traffic-sign like SemanticKITTI's signal heads."""
    rng = b.rng
    h = rng.uniform(3.0, 4.5)
    add_pole(b, x, y, h + 0.2, rng.uniform(0.06, 0.1))
    b.box("traffic-sign", x, y, 0.0, 0.35, 0.35, h - 1.0, h, rho=b.reflectance("pole"))


def add_fence(
    b: PrimitiveBuilder, p0: tuple[float, float], p1: tuple[float, float], height: float, chain_link: bool
) -> None:
    """Fence along ``p0 -> p1``: see-through chain link or solid boards, with posts every 2.5 m."""
    rng = b.rng
    (x0, y0), (x1, y1) = p0, p1
    total = float(np.hypot(x1 - x0, y1 - y0))
    yaw = float(np.arctan2(y1 - y0, x1 - x0))
    rho = b.reflectance("fence")
    gap = rng.uniform(0.45, 0.7) if chain_link else 0.0
    cx, cy = along(x0, y0, yaw, total / 2)
    b.box("fence", cx, cy, yaw, total, 0.04, 0.0, height, rho=rho, gap=gap)
    for u in np.arange(0.0, total + 1e-6, 2.5):
        px, py = along(x0, y0, yaw, float(u))
        b.box("fence", px, py, yaw, 0.08, 0.08, 0.0, height + 0.05, rho=rho)


def add_barrier(b: PrimitiveBuilder, x: float, y: float, yaw: float) -> None:
    """Road-works barrier: a striped board on two feet."""
    inst = b.instance("barrier")
    b.box("barrier", x, y, yaw, b.rng.uniform(1.2, 2.0), 0.06, 0.55, 1.0, inst=inst)
    b.box("barrier", x, y, yaw, 1.0, 0.45, 0.0, 0.12, inst=inst, rho=0.2)


def add_cone(b: PrimitiveBuilder, x: float, y: float) -> None:
    """Traffic cone: square foot and two stacked cylinders approximating the taper."""
    inst = b.instance("traffic-cone")
    b.box("traffic-cone", x, y, 0.0, 0.36, 0.36, 0.0, 0.04, inst=inst)
    b.cylinder("traffic-cone", x, y, 0.13, 0.04, 0.38, inst=inst)
    b.cylinder("traffic-cone", x, y, 0.07, 0.38, 0.72, inst=inst)
