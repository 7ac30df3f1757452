"""Pictures from arrays: point colours, an exact PNG writer, and range-image strips.

Colours (the 3D views of :mod:`rangecps.vis.viewer` use the same):

- labels and predictions: the official colour of each train id (``LabelMap.colors``; SemanticKITTI's come from its
  ``color_map`` in BGR order, turned into RGB by the label map; nuScenes' from the devkit's colour map);
- errors: correct ``ERROR_COLORS["correct"]`` grey, wrong red, ground-truth ignore (train id 0) dark grey;
- range and intensity: the perceptual ``viridis`` colour map. Range runs linearly from 0 m to the 99th percentile of
  the scan's ranges; intensity from its 1st to its 99th percentile (KITTI remission 0-1 and nuScenes 0-255 alike).

Range strip (:func:`range_strip`): one band per map, top to bottom ``STRIP_CHANNELS`` (range, x, y, z, intensity,
mask), then ``labels``, ``pred`` and ``errors`` when given (errors needs both). Each band is the ``H x W`` image with
every row repeated ``scale = max(1, STRIP_BAND_HEIGHT // H)`` times (4 for KITTI's 64 rows, 8 for nuScenes' 32), and
bands are separated by ``STRIP_GAP`` grey rows: ``H_total = bands * H * scale + (bands - 1) * STRIP_GAP``, width
``W``. A KITTI strip (64 x 2048) is 2048 x 1556 pixels without labels, 2048 x 1816 with labels and 2048 x 2336 with
labels and predictions; a nuScenes strip (32 x 1920) is 1920 wide with the same heights. Empty pixels are black.

matplotlib (the ``vis`` extra) supplies the colour map; it is imported where needed.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from rangecps.atomic import atomic_write
from rangecps.data.index import Geometry
from rangecps.labels import LabelMap
from rangecps.projection import gather_channels, pixel_labels, project_rings, project_spherical

ERROR_COLORS = {
    "correct": (160, 160, 160),
    "wrong": (230, 30, 30),
    "ignore": (50, 50, 50),
}
EMPTY_COLOR = (0, 0, 0)
STRIP_CHANNELS = ("range", "x", "y", "z", "intensity", "mask")
STRIP_BAND_HEIGHT = 256
STRIP_GAP = 4
STRIP_GAP_COLOR = (128, 128, 128)
COLORMAP = "viridis"


# ------------------------------------------------------------------------------------------------------- colours


def scalar_colors(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``(N,) float`` values -> ``(N, 3) uint8`` colours of :data:`COLORMAP` over ``[lo, hi]`` (clipped)."""
    import matplotlib

    lut = np.round(matplotlib.colormaps[COLORMAP](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)
    span = hi - lo if hi > lo else 1.0
    t = np.clip((np.asarray(values, np.float64) - lo) / span, 0.0, 1.0)
    return lut[np.nan_to_num(t * 255.0).astype(np.int64)]


def range_bounds(ranges: np.ndarray) -> tuple[float, float]:
    """0 m to the 99th percentile of the finite ``ranges`` (a few far returns must not wash out the rest)."""
    finite = ranges[np.isfinite(ranges)]
    return 0.0, float(np.percentile(finite, 99)) if finite.size else 1.0


def spread_bounds(values: np.ndarray) -> tuple[float, float]:
    """1st to 99th percentile of the finite ``values``."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [1, 99])
    return float(lo), float(hi)


def label_colors(labels: np.ndarray, label_map: LabelMap, what: str = "labels") -> np.ndarray:
    """``(N,)`` train ids -> ``(N, 3) uint8`` official colours; ids outside the map raise ValueError."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= label_map.num_classes):
        raise ValueError(
            f"{what}: train ids must lie in 0..{label_map.num_classes - 1} for label map {label_map.name!r}, "
            f"got values in [{labels.min()}, {labels.max()}]"
        )
    return label_map.colors[labels]


def error_colors(labels: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """``(N,)`` ground truth and prediction (train ids) -> ``(N, 3) uint8``: grey correct, red wrong, dark ignore."""
    out = np.empty((*np.shape(labels), 3), np.uint8)
    out[...] = ERROR_COLORS["wrong"]
    out[labels == pred] = ERROR_COLORS["correct"]
    out[labels == 0] = ERROR_COLORS["ignore"]
    return out


def point_colors(
    mode: str,
    points: np.ndarray,
    labels: np.ndarray | None = None,
    pred: np.ndarray | None = None,
    label_map: LabelMap | None = None,
) -> np.ndarray:
    """Colours of a scan's points for one view.

    Args:
        mode: ``labels``, ``pred``, ``errors``, ``range`` or ``intensity``.
        points: ``(N, 4) float32`` x, y, z, intensity.
        labels, pred: ``(N,) int64`` train ids, needed by the modes that show them (with ``label_map``).

    Returns:
        ``(N, 3) uint8`` RGB.
    """
    if mode == "range":
        ranges = np.linalg.norm(points[:, :3].astype(np.float64), axis=1)
        return scalar_colors(ranges, *range_bounds(ranges))
    if mode == "intensity":
        return scalar_colors(points[:, 3], *spread_bounds(points[:, 3]))
    need = {"labels": (labels,), "pred": (pred,), "errors": (labels, pred)}
    if mode not in need:
        raise ValueError(f"unknown colour mode {mode!r}; choose labels, pred, errors, range or intensity")
    if any(a is None for a in need[mode]) or (mode != "errors" and label_map is None):
        raise ValueError(
            f"colour mode {mode!r} needs {'labels and predictions' if mode == 'errors' else mode}"
        )
    if mode == "errors":
        return error_colors(labels, pred)
    return label_colors(labels if mode == "labels" else pred, label_map, mode)


# ---------------------------------------------------------------------------------------------------------- PNG


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write an ``(H, W, 3) uint8`` RGB image as an 8-bit PNG (atomic); returns the path."""
    image = np.ascontiguousarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape[:2]:
        raise ValueError(f"{path}: need a non-empty (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    # every scanline starts with filter byte 0 (none)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), image.reshape(h, w * 3)], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8 bits, truecolour, no interlace
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    with atomic_write(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + body)
    return Path(path)


# ------------------------------------------------------------------------------------------------- range strips


def strip_bands(has_labels: bool, has_pred: bool) -> list[str]:
    """Names of the bands :func:`range_strip` draws, top to bottom."""
    extra = [n for n, on in (("labels", has_labels), ("pred", has_pred)) if on]
    return [*STRIP_CHANNELS, *extra, *(["errors"] if has_labels and has_pred else [])]


def range_strip(
    points: np.ndarray,
    ring: np.ndarray | None,
    geometry: Geometry,
    labels: np.ndarray | None = None,
    pred: np.ndarray | None = None,
    label_map: LabelMap | None = None,
) -> np.ndarray:
    """The range image's input channels and label maps as one picture (layout: see the module docstring).

    Args:
        points: ``(N, 4) float32`` x, y, z, intensity.
        ring: ``(N,)`` ring indices, required when ``geometry.rings`` (nuScenes), else ignored.
        geometry: the range image to project onto.
        labels, pred: ``(N,) int64`` train ids (ground truth, prediction); each pixel shows its nearest point's.
        label_map: colours of the train ids; required with ``labels`` or ``pred``.

    Returns:
        ``(H_total, W, 3) uint8`` RGB.
    """
    n = len(points)
    for name, a in (("labels", labels), ("pred", pred)):
        if a is not None and np.shape(a) != (n,):
            raise ValueError(f"range_strip: {name} has shape {np.shape(a)}, expected ({n},) like the points")
    if (labels is not None or pred is not None) and label_map is None:
        raise ValueError("range_strip: labels or predictions need a label_map for their colours")
    if geometry.rings:
        if ring is None:
            raise ValueError(
                "range_strip: this geometry takes rows from rings, but no ring indices were given"
            )
        proj = project_rings(points, ring, geometry.height, geometry.width)
    else:
        proj = project_spherical(points, geometry.height, geometry.width, geometry.fov_up, geometry.fov_down)
    channels = gather_channels(points, proj)
    mask = proj.mask
    images: list[np.ndarray] = []
    for c, name in enumerate(STRIP_CHANNELS):
        values = channels[c]
        if name == "mask":
            img = np.zeros((*mask.shape, 3), np.uint8)
            img[mask] = 255
        else:
            bounds = range_bounds(values[mask]) if name == "range" else spread_bounds(values[mask])
            img = scalar_colors(values, *bounds)
        images.append(img)
    gt_px = pixel_labels(labels, proj) if labels is not None else None
    pred_px = pixel_labels(pred, proj) if pred is not None else None
    if gt_px is not None:
        images.append(label_colors(gt_px, label_map, "labels"))
    if pred_px is not None:
        images.append(label_colors(pred_px, label_map, "pred"))
    if gt_px is not None and pred_px is not None:
        images.append(error_colors(gt_px, pred_px))

    scale = max(1, STRIP_BAND_HEIGHT // geometry.height)
    gap = np.empty((STRIP_GAP, geometry.width, 3), np.uint8)
    gap[...] = STRIP_GAP_COLOR
    parts: list[np.ndarray] = []
    for i, img in enumerate(images):
        img[~mask] = EMPTY_COLOR
        parts += ([gap] if i else []) + [np.repeat(img, scale, axis=0)]
    return np.concatenate(parts, axis=0)
