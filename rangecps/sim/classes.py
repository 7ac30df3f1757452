"""The simulator's class table: one record per simulated material class, with its ids in every dataset.

Colours live in the label maps (``configs/labels``), not here: this table only says what a simulated surface *is*
in SemanticKITTI raw ids and nuScenes lidarseg fine indices, and how it reflects a 905 nm laser.

nuScenes fine indices follow ``category.json`` of nuScenes-lidarseg (0 noise ... 24 flat.driveable_surface,
25 flat.other, 26 flat.sidewalk, 27 flat.terrain, 28 static.manmade, 30 static.vegetation, 31 vehicle.ego).
Riders share the label of their two-wheeler in nuScenes ("if there is a rider, include the rider in the box"),
while SemanticKITTI labels rider and ridden bike together as bicyclist / motorcyclist.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SimClass:
    """One simulated class.

    Attributes:
        name: simulator name, unique.
        kitti: SemanticKITTI raw id when static.
        kitti_moving: SemanticKITTI raw id when the object moves (``kitti`` where no moving id exists).
        nuscenes: nuScenes lidarseg fine category index (0..31).
        thing: countable object that gets an instance id (0 for stuff).
        reflectance: mean diffuse reflectance at 905 nm, in [0, 1].
        reflectance_std: spread of the reflectance between objects of the class.
    """

    name: str
    kitti: int
    kitti_moving: int
    nuscenes: int
    thing: bool
    reflectance: float
    reflectance_std: float


SIM_CLASSES: tuple[SimClass, ...] = (
    SimClass("road", 40, 40, 24, False, 0.30, 0.04),
    # nuScenes counts parking lots as driveable ("surfaces a car can drive on with no concern of traffic rules").
    SimClass("parking", 44, 44, 24, False, 0.32, 0.05),
    SimClass("sidewalk", 48, 48, 26, False, 0.34, 0.05),
    # Traffic islands and medians: nuScenes "flat.other" names elevated parts of traffic islands explicitly.
    SimClass("other-ground", 49, 49, 25, False, 0.30, 0.05),
    SimClass("terrain", 72, 72, 27, False, 0.38, 0.05),
    SimClass("building", 50, 50, 28, False, 0.30, 0.09),
    SimClass("fence", 51, 51, 28, False, 0.27, 0.07),
    SimClass("vegetation", 70, 70, 30, False, 0.44, 0.06),
    SimClass("trunk", 71, 71, 30, False, 0.30, 0.05),
    SimClass("pole", 80, 80, 28, False, 0.33, 0.07),
    # Retro-reflective sign faces return far more light than any other surface in a street.
    SimClass("traffic-sign", 81, 81, 28, False, 0.85, 0.08),
    SimClass("car", 10, 252, 17, True, 0.30, 0.12),
    SimClass("truck", 18, 258, 23, True, 0.34, 0.08),
    SimClass("bus", 13, 257, 16, True, 0.34, 0.06),
    SimClass("trailer", 20, 259, 22, True, 0.30, 0.08),
    SimClass("construction-vehicle", 20, 259, 18, True, 0.40, 0.08),
    SimClass("bicycle", 11, 11, 14, True, 0.28, 0.08),
    SimClass("motorcycle", 15, 15, 21, True, 0.30, 0.08),
    SimClass("person", 30, 254, 2, True, 0.30, 0.10),
    SimClass("bicyclist", 31, 253, 14, True, 0.30, 0.10),
    SimClass("motorcyclist", 32, 255, 21, True, 0.30, 0.10),
    # Crash barriers are "fence" in SemanticKITTI; nuScenes has a class of its own for them.
    SimClass("barrier", 51, 51, 9, True, 0.50, 0.10),
    # Traffic cones have no SemanticKITTI class: "other-object" (ignored in training).
    SimClass("traffic-cone", 99, 99, 12, True, 0.65, 0.10),
)

CLASS_INDEX: dict[str, int] = {c.name: i for i, c in enumerate(SIM_CLASSES)}


def class_id(name: str) -> int:
    """Index of a simulator class in ``SIM_CLASSES``; raises ``KeyError`` naming the unknown class."""
    try:
        return CLASS_INDEX[name]
    except KeyError:
        raise KeyError(f"unknown simulator class {name!r}; known: {sorted(CLASS_INDEX)}") from None
