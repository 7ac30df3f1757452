"""Range-image geometries of common spinning LiDARs, by name, and custom ones from a short string.

Rows, vertical field of view and columns per revolution follow the makers' datasheets; where a dataset fixed a
projection for a sensor, the preset is that projection:

| preset     | rows | vertical FoV (deg) | columns | rows from | source                                              |
|------------|------|--------------------|---------|-----------|-----------------------------------------------------|
| hdl64e     | 64   | +3 / -25           | 2048    | pitch     | SemanticKITTI's projection (datasheet +2 / -24.9)   |
| hdl32e     | 32   | +10.67 / -30.67    | 1920    | ring      | nuScenes (datasheet: 32 lasers, +10.67 / -30.67)    |
| vlp16      | 16   | +15 / -15          | 1800    | pitch     | VLP-16: 2 deg spacing; 0.2 deg azimuth at 10 Hz     |
| vlp32c     | 32   | +15 / -25          | 1800    | pitch     | VLP-32C: 0.2 deg azimuth at 10 Hz                   |
| os1-64     | 64   | +22.5 / -22.5      | 1024    | pitch     | Ouster OS1 (rev 6/7): 45 deg, 1024 columns at 10 Hz |
| os1-128    | 128  | +22.5 / -22.5      | 1024    | pitch     | Ouster OS1-128 (rev 6/7)                            |

Pitch rows split the field of view evenly, so they match lasers only where the lasers are evenly spaced (VLP-16,
OS1). The VLP-32C's lasers crowd near the horizon: by pitch some rows get two lasers and others none; with ring
indices a custom geometry with ``rings`` gives one row per laser. Custom: ``"H,W,UP,DOWN"`` (pitch rows) or
``"H,W,UP,DOWN,rings"``, e.g. ``"64,1024,22.5,-22.5"``.
"""

from __future__ import annotations

from rangecps.data.index import KITTI_GEOMETRY, NUSCENES_GEOMETRY, Geometry

SENSORS: dict[str, Geometry] = {
    "hdl64e": KITTI_GEOMETRY,
    "hdl32e": NUSCENES_GEOMETRY,
    "vlp16": Geometry(height=16, width=1800, fov_up=15.0, fov_down=-15.0, rings=False),
    "vlp32c": Geometry(height=32, width=1800, fov_up=15.0, fov_down=-25.0, rings=False),
    "os1-64": Geometry(height=64, width=1024, fov_up=22.5, fov_down=-22.5, rings=False),
    "os1-128": Geometry(height=128, width=1024, fov_up=22.5, fov_down=-22.5, rings=False),
}


def parse_sensor(text: str) -> Geometry:
    """A preset by name (:data:`SENSORS`), or ``"H,W,UP,DOWN[,rings]"``; a bad string raises a one-line
    ValueError that lists the presets."""
    key = text.strip().lower()
    if key in SENSORS:
        return SENSORS[key]
    parts = [p.strip() for p in key.split(",")]
    rings = parts[-1] == "rings"
    if rings:
        parts = parts[:-1]
    try:
        h, w, up, down = int(parts[0]), int(parts[1]), float(parts[2]), float(parts[3])
        if len(parts) != 4:
            raise ValueError
    except (ValueError, IndexError):
        raise ValueError(
            f"sensor {text!r}: not a preset ({', '.join(SENSORS)}) nor H,W,UP,DOWN[,rings] "
            "(e.g. 64,1024,22.5,-22.5)"
        ) from None
    if h < 1 or w < 1 or up <= down:
        raise ValueError(f"sensor {text!r}: needs rows and columns >= 1 and UP > DOWN (degrees)")
    return Geometry(height=h, width=w, fov_up=up, fov_down=down, rings=rings)


def describe(g: Geometry) -> str:
    rows = "laser rings" if g.rings else f"pitch {g.fov_up:+g}/{g.fov_down:+g} deg"
    return f"{g.height}x{g.width} ({rows})"


def geometry_difference(trained: Geometry, used: Geometry) -> str | None:
    """None when ``used`` projects as ``trained`` does (column count aside: the nets are fully convolutional, and
    a narrower image of the same sensor only changes the azimuth step); else a sentence for the warning."""
    same_rows = (trained.height, trained.rings) == (used.height, used.rings) and (
        trained.rings or (trained.fov_up, trained.fov_down) == (used.fov_up, used.fov_down)
    )
    if same_rows and trained.width == used.width:
        return None
    what = []
    if trained.height != used.height:
        what.append(f"{used.height} rows instead of {trained.height}")
    if (
        not trained.rings
        and not used.rings
        and (trained.fov_up, trained.fov_down) != (used.fov_up, used.fov_down)
    ):
        vt, vu = trained.fov_up - trained.fov_down, used.fov_up - used.fov_down
        what.append(
            f"vertical field of view {used.fov_up:+g}/{used.fov_down:+g} deg instead of "
            f"{trained.fov_up:+g}/{trained.fov_down:+g} (row spacing {vu / used.height:.2f} vs "
            f"{vt / trained.height:.2f} deg)"
        )
    if trained.rings != used.rings:
        what.append("rows from " + ("rings instead of pitch" if used.rings else "pitch instead of rings"))
    if trained.width != used.width:
        what.append(f"{used.width} columns instead of {trained.width}")
    return (
        f"the model was trained on {describe(trained)} range images; this sensor gives {describe(used)}: "
        + "; ".join(what)
        + ". Objects appear at other scales and heights in the image, so expect lower accuracy."
    )
