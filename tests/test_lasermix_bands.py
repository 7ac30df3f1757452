"""LaserMix bands and mixes against independent constructions: row inclinations, band edges counted from the
release's linspace, uneven lasers, and the point-level mix by pitch of the release projected and compared pixel
for pixel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lasermix_reference import edge_distance, expected_bands

from rangecps.data.index import Geometry
from rangecps.data.lasermix import LaserMix, mix_pairs, mix_rows, pair_indices, row_inclinations
from rangecps.projection import Projection, project_rings, project_spherical
from rangecps.sim.sensors import get_sensor

# Tiny tensors: one intra-op thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def kitti_small(height: int = 32) -> Geometry:
    return Geometry(height, 64, 3.0, -25.0, rings=False)


def hdl64_geometry(width: int = 64) -> Geometry:
    elev = tuple(get_sensor("hdl64").elevations_deg)
    return Geometry(64, width, fov_up=max(elev), fov_down=min(elev), rings=True, elevations=elev)


# ------------------------------------------------------------------------------ 2. mixed scans and targets


def mixers() -> list[tuple[str, LaserMix]]:
    return [
        ("even_rows", LaserMix.even_rows(32, (2, 3, 4, 5, 6, 7, 8))),
        ("pitch", LaserMix.for_geometry(kitti_small(32), (2, 3, 4, 5, 6, 7, 8), (-20.0, 2.0))),
        ("rings", LaserMix.for_geometry(hdl64_geometry(), (2, 3, 4, 5, 6, 7, 8))),
    ]


@pytest.mark.parametrize("name,mixer", mixers(), ids=[n for n, _ in mixers()])
def test_mixed_rows_come_from_the_band_source(name: str, mixer: LaserMix) -> None:
    """Mix 2p takes row r from the labeled scan when the row's band (from its inclination and the band edges) is
    even, else from the unlabeled one; mix 2p + 1 is the complement, for labels, masks and inputs alike."""
    pitch = np.asarray(mixer.row_pitch)
    low, high = mixer.pitch_range
    h, w, pairs = len(pitch), 5, 24
    g = torch.Generator().manual_seed(7)
    y_l = torch.randint(1, 11, (pairs, h, w), generator=g)  # labeled values 1..10
    y_u = torch.randint(11, 21, (pairs, h, w), generator=g)  # pseudo-labels 11..20: the source is readable
    x_l, x_u = torch.randn(pairs, 3, h, w, generator=g), torch.randn(pairs, 3, h, w, generator=g)
    rows, counts = mixer.draw(pairs, g)
    assert rows.shape == (pairs, h) and rows.dtype == torch.bool
    assert set(counts.tolist()) <= set(mixer.bands) and len(set(counts.tolist())) > 1
    mixed, mixed_x = mix_pairs(y_l, y_u, rows), mix_pairs(x_l, x_u, rows)
    assert mixed.shape == (2 * pairs, h, w) and mixed_x.shape == (2 * pairs, 3, h, w)
    for p in range(pairs):
        n = int(counts[p])
        # no row lies on an edge, so the expected band is unambiguous
        assert edge_distance(pitch, low, high, n) > 1e-6
        band = expected_bands(pitch, low, high, n)
        from_l = band % 2 == 0
        assert np.array_equal(rows[p].numpy(), from_l)
        for r in range(h):
            first, second = (y_l[p, r], y_u[p, r]) if from_l[r] else (y_u[p, r], y_l[p, r])
            assert torch.equal(mixed[2 * p, r], first) and torch.equal(mixed[2 * p + 1, r], second)
            xf, xs = (x_l[p, :, r], x_u[p, :, r]) if from_l[r] else (x_u[p, :, r], x_l[p, :, r])
            assert torch.equal(mixed_x[2 * p, :, r], xf) and torch.equal(mixed_x[2 * p + 1, :, r], xs)
        # complements: every row of each source appears in exactly one of the two mixes
        src_first = (mixed[2 * p] <= 10).all(1)
        src_second = (mixed[2 * p + 1] <= 10).all(1)
        assert ((mixed[2 * p] <= 10).all(1) | (mixed[2 * p] > 10).all(1)).all()
        assert torch.equal(src_first, ~src_second)
        assert int(src_first.sum() + src_second.sum()) == h  # labeled rows, once each
        assert 0 < int(src_first.sum()) < h


def test_pair_indices_cycle_the_smaller_batch() -> None:
    """max(B, B') pairs; scan i of the larger batch with scan i mod B of the smaller."""
    for b_l, b_u in ((2, 2), (2, 5), (3, 1)):
        il, iu = pair_indices(b_l, b_u)
        n = max(b_l, b_u)
        assert il.tolist() == [i % b_l for i in range(n)] and iu.tolist() == [i % b_u for i in range(n)]


# ------------------------------------------------------------------------------- 3. bands follow inclinations


def test_kitti_rows_are_interval_centres_and_bands_hold_equal_rows() -> None:
    """Pitch projection: row inclinations are the centres of the rows' pitch intervals (a point at that pitch
    projects into that row) and N bands over [-25, 3] hold equal numbers of rows to within one."""
    geometry = Geometry(64, 2048, 3.0, -25.0, rings=False)
    incl = row_inclinations(geometry)
    edges = np.linspace(3.0, -25.0, 65)
    np.testing.assert_allclose(incl, (edges[:-1] + edges[1:]) / 2, rtol=0, atol=1e-12)
    # points at those pitches project into those rows
    pitch = np.radians(incl)
    yaw = np.linspace(-3.0, 3.0, 64)
    pts = np.stack([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)], 1) * 10.0
    proj = project_spherical(pts.astype(np.float32), 64, 2048, 3.0, -25.0)
    assert proj.rows.tolist() == list(range(64))
    mixer = LaserMix.for_geometry(geometry, (2,), (-25.0, 3.0))
    for n in range(2, 17):
        band = mixer.row_bands(n).numpy()
        assert np.array_equal(band, expected_bands(incl, -25.0, 3.0, n)), n
        assert np.all(np.diff(band) >= 0) and band[0] == 0 and band[-1] == n - 1
        per_band = np.bincount(band, minlength=n)
        assert per_band.max() - per_band.min() <= 1, (n, per_band)


