"""Scribble labels from full labels, in the style of ScribbleKITTI.

ScribbleKITTI annotators drew a few thin polylines over every region and object of a scan and left the rest
unlabeled, which labels about 8 % of the points. We imitate that in the sensor's own grid: a scan sorted by
(ring, azimuth) is a range image, and a *stroke* is a short contiguous run of points along one ring, repeated
on a few adjacent rings with an azimuth drift per ring, so that it is either a line along the ring or a
slanted line that crosses rings. A stroke never leaves the region it starts in: on every ring it stays inside
the run of points that share the anchor's (semantic, instance) label, and it stops at the first ring where the
label changes.

Budgets: every eligible label (one (semantic, instance) pair) with at least ``min_points`` points gets at
least one short stroke, and the rest of the point budget (``coverage`` of all points) is shared in proportion
to the label's size, so big stuff classes receive long strokes and small objects a stroke or two.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

# A stroke's neighbour on the next ring must lie this close in azimuth to count as the same line.
_MAX_RING_GAP_RAD = np.deg2rad(1.0)
# Strokes on small labels are this many points long at least (or the whole label when it is smaller).
_MIN_STROKE_POINTS = 6


def _budgets(sizes: np.ndarray, total: float, min_points: int) -> np.ndarray:
    """Per-label point budgets: a short stroke at least, the rest in proportion to size, summing to ~total.

    Args:
        sizes: (L,) int64 point count of each eligible label.
        total: points to label over all labels.
        min_points: labels smaller than this get no stroke.

    Returns:
        (L,) int64 budgets, each in [0, size].
    """
    floor = np.where(sizes >= min_points, np.minimum(sizes, _MIN_STROKE_POINTS), 0)

    def spent(fraction: float) -> float:
        return float(np.maximum(floor, np.floor(fraction * sizes)).sum())

    # spent() is monotone in the fraction; bisection finds the proportional share that meets the total.
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if spent(mid) < total else (lo, mid)
    share = np.floor(lo * sizes).astype(np.int64)
    return np.where(sizes >= min_points, np.maximum(floor, share), 0).astype(np.int64)


def scribble_mask(
    points: np.ndarray,
    ring: np.ndarray,
    semantic: np.ndarray,
    instance: np.ndarray,
    rng: np.random.Generator,
    coverage: float = 0.08,
    skip_ids: Iterable[int] = (0, 1),
    min_points: int = 10,
) -> np.ndarray:
    """Choose scribbled points: thin strokes over every region and object of one scan.

    Args:
        points: (N, >=2) float x, y (sensor frame) of each point; only the azimuth is used.
        ring: (N,) int laser index of each point.
        semantic: (N,) int raw semantic ids.
        instance: (N,) int instance ids (0 for stuff); strokes respect object boundaries.
        rng: random generator; equal generators give equal masks.
        coverage: fraction of all N points to label, in (0, 1).
        skip_ids: raw semantic ids that annotators do not scribble (unlabeled, outlier).
        min_points: labels with fewer points get no stroke (too small to see).

    Returns:
        (N,) bool, True for scribbled points.
    """
    n = len(semantic)
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must lie in (0, 1), got {coverage}")
    for name, a in (("ring", ring), ("instance", instance), ("points", points)):
        if len(a) != n:
            raise ValueError(f"{name} has {len(a)} entries but semantic has {n}")
    mask = np.zeros(n, dtype=bool)
    if n == 0:
        return mask

    key = (np.asarray(semantic, dtype=np.int64) << 16) | np.asarray(instance, dtype=np.int64)
    azimuth = np.arctan2(points[:, 1], points[:, 0])
    ring = np.asarray(ring, dtype=np.int64)
    # Sorted by ring, then azimuth: neighbours in this order are neighbours in the range image.
    order = np.lexsort((azimuth, ring))
    key_s, az_s, ring_s = key[order], azimuth[order], ring[order]

    ring_ids = np.unique(ring_s)
    ring_lo = np.searchsorted(ring_s, ring_ids, side="left")
    ring_hi = np.searchsorted(ring_s, ring_ids, side="right")
    ring_slot = {int(r): i for i, r in enumerate(ring_ids)}

    # Runs: maximal stretches of one label on one ring; a stroke never crosses a run's ends.
    new_run = np.ones(n, dtype=bool)
    new_run[1:] = (key_s[1:] != key_s[:-1]) | (ring_s[1:] != ring_s[:-1])
    run_id = np.cumsum(new_run) - 1
    run_start = np.flatnonzero(new_run)
    run_end = np.append(run_start[1:], n)

    eligible = ~np.isin(np.asarray(semantic, dtype=np.int64), np.fromiter(skip_ids, dtype=np.int64))
    labels, inverse, sizes = np.unique(key_s, return_inverse=True, return_counts=True)
    ok = np.ones(len(labels), dtype=bool)
    ok[np.unique(inverse[~eligible[order]])] = False
    sizes = np.where(ok, sizes, 0)
    budgets = _budgets(sizes, coverage * n, min_points)

    taken = np.zeros(n, dtype=bool)  # in sorted order
    members_of = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[members_of], np.arange(len(labels)))
    for label in np.flatnonzero(budgets > 0):
        members = members_of[starts[label] : starts[label] + sizes[label]]
        _draw_label(members, int(budgets[label]), rng, taken, key_s, az_s, ring_s,
                    ring_ids, ring_lo, ring_hi, ring_slot, run_id, run_start, run_end)  # fmt: skip
    mask[order] = taken
    return mask


def _draw_label(
    members: np.ndarray,
    budget: int,
    rng: np.random.Generator,
    taken: np.ndarray,
    key_s: np.ndarray,
    az_s: np.ndarray,
    ring_s: np.ndarray,
    ring_ids: np.ndarray,
    ring_lo: np.ndarray,
    ring_hi: np.ndarray,
    ring_slot: dict[int, int],
    run_id: np.ndarray,
    run_start: np.ndarray,
    run_end: np.ndarray,
) -> None:
    """Draw strokes over one label (sorted positions ``members``) until ``budget`` points are taken."""
    size = len(members)
    # Long strokes on big regions, short ones on small objects; the anchor point itself is always new, so the
    # loop ends after at most ``budget`` strokes.
    max_len = int(np.clip(0.5 * np.sqrt(size) + 4, _MIN_STROKE_POINTS, 120))
    # Anchors are the label's points in a random order, skipping those an earlier stroke already took.
    anchors = iter(rng.permutation(members).tolist())
    done = 0
    while done < budget:
        anchor = next((a for a in anchors if not taken[a]), None)
        if anchor is None:
            return
        if rng.random() < 0.5:  # along the ring: one or two rings, a longer run
            rings, length, drift = int(rng.integers(1, 3)), int(rng.integers(3, max_len + 1)), 0.2
        else:  # across rings: a slanted line a few points wide
            rings, length, drift = int(rng.integers(3, 9)), int(rng.integers(2, 7)), 1.0
        step = 1 if rng.random() < 0.5 else -1
        slope = np.deg2rad(rng.uniform(-drift, drift))
        stroke: list[np.ndarray] = []
        centre, label_key, slot = anchor, key_s[anchor], ring_slot[int(ring_s[anchor])]
        for j in range(rings):
            if j > 0:
                slot += step
                if not 0 <= slot < len(ring_ids):
                    break
                lo, hi = int(ring_lo[slot]), int(ring_hi[slot])
                target = az_s[anchor] + j * slope
                k = lo + int(np.searchsorted(az_s[lo:hi], target))
                near = [c for c in (k - 1, k) if lo <= c < hi]
                if not near:
                    break
                centre = min(near, key=lambda c: abs(az_s[c] - target))
                if key_s[centre] != label_key or abs(az_s[centre] - target) > _MAX_RING_GAP_RAD:
                    break
            run = run_id[centre]
            a = max(int(run_start[run]), centre - length // 2)
            b = min(int(run_end[run]), a + length)
            segment = np.arange(a, b)
            if j == 0:
                # Grow outwards from the anchor, so that a stroke cut short by the budget is still one
                # contiguous run through the anchor.
                segment = segment[np.argsort(np.abs(segment - anchor), kind="stable")]
            stroke.append(segment)
        points = np.concatenate(stroke)
        points = points[~taken[points]][: budget - done]
        taken[points] = True
        done += len(points)
