"""2D uniform grid over the ground plane: the raycaster's acceleration structure.

Each cell lists the primitives whose xy bounding box touches it (CSR arrays ``start`` / ``items``), the top of
each listed primitive (``item_top``) and the highest point in the cell (``zmax``), so that a ray can skip cells
and primitives it passes above.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

from rangecps.sim.raycast import BOX, CYLINDER, NPAR

# A finite sentinel: the raycaster runs with fastmath, which assumes that no value is infinite.
EMPTY = -1e30


@dataclass(frozen=True)
class Grid:
    """A 2D uniform grid over the ground plane listing primitive indices per cell.

    Attributes:
        x0, y0: scene coordinates of the grid's lower-left corner (m).
        cell: cell edge length (m).
        nx, ny: number of cells along x and y.
        start: ``(nx * ny + 1,) int32`` CSR offsets into ``items``; cell ``c = iy * nx + ix``.
        items: ``(M,) int32`` primitive indices (into the parameter table the rays are cast against).
        item_top: ``(M,) float64`` highest point of each listed primitive.
        zmax: ``(nx * ny,) float64`` highest point of any primitive listed in the cell, ``EMPTY`` (-1e30) when empty.
    """

    x0: float
    y0: float
    cell: float
    nx: int
    ny: int
    start: np.ndarray
    items: np.ndarray
    item_top: np.ndarray
    zmax: np.ndarray


@nb.njit(cache=True)
def primitive_bounds(kinds: np.ndarray, params: np.ndarray) -> np.ndarray:
    """``(P, 5) float64`` xy bounding box and top of each primitive: xmin, xmax, ymin, ymax, zmax."""
    out = np.empty((kinds.shape[0], 5))
    for p in range(kinds.shape[0]):
        q = params[p]
        if kinds[p] == BOX:
            ex = abs(q[2]) * q[4] + abs(q[3]) * q[5]
            ey = abs(q[3]) * q[4] + abs(q[2]) * q[5]
            out[p] = (q[0] - ex, q[0] + ex, q[1] - ey, q[1] + ey, q[7] + abs(q[8]) * q[4] + abs(q[9]) * q[5])
        elif kinds[p] == CYLINDER:
            out[p] = (q[0] - q[2], q[0] + q[2], q[1] - q[2], q[1] + q[2], q[4])
        else:
            out[p] = (q[0] - q[3], q[0] + q[3], q[1] - q[4], q[1] + q[4], q[2] + q[5])
    return out


@nb.njit(cache=True)
def _fill_grid(bounds, offset, x0, y0, cell, nx, ny):
    counts = np.zeros(nx * ny + 1, np.int32)
    zmax = np.full(nx * ny, EMPTY)
    for pass_ in range(2):
        if pass_ == 1:
            start = np.zeros(nx * ny + 1, np.int32)
            for c in range(nx * ny):
                start[c + 1] = start[c] + counts[c]
            items = np.empty(start[-1], np.int32)
            item_top = np.empty(start[-1])
            fill = start[:-1].copy()
        for p in range(bounds.shape[0]):
            ix0 = max(int(np.floor((bounds[p, 0] - x0) / cell)), 0)
            ix1 = min(int(np.floor((bounds[p, 1] - x0) / cell)), nx - 1)
            iy0 = max(int(np.floor((bounds[p, 2] - y0) / cell)), 0)
            iy1 = min(int(np.floor((bounds[p, 3] - y0) / cell)), ny - 1)
            for iy in range(iy0, iy1 + 1):
                for ix in range(ix0, ix1 + 1):
                    c = iy * nx + ix
                    if pass_ == 0:
                        counts[c] += 1
                        zmax[c] = max(zmax[c], bounds[p, 4])
                    else:
                        items[fill[c]] = p + offset
                        item_top[fill[c]] = bounds[p, 4]
                        fill[c] += 1
    return start, items, item_top, zmax


def build_grid(
    kinds: np.ndarray,
    params: np.ndarray,
    x0: float,
    y0: float,
    cell: float,
    nx: int,
    ny: int,
    offset: int = 0,
) -> Grid:
    """Grid over ``[x0, x0 + nx * cell) x [y0, y0 + ny * cell)`` listing ``offset + p`` for each primitive ``p``.

    Args:
        kinds: ``(P,) int32`` primitive kinds.
        params: ``(P, NPAR) float64`` primitive parameters.
        offset: added to every listed index, for a grid whose primitives follow others in the cast table.
    """
    if params.ndim != 2 or params.shape[1] != NPAR or kinds.shape[0] != params.shape[0]:
        raise ValueError(f"expected kinds (P,) and params (P, {NPAR}), got {kinds.shape} and {params.shape}")
    bounds = primitive_bounds(kinds.astype(np.int32), params.astype(np.float64))
    start, items, item_top, zmax = _fill_grid(
        bounds, offset, float(x0), float(y0), float(cell), int(nx), int(ny)
    )
    return Grid(float(x0), float(y0), float(cell), int(nx), int(ny), start, items, item_top, zmax)