def test_ring_bands_follow_uneven_elevations() -> None:
    """Ring projection of the HDL-64E: a row's inclination is its laser's elevation (row = H - 1 - ring, as
    project_rings puts it), each row lies in its band's inclination interval, and since the beams are unevenly
    spaced the bands hold unequal numbers of rows: an equal-row split would put rows in the wrong band."""
    geometry = hdl64_geometry()
    elev = np.asarray(geometry.elevations)
    incl = row_inclinations(geometry)
    ring = np.arange(64)
    pts = np.stack([np.ones(64), np.zeros(64), np.zeros(64)], 1)
    proj = project_rings(pts, ring, 64, 64)
    assert np.array_equal(incl[proj.rows], elev[ring])  # row of ring i holds elevation i
    assert np.all(np.diff(incl) < 0)  # top row highest
    low, high = float(elev.min()), float(elev.max())
    mixer = LaserMix.for_geometry(geometry, (2,))
    assert mixer.pitch_range == (low, high)
    for n in range(2, 9):
        band = mixer.row_bands(n).numpy()
        step = (high - low) / n
        for r in range(64):
            k = band[r]
            assert high - (k + 1) * step - 1e-9 <= incl[r] <= high - k * step + 1e-9, (n, r)
        per_band = np.bincount(band, minlength=n)
        assert per_band.sum() == 64 and len(set(per_band.tolist())) > 1, (n, per_band)
        equal_split = np.arange(64) * n // 64  # 64 / n rows per band, as if the beams were evenly spaced
        misplaced = [
            r
            for r in range(64)
            if not high - (equal_split[r] + 1) * step <= incl[r] <= high - equal_split[r] * step
        ]
        assert misplaced, n


