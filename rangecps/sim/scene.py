"""Procedural street scenes: a main street along +x with side streets, frontage lots, furniture and traffic.

Scene frame: x along the main street (the ego drives towards +x in a right-hand lane), y to the left, z up, road
surface at z = 0. Cross-section of each side of the main street, from the centre line outward: optional median,
lanes, optional parking lane, curb, optional grass verge with street trees, sidewalk, then lots (see ``lots.py``)
and a backdrop of tall buildings or woods. Everything but the road plane is a primitive; ground that no
primitive covers is road inside the road rectangles and terrain elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rangecps.sim.builder import PrimitiveBuilder
from rangecps.sim.classes import SIM_CLASSES, class_id
from rangecps.sim.grid import Grid, build_grid, primitive_bounds
from rangecps.sim.raycast import CastTable
from rangecps.sim.street import intervals, side_street, street_side
from rangecps.sim.traffic import featured, traffic
from rangecps.sim.trajectory import EgoPath

STYLES: dict[str, dict] = {
    "urban": {
        "lots": {
            "building_row": 0.6,
            "front_yards": 0.08,
            "park": 0.07,
            "parking_lot": 0.03,
            "thicket": 0.17,
            "industrial": 0.05,
        },
        "building_height": (7.0, 22.0),
        "eaves": (5.0, 7.5),
        "street_trees": 0.6,
        "parked": (0.3, 0.75),
        "planting": 0.55,
        "pedestrians": 0.7,
    },
    "residential": {
        "lots": {
            "building_row": 0.3,
            "front_yards": 0.3,
            "park": 0.07,
            "parking_lot": 0.02,
            "thicket": 0.29,
            "industrial": 0.02,
        },
        "building_height": (6.0, 14.0),
        "eaves": (3.0, 6.0),
        "street_trees": 0.75,
        "parked": (0.3, 0.7),
        "planting": 0.85,
        "pedestrians": 0.4,
    },
    "suburban": {
        "lots": {
            "building_row": 0.2,
            "front_yards": 0.25,
            "park": 0.07,
            "parking_lot": 0.03,
            "thicket": 0.42,
            "industrial": 0.03,
        },
        "building_height": (5.0, 12.0),
        "eaves": (3.0, 5.5),
        "street_trees": 0.6,
        "parked": (0.2, 0.55),
        "planting": 0.85,
        "pedestrians": 0.2,
    },
}
# Where the drives take place: KITTI's Karlsruhe has mostly narrow two-lane residential streets; nuScenes drives
# through Boston and Singapore downtown, with wider multi-lane roads lined by taller buildings.
REGIONS: dict[str, dict] = {
    "karlsruhe": {
        "styles": {"urban": 0.3, "residential": 0.45, "suburban": 0.25},
        "two_lanes": 0.2,
        "lane_width": (2.8, 3.5),
        "median": 0.5,
        "sidewalk": (1.5, 3.5),
        "trees": 1.0,
    },
    "city": {
        "styles": {"urban": 0.65, "residential": 0.25, "suburban": 0.1},
        "two_lanes": 0.75,
        "lane_width": (3.1, 3.8),
        "median": 0.6,
        "sidewalk": (2.5, 5.5),
        "trees": 0.4,
    },
}
ROAD, TERRAIN, MARKING = 0, 1, 2  # bare-ground rows after the primitives in the surface attributes
MARKING_RHO = 0.6  # painted lane lines are brighter than asphalt
MARGIN = 110.0  # scene extends this far beyond the ego path: past the sensors' useful range
CELL = 2.0  # grid cell edge (m)


@dataclass(frozen=True)
class Scene:
    """A built scene: primitive table (static first, then moving), static grid, road layout and the ego path.

    Arrays (P primitives): ``kinds (P,) int32``, ``params (P, NPAR) float64``, ``cls (P,) int16`` index into
    ``SIM_CLASSES``, ``gap``/``depth (P,) float64`` porosity, ``velocity (P, 2) float64`` (m/s),
    ``window (P, 2) float64`` facade glazing (period m, glass fraction).
    Surface attributes have ``P + 3`` rows, the last three for the bare ground (``ROAD``, ``TERRAIN``,
    ``MARKING`` rows past the primitives): ``semantic (P+3,) uint16`` SemanticKITTI raw id (moving ids for moving
    objects), ``nuscenes (P+3,) uint8``, ``instance (P+3,) uint16``, ``rho``/``loss (P+3,) float64``,
    ``glazed (P+3,) bool`` (has facade windows).
    ``roads (K, 4) float64``: road rectangles xmin, xmax, ymin, ymax. ``markings (L, 4) float64``: lane lines
    y, half width, dash length, dash period (period 0 = solid), interrupted where ``|x - xc| < hw`` for each
    ``crossings (C, 2)`` row ``(xc, hw)``.
    """

    kinds: np.ndarray
    params: np.ndarray
    cls: np.ndarray
    semantic: np.ndarray
    nuscenes: np.ndarray
    instance: np.ndarray
    rho: np.ndarray
    loss: np.ndarray
    gap: np.ndarray
    depth: np.ndarray
    velocity: np.ndarray
    window: np.ndarray
    glazed: np.ndarray
    num_static: int
    grid: Grid
    zceil: float
    roads: np.ndarray
    markings: np.ndarray
    crossings: np.ndarray
    ego: EgoPath
    style: str

    @property
    def class_names(self) -> set[str]:
        """Simulator classes present in the scene (road and terrain are always present as ground)."""
        return {SIM_CLASSES[c].name for c in np.unique(self.cls)} | {"road", "terrain"}

    @property
    def num_prims(self) -> int:
        return int(self.kinds.shape[0])

    def cast_table(self, time: float) -> CastTable:
        """Primitives at ``time`` (s): moving ones advanced by ``velocity * time``, in a fresh moving grid."""
        params = self.params.copy()
        params[self.num_static :, :2] += self.velocity[self.num_static :] * time
        g = self.grid
        moving = build_grid(
            self.kinds[self.num_static :],
            params[self.num_static :],
            g.x0,
            g.y0,
            g.cell,
            g.nx,
            g.ny,
            offset=self.num_static,
        )
        return CastTable(self.kinds, params, self.gap, self.depth, g, moving, self.zceil)

    def ground(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Surface-attribute row of the bare ground plane at scene points ``(M,)``: ``P + ROAD`` on the road,
        ``P + MARKING`` on painted lane lines, ``P + TERRAIN`` elsewhere; ``(M,) int64``."""
        road = np.zeros(x.shape, dtype=bool)
        for x0, x1, y0, y1 in self.roads:
            road |= (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
        marking = np.zeros(x.shape, dtype=bool)
        for ly, hw, dash, period in self.markings:
            on = np.abs(y - ly) < hw
            if period > 0:
                on &= np.mod(x, period) < dash
            marking |= on
        for xc, hw in self.crossings:
            marking &= np.abs(x - xc) > hw
        row = np.where(road, ROAD, TERRAIN)
        row[marking & road] = MARKING
        return row + self.num_prims


def _profile(rng: np.random.Generator, region: dict) -> dict:
    """Cross-section of the main street."""
    lanes = 2 if rng.random() < region["two_lanes"] else 1
    lane_w = rng.uniform(*region["lane_width"])
    median = rng.uniform(1.5, 4.0) if lanes == 2 and rng.random() < region["median"] else 0.0
    sides = {}
    for sign in (1.0, -1.0):
        sides[sign] = {
            "parking": rng.uniform(2.0, 2.5) if rng.random() < 0.1 else 0.0,
            "verge": rng.uniform(1.0, 3.0) if rng.random() < 0.45 else 0.0,
            "sidewalk": rng.uniform(*region["sidewalk"]),
            "curb": rng.uniform(0.1, 0.16),
        }
    return {
        "lanes": lanes,
        "lane_w": lane_w,
        "median": median,
        "road": median / 2 + lanes * lane_w,
        "sides": sides,
    }


def build_scene(
    rng: np.random.Generator,
    path_length: float,
    duration: float,
    speed: float,
    mount_height: float,
    region: str = "karlsruhe",
) -> Scene:
    """Build one street scene long enough for an ego drive of ``path_length`` m over ``duration`` s.

    ``region`` (a key of ``REGIONS``) sets the mix of street styles and road widths.
    """
    if region not in REGIONS:
        raise KeyError(f"unknown region {region!r}; known regions: {sorted(REGIONS)}")
    reg = REGIONS[region]
    names = list(reg["styles"])
    weights = np.array([reg["styles"][n] for n in names])
    style_name = names[rng.choice(len(names), p=weights / weights.sum())]
    style = dict(STYLES[style_name], street_trees=STYLES[style_name]["street_trees"] * reg["trees"])
    prof = _profile(rng, reg)
    x0, x1 = -MARGIN, path_length + MARGIN
    lw, m = prof["lane_w"], prof["median"] / 2
    lane = 0.5 if prof["lanes"] == 1 or rng.random() < 0.5 else 1.5
    ego = EgoPath(
        0.0,
        -(m + lane * lw),
        speed,
        mount_height,
        sway=(rng.uniform(0.05, 0.25), rng.uniform(8.0, 20.0), rng.uniform(0.0, 2 * np.pi)),
    )
    crossings: list[tuple[float, float, float]] = []  # (xc, road half width, sidewalk width)
    for xc in np.sort(rng.uniform(x0 + 40.0, x1 - 40.0, rng.poisson((x1 - x0) / 220.0))):
        if all(abs(xc - c[0]) > 60.0 for c in crossings) and abs(xc - ego.x0) > 15.0:
            crossings.append((float(xc), rng.uniform(3.0, 5.0), rng.uniform(1.5, 3.0)))
    b = PrimitiveBuilder(rng)
    pieces = intervals(x0, x1, [(xc, hw + walk) for xc, hw, walk in crossings])
    for sign in (1.0, -1.0):
        street_side(b, prof, sign, pieces, style)
    sides = prof["sides"]
    curb_y = (prof["road"] + sides[1.0]["parking"], prof["road"] + sides[-1.0]["parking"])
    for xc, hw, walk in crossings:
        side_street(b, xc, hw, walk, curb_y, 90.0, style)
    traffic(b, prof, ego, x0, x1, duration, style, [(xc, hw) for xc, hw, _ in crossings])
    featured(b, prof, ego, duration)
    return _assemble(b, prof, ego, x0, x1, crossings, style_name)


def _assemble(
    b: PrimitiveBuilder, prof: dict, ego: EgoPath, x0: float, x1: float, crossings: list, style_name: str
) -> Scene:
    a = b.arrays()
    moving = np.any(a["velocity"] != 0.0, axis=1)
    order = np.concatenate([np.flatnonzero(~moving), np.flatnonzero(moving)])
    a = {k: v[order] for k, v in a.items()}
    moving = moving[order]
    num_static = int((~moving).sum())
    table = SIM_CLASSES
    ground = [class_id("road"), class_id("terrain"), class_id("road")]  # rows ROAD, TERRAIN, MARKING
    semantic = [
        table[c].kitti_moving if mv else table[c].kitti for c, mv in zip(a["cls"], moving, strict=True)
    ]
    semantic = np.array(semantic + [table[c].kitti for c in ground], np.uint16)
    nuscenes = np.array([table[c].nuscenes for c in list(a["cls"]) + ground], np.uint8)
    instance = np.concatenate([a["instance"], np.zeros(3, np.uint16)])
    rho = np.concatenate(
        [a["rho"], [table[ground[0]].reflectance, table[ground[1]].reflectance, MARKING_RHO]]
    )
    loss = np.concatenate([a["loss"], np.zeros(3)])
    bounds = primitive_bounds(a["kinds"][:num_static], a["params"][:num_static])
    gx0, gy0 = bounds[:, 0].min() - CELL, bounds[:, 2].min() - CELL
    nx = int(np.ceil((bounds[:, 1].max() + CELL - gx0) / CELL))
    ny = int(np.ceil((bounds[:, 3].max() + CELL - gy0) / CELL))
    grid = build_grid(a["kinds"][:num_static], a["params"][:num_static], gx0, gy0, CELL, nx, ny)
    zceil = float(primitive_bounds(a["kinds"], a["params"])[:, 4].max()) + 1.0
    sides = prof["sides"]
    far = 1e4
    roads = [
        (x0 - far, x1 + far, -(prof["road"] + sides[-1.0]["parking"]), prof["road"] + sides[1.0]["parking"])
    ]
    roads += [(xc - hw, xc + hw, -far, far) for xc, hw, _ in crossings]
    lw, m, road = prof["lane_w"], prof["median"] / 2, prof["road"]
    marks = [(0.0, 0.06, 3.0, 9.0)] if m == 0 else [(m, 0.07, 0.0, 0.0), (-m, 0.07, 0.0, 0.0)]
    if prof["lanes"] == 2:
        marks += [(m + lw, 0.06, 3.0, 9.0), (-(m + lw), 0.06, 3.0, 9.0)]
    marks += [(road - 0.25, 0.06, 0.0, 0.0), (-(road - 0.25), 0.06, 0.0, 0.0)]
    return Scene(
        kinds=a["kinds"],
        params=a["params"],
        cls=a["cls"],
        semantic=semantic,
        nuscenes=nuscenes,
        instance=instance,
        rho=rho,
        loss=loss,
        gap=a["gap"],
        depth=a["depth"],
        velocity=a["velocity"],
        window=a["window"],
        glazed=np.concatenate([a["window"][:, 0] > 0, np.zeros(3, bool)]),
        num_static=num_static,
        grid=grid,
        zceil=zceil,
        roads=np.array(roads, np.float64),
        markings=np.array(marks, np.float64),
        crossings=np.array([(xc, hw + walk) for xc, hw, walk in crossings], np.float64).reshape(-1, 2),
        ego=ego,
        style=style_name,
    )
