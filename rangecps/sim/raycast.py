"""Numba raycaster for analytic primitives over a ground plane, accelerated by a 2D uniform grid.

Primitives (rows of a ``(P, NPAR) float64`` parameter table, kind in a ``(P,) int32`` array):

- ``BOX``: z-rotated box ``[cx, cy, cos, sin, hx, hy, z0, z1, sx, sy]``; the top face is the plane
  ``z = z1 + sx * u + sy * v`` in box coordinates ``(u, v)``, so sloped ground patches are boxes too.
- ``CYLINDER``: vertical capped cylinder ``[cx, cy, r, z0, z1]``.
- ``ELLIPSOID``: axis-aligned ellipsoid ``[cx, cy, cz, rx, ry, rz]``.

The ground is the plane ``z = 0`` (the road), intersected analytically for every ray. Everything else sits in
a uniform grid of ``cell``-sized squares over the ground plane; each cell lists the primitives whose xy bounding
box touches it (CSR arrays ``start``/``items``) and the highest point among them (``zmax``). A ray walks the
cells its xy projection crosses (Amanatides-Woo DDA), skips cells it passes above, and stops at the first cell
that contains its nearest hit. A second grid of the same geometry holds the moving primitives of one scan, so
the static grid is built once per sequence.

Porous primitives (foliage, chain-link fences) let a ray through with probability ``gap`` and otherwise return
a point ``depth * Exp(1)`` metres inside the surface (volumetric scattering, a miss when that lies beyond the
exit point). The random numbers are a hash of (seed, ray, primitive), so results do not depend on the order in
which primitives are visited.

The kernels run on one thread: a scan takes well under 0.1 s, and a serial kernel compiles in half the time of a
``prange`` one. Generating a dataset in parallel is a matter of running sequences in separate processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numba as nb
import numpy as np

if TYPE_CHECKING:
    from rangecps.sim.grid import Grid

BOX, CYLINDER, ELLIPSOID = 0, 1, 2
NPAR = 10
NO_HIT = -1
GROUND = -2
_EPS = 1e-6
_INF = 1e30


@nb.njit(cache=True)
def _mix(z):
    # splitmix64 finaliser
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@nb.njit(cache=True)
def hash64(seed, ray, salt):
    """64 random bits from (seed, ray, salt): splitmix64 of a mixed key."""
    x = np.uint64(seed) ^ (np.uint64(ray) * np.uint64(0x9E3779B97F4A7C15))
    return _mix(x ^ (np.uint64(salt) * np.uint64(0xC2B2AE3D27D4EB4F)) + np.uint64(0x9E3779B97F4A7C15))


@nb.njit(cache=True)
def hash_uniforms(seed, ray, prim):
    """Two independent uniforms in (0, 1] from (seed, ray, primitive), 32 bits each."""
    z = hash64(seed, ray, prim)
    scale = 1.0 / 4294967296.0
    return (float(z >> np.uint64(32)) + 1.0) * scale, (float(z & np.uint64(0xFFFFFFFF)) + 1.0) * scale


@nb.njit(cache=True, fastmath=True, inline="always")
def _hit_box(q, ox, oy, oz, dx, dy, dz):
    c, s = q[2], q[3]
    ex, ey = ox - q[0], oy - q[1]
    lu, lv = c * ex + s * ey, -s * ex + c * ey
    du, dv = c * dx + s * dy, -s * dx + c * dy
    tn, tf, cos_in = -_INF, _INF, 0.0
    # u and v slabs
    for a in range(2):
        l0, d0, h = (lu, du, q[4]) if a == 0 else (lv, dv, q[5])
        if abs(d0) < 1e-12:
            if abs(l0) > h:
                return _INF, _INF, 0.0
        else:
            t1, t2 = (-h - l0) / d0, (h - l0) / d0
            if t1 > t2:
                t1, t2 = t2, t1
            if t1 > tn:
                tn, cos_in = t1, abs(d0)
            tf = min(tf, t2)
    # bottom face z >= z0
    if abs(dz) < 1e-12:
        if oz < q[6]:
            return _INF, _INF, 0.0
    else:
        tb = (q[6] - oz) / dz
        if dz > 0.0:
            if tb > tn:
                tn, cos_in = tb, dz
        else:
            tf = min(tf, tb)
    # (possibly sloped) top face: w = z - sx * u - sy * v <= z1
    w0 = oz - q[8] * lu - q[9] * lv
    dw = dz - q[8] * du - q[9] * dv
    if abs(dw) < 1e-12:
        if w0 > q[7]:
            return _INF, _INF, 0.0
    else:
        tt = (q[7] - w0) / dw
        if dw < 0.0:
            if tt > tn:
                tn, cos_in = tt, -dw / np.sqrt(1.0 + q[8] * q[8] + q[9] * q[9])
        else:
            tf = min(tf, tt)
    if tn > tf or tn < _EPS:
        return _INF, _INF, 0.0
    return tn, tf, cos_in


@nb.njit(cache=True, fastmath=True, inline="always")
def _hit_cylinder(q, ox, oy, oz, dx, dy, dz):
    ex, ey, r = ox - q[0], oy - q[1], q[2]
    a = dx * dx + dy * dy
    side = True
    if a < 1e-12:
        if ex * ex + ey * ey > r * r:
            return _INF, _INF, 0.0
        tn, tf = -_INF, _INF
    else:
        b = ex * dx + ey * dy
        disc = b * b - a * (ex * ex + ey * ey - r * r)
        if disc < 0.0:
            return _INF, _INF, 0.0
        sq = np.sqrt(disc)
        tn, tf = (-b - sq) / a, (-b + sq) / a
    if abs(dz) < 1e-12:
        if oz < q[3] or oz > q[4]:
            return _INF, _INF, 0.0
    else:
        t1, t2 = (q[3] - oz) / dz, (q[4] - oz) / dz
        if t1 > t2:
            t1, t2 = t2, t1
        if t1 > tn:
            tn, side = t1, False
        tf = min(tf, t2)
    if tn > tf or tn < _EPS:
        return _INF, _INF, 0.0
    if side:
        cos_in = abs((ex + tn * dx) * dx + (ey + tn * dy) * dy) / r
    else:
        cos_in = abs(dz)
    return tn, tf, cos_in


@nb.njit(cache=True, fastmath=True, inline="always")
def _hit_ellipsoid(q, ox, oy, oz, dx, dy, dz):
    ex, ey, ez = (ox - q[0]) / q[3], (oy - q[1]) / q[4], (oz - q[2]) / q[5]
    ux, uy, uz = dx / q[3], dy / q[4], dz / q[5]
    a = ux * ux + uy * uy + uz * uz
    b = ex * ux + ey * uy + ez * uz
    disc = b * b - a * (ex * ex + ey * ey + ez * ez - 1.0)
    if disc < 0.0:
        return _INF, _INF, 0.0
    sq = np.sqrt(disc)
    tn, tf = (-b - sq) / a, (-b + sq) / a
    if tn < _EPS:
        return _INF, _INF, 0.0
    nx_ = (ex + tn * ux) / q[3]
    ny_ = (ey + tn * uy) / q[4]
    nz_ = (ez + tn * uz) / q[5]
    cos_in = abs(nx_ * dx + ny_ * dy + nz_ * dz) / np.sqrt(nx_ * nx_ + ny_ * ny_ + nz_ * nz_)
    return tn, tf, cos_in


@nb.njit(cache=True, fastmath=True, inline="always")
def _hit(p, k, q, g, dp, ox, oy, oz, dx, dy, dz, ray, seed):
    """Accepted hit distance and incidence cosine of ray ``ray`` on primitive ``p`` (``_INF`` if none)."""
    if k == BOX:
        tn, tf, cos_in = _hit_box(q, ox, oy, oz, dx, dy, dz)
    elif k == CYLINDER:
        tn, tf, cos_in = _hit_cylinder(q, ox, oy, oz, dx, dy, dz)
    else:
        tn, tf, cos_in = _hit_ellipsoid(q, ox, oy, oz, dx, dy, dz)
    if tn >= _INF or (g <= 0.0 and dp <= 0.0):
        return tn, cos_in
    u1, u2 = hash_uniforms(seed, ray, p)
    if u1 < g:
        return _INF, 0.0
    if dp > 0.0:
        tn = tn - dp * np.log(u2)
        if tn > tf:
            return _INF, 0.0
    return tn, cos_in


@nb.njit(cache=True, fastmath=True)
def _trace(ray, o, dx, dy, dz, tmax, seed, prims, static, moving, geo, dims):
    """Nearest hit of one ray: ``(t, primitive or GROUND / NO_HIT, incidence cosine)``.

    ``prims = (kinds, params, gap, depth)``, ``static``/``moving = (start, items, item_top, zmax)``,
    ``geo = (x0, y0, cell, zceil)``, ``dims = (nx, ny)``.
    """
    kinds, params, gap, depth = prims
    s_start, s_items, s_top, s_zmax = static
    m_start, m_items, m_top, m_zmax = moving
    x0, y0, cell, zceil = geo
    nx, ny = dims
    ox, oy, oz = o[0], o[1], o[2]
    best_t, best_p, best_cos = tmax, NO_HIT, 0.0
    if dz < 0.0 and -oz / dz < best_t:
        best_t, best_p, best_cos = -oz / dz, GROUND, -dz
    t1 = best_t
    if dz > 0.0:
        t1 = min(t1, (zceil - oz) / dz)  # above every primitive from here on
    # clip the ray to the grid rectangle
    t0 = 0.0
    for a in range(2):
        org, d, lo, hi = (ox, dx, x0, x0 + nx * cell) if a == 0 else (oy, dy, y0, y0 + ny * cell)
        if abs(d) < 1e-12:
            if org < lo or org >= hi:
                return best_t, best_p, best_cos
        else:
            ta, tb = (lo - org) / d, (hi - org) / d
            t0, t1 = max(t0, min(ta, tb)), min(t1, max(ta, tb))
    if t0 >= t1:
        return best_t, best_p, best_cos
    # Amanatides-Woo walk: cell (ix, iy), ray parameter of the next x / y cell border, and their spacing
    ix = min(max(int((ox + t0 * dx - x0) / cell), 0), nx - 1)
    iy = min(max(int((oy + t0 * dy - y0) / cell), 0), ny - 1)
    sx, sy = (1 if dx > 0.0 else -1), (1 if dy > 0.0 else -1)
    tdx, tnx = _INF, _INF
    if abs(dx) > 1e-12:
        tdx, tnx = cell / abs(dx), (x0 + (ix + (dx > 0.0)) * cell - ox) / dx
    tdy, tny = _INF, _INF
    if abs(dy) > 1e-12:
        tdy, tny = cell / abs(dy), (y0 + (iy + (dy > 0.0)) * cell - oy) / dy
    t_cur = t0
    while True:
        t_exit = min(tnx, tny, t1)
        c = iy * nx + ix
        # lowest point of the ray inside this cell: skip whatever lies entirely below it
        zlo = oz + (t_exit if dz < 0.0 else t_cur) * dz
        if zlo <= s_zmax[c]:
            for j in range(s_start[c], s_start[c + 1]):
                if zlo <= s_top[j]:
                    p = s_items[j]
                    t, cs = _hit(p, kinds[p], params[p], gap[p], depth[p], ox, oy, oz, dx, dy, dz, ray, seed)
                    if t < best_t:
                        best_t, best_p, best_cos = t, p, cs
        if zlo <= m_zmax[c]:
            for j in range(m_start[c], m_start[c + 1]):
                if zlo <= m_top[j]:
                    p = m_items[j]
                    t, cs = _hit(p, kinds[p], params[p], gap[p], depth[p], ox, oy, oz, dx, dy, dz, ray, seed)
                    if t < best_t:
                        best_t, best_p, best_cos = t, p, cs
        if best_t <= t_exit or t_exit >= t1:
            break
        if tnx < tny:
            ix, t_cur, tnx = ix + sx, tnx, tnx + tdx
            if ix < 0 or ix >= nx:
                break
        else:
            iy, t_cur, tny = iy + sy, tny, tny + tdy
            if iy < 0 or iy >= ny:
                break
    return best_t, best_p, best_cos


@nb.njit(cache=True, fastmath=True)
def _cast_grid(origin, rot, dirs, tmax, seed, prims, static, moving, geo, dims):
    n = dirs.shape[0]
    t_out, p_out, c_out = np.empty(n), np.empty(n, np.int32), np.empty(n, np.float32)
    for i in range(n):
        dx, dy, dz = _rotate(rot, dirs[i])
        t_out[i], p_out[i], c_out[i] = _trace(
            i, origin, dx, dy, dz, tmax, seed, prims, static, moving, geo, dims
        )
    return t_out, p_out, c_out


@nb.njit(cache=True, fastmath=True)
def _rotate(rot, d):
    return (
        rot[0, 0] * d[0] + rot[0, 1] * d[1] + rot[0, 2] * d[2],
        rot[1, 0] * d[0] + rot[1, 1] * d[1] + rot[1, 2] * d[2],
        rot[2, 0] * d[0] + rot[2, 1] * d[1] + rot[2, 2] * d[2],
    )


@nb.njit(cache=True, fastmath=True)
def _cast_brute(origin, rot, dirs, ray_ids, tmax, seed, prims):
    kinds, params, gap, depth = prims
    n = dirs.shape[0]
    t_out, p_out, c_out = np.empty(n), np.empty(n, np.int32), np.empty(n, np.float32)
    ox, oy, oz = origin[0], origin[1], origin[2]
    for i in range(n):
        dx, dy, dz = _rotate(rot, dirs[i])
        best_t, best_p, best_cos = tmax, NO_HIT, 0.0
        if dz < 0.0 and -oz / dz < best_t:
            best_t, best_p, best_cos = -oz / dz, GROUND, -dz
        for p in range(kinds.shape[0]):
            t, cs = _hit(p, kinds[p], params[p], gap[p], depth[p], ox, oy, oz, dx, dy, dz, ray_ids[i], seed)
            if t < best_t:
                best_t, best_p, best_cos = t, p, cs
        t_out[i], p_out[i], c_out[i] = best_t, best_p, best_cos
    return t_out, p_out, c_out


@dataclass(frozen=True)
class CastTable:
    """Everything a ray is tested against: primitive arrays (static first, then moving) and both grids.

    Attributes:
        kinds: ``(P,) int32``; params: ``(P, NPAR) float64``; gap, depth: ``(P,) float64`` porosity.
        static: grid of the static primitives (indices ``0 .. P_static - 1``).
        moving: grid of the moving primitives (indices ``P_static ..``), same geometry as ``static``.
        zceil: height above every primitive; rays climbing past it cannot hit anything.
    """

    kinds: np.ndarray
    params: np.ndarray
    gap: np.ndarray
    depth: np.ndarray
    static: Grid
    moving: Grid
    zceil: float


def _rays(
    origin: np.ndarray, dirs: np.ndarray, rotation: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    origin = np.ascontiguousarray(origin, np.float64)
    dirs = np.ascontiguousarray(dirs, np.float64)
    rot = np.eye(3) if rotation is None else np.ascontiguousarray(rotation, np.float64)
    if origin.shape != (3,) or dirs.ndim != 2 or dirs.shape[1] != 3 or rot.shape != (3, 3):
        raise ValueError(
            f"expected origin (3,), dirs (R, 3), rotation (3, 3); got {origin.shape}, {dirs.shape}, {rot.shape}"
        )
    return origin, rot, dirs


def cast(
    table: CastTable,
    origin: np.ndarray,
    dirs: np.ndarray,
    tmax: float,
    seed: int,
    rotation: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cast rays from one origin through the grids.

    Args:
        table: primitives and grids.
        origin: ``(3,) float64`` ray origin in scene coordinates.
        dirs: ``(R, 3) float64`` unit directions, in scene coordinates or, with ``rotation``, in a frame that
            ``rotation`` turns into scene coordinates (the sensor frame: rotating inside the kernel saves a pass).
        tmax: longest distance of interest (m).
        seed: seed of the porosity hash (non-negative, < 2**63).
        rotation: ``(3, 3) float64`` or None for the identity.

    Returns:
        ``t (R,) float64`` hit distance (``tmax`` on a miss), ``prim (R,) int32`` primitive index or
        ``NO_HIT`` / ``GROUND``, ``cos (R,) float32`` cosine of the incidence angle.
    """
    origin, rot, dirs = _rays(origin, dirs, rotation)
    g, m = table.static, table.moving
    if (g.x0, g.y0, g.cell, g.nx, g.ny) != (m.x0, m.y0, m.cell, m.nx, m.ny):
        raise ValueError("the static and moving grids must share their geometry")
    prims = (table.kinds, table.params, table.gap, table.depth)
    static = (g.start, g.items, g.item_top, g.zmax)
    moving = (m.start, m.items, m.item_top, m.zmax)
    geo = (g.x0, g.y0, g.cell, float(table.zceil))
    return _cast_grid(
        origin, rot, dirs, float(tmax), np.int64(seed), prims, static, moving, geo, (g.nx, g.ny)
    )


def cast_brute_force(
    table: CastTable,
    origin: np.ndarray,
    dirs: np.ndarray,
    tmax: float,
    seed: int,
    ray_ids: np.ndarray | None = None,
    rotation: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference caster: every ray against every primitive, no grid. Same outputs as :func:`cast`.

    ``ray_ids`` (``(R,) int64``) are the indices the rays have in the full scan (the porosity hash depends on
    them), so a subset of a scan's rays gives the same hits as in the full cast.
    """
    origin, rot, dirs = _rays(origin, dirs, rotation)
    ids = np.arange(dirs.shape[0], dtype=np.int64) if ray_ids is None else np.asarray(ray_ids, np.int64)
    prims = (table.kinds, table.params, table.gap, table.depth)
    return _cast_brute(origin, rot, dirs, ids, float(tmax), np.int64(seed), prims)