def random_cloud(seed: int, n: int = 3000) -> np.ndarray:
    """(N, 4) float32 points: pitch uniform in [-27, 5] deg (some outside the field of view), yaw uniform, range
    2..50 m; column 3 holds an id unique over both clouds (seed * N + i)."""
    rng = np.random.default_rng(seed)
    pitch = np.radians(rng.uniform(-27.0, 5.0, n))
    yaw = rng.uniform(-np.pi, np.pi, n)
    dist = rng.uniform(2.0, 50.0, n)
    xyz = (
        np.stack([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)], 1) * dist[:, None]
    )
    return np.concatenate([xyz, (seed * n + np.arange(n))[:, None]], 1).astype(np.float32)


def point_pitch(points: np.ndarray) -> np.ndarray:
    xyz = points[:, :3].astype(np.float64)
    return np.degrees(np.arcsin(xyz[:, 2] / np.linalg.norm(xyz, axis=1)))


@pytest.mark.parametrize("n", [2, 4, 8, 16])
def test_row_mix_equals_projecting_points_mixed_by_pitch(n: int) -> None:
    """Pitch projection with band edges on row boundaries: mixing the points by their own pitch (the release's
    LaserMix) and projecting gives the range image and nearest points of mixing the projected images' rows."""
    h, w, up, down = 16, 64, 3.0, -25.0
    clouds = [random_cloud(1), random_cloud(2)]
    edges = np.linspace(up, down, n + 1)
    kept = []
    for c in clouds:
        pitch = point_pitch(c)
        kept.append(c[np.abs(pitch[:, None] - edges[None]).min(1) > 1e-4])
    a, b = kept
    band_a = expected_bands(point_pitch(a), down, up, n)
    band_b = expected_bands(point_pitch(b), down, up, n)
    mixes = [
        np.concatenate([a[band_a % 2 == 0], b[band_b % 2 == 1]]),
        np.concatenate([b[band_b % 2 == 0], a[band_a % 2 == 1]]),
    ]
    proj_a, proj_b = (project_spherical(c, h, w, up, down) for c in (a, b))
    mixer = LaserMix.for_geometry(Geometry(h, w, up, down, rings=False), (n,))
    rows, counts = mixer.draw(1, torch.Generator().manual_seed(0))
    assert int(counts[0]) == n
    range_mix = mix_pairs(torch.from_numpy(proj_a.range)[None], torch.from_numpy(proj_b.range)[None], rows)

    def ids(
        c: np.ndarray, proj: Projection
    ) -> torch.Tensor:  # the id of each pixel's nearest point, -1 where empty
        return torch.from_numpy(np.where(proj.index >= 0, c[:, 3][proj.index], -1.0))

    id_mix = mix_pairs(ids(a, proj_a)[None], ids(b, proj_b)[None], rows)
    for k, cloud in enumerate(mixes):
        proj = project_spherical(cloud, h, w, up, down)
        assert torch.equal(torch.from_numpy(proj.range), range_mix[k]), k
        assert torch.equal(ids(cloud, proj), id_mix[k]), k
    assert (
        proj_a.mask.mean() > 0.5 and proj_b.mask.mean() > 0.5
    )  # the images are full enough to mean something
    # mix_rows is the first of the two mixes
    assert torch.equal(
        mix_rows(torch.from_numpy(proj_a.range)[None], torch.from_numpy(proj_b.range)[None], rows),
        range_mix[:1],
    )


def test_sharded_draws_are_the_global_batch_split_as_the_loader_splits_it() -> None:
    """Under DDP, rank r of w keeps every w-th partition of the global batch's draw, so 2 processes with one pair
    each mix as one process with both pairs."""
    geometry = kitti_small()
    whole = LaserMix.for_geometry(geometry, (2, 3, 4, 5, 6, 7, 8))
    rows, counts = whole.draw(8, torch.Generator().manual_seed(3))
    assert len(set(counts.tolist())) > 1  # the draws differ, so the split is visible
    for rank in range(2):
        shard = LaserMix.for_geometry(geometry, (2, 3, 4, 5, 6, 7, 8), shard=(rank, 2))
        rows_r, counts_r = shard.draw(4, torch.Generator().manual_seed(3))
        assert torch.equal(counts_r, counts[rank::2]) and torch.equal(rows_r, rows[rank::2])
