"""The numba range projection against its NumPy reference, real scans, and the properties it promises."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from rangecps import projection as P
from rangecps.projection import (
    Projection,
    gather_channels,
    labels_from_pixels,
    pixel_labels,
    project_rings,
    project_spherical,
)
from rangecps.projection_reference import (
    project_rings_reference,
    project_spherical_reference,
    spherical_coordinates,
    zbuffer_reference,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL = SHARED / "real_scans"
KITTI_SCAN = REAL / "kitti_object_000008_fov.bin"
NUSCENES_SCAN = REAL / "nuscenes_LIDAR_TOP_1532402927647951.pcd.bin"
FIELDS = ("rows", "cols", "depth", "index", "range", "mask")


def scan_like(n: int = 120_000, seed: int = 0) -> np.ndarray:
    """``(n, 4) float32``: an HDL-64E-like scan, ring by ring in azimuth order, ranges 2-80 m."""
    rng = np.random.default_rng(seed)
    elevation = np.deg2rad(np.linspace(2.0, -24.8, 64))
    per_ring = -(-n // 64)
    azimuth = np.sort(rng.uniform(-np.pi, np.pi, (64, per_ring)), axis=1)
    r = np.clip(20 + 15 * np.sin(3 * azimuth) + rng.normal(0, 5, azimuth.shape), 2, 80)
    e = elevation[:, None] + rng.normal(0, 5e-4, azimuth.shape)
    xyz = np.stack([r * np.cos(e) * np.cos(azimuth), r * np.cos(e) * np.sin(azimuth), r * np.sin(e)], -1)
    points = np.concatenate([xyz.reshape(-1, 3), rng.uniform(0, 1, (64 * per_ring, 1))], 1)
    return points[:n].astype(np.float32)


def assert_matches_reference(
    proj: Projection, ref: Projection, row_value: np.ndarray, col_value: np.ndarray
) -> float:
    """Exact agreement except for points whose float64 reference value itself lies on a pixel edge.

    Returns the fraction of pixels whose index agrees. The z-buffer is compared exactly on numba's own pixels.
    """
    h, w = proj.height, proj.width
    np.testing.assert_array_equal(proj.depth, ref.depth)
    np.testing.assert_array_equal(proj.rows < 0, ref.rows < 0)
    np.testing.assert_array_equal(proj.rows < 0, proj.cols < 0)
    for value, a, b in ((row_value, proj.rows, ref.rows), (col_value, proj.cols, ref.cols)):
        differ = a != b
        assert np.abs(a[differ] - b[differ]).max(initial=0) <= 1
        on_edge = np.abs(value - np.round(value)) <= 1e-9 * (1.0 + np.abs(value))
        assert on_edge[differ].all(), f"points moved off an edge: {np.flatnonzero(differ & ~on_edge)[:10]}"
    index, range_image = zbuffer_reference(proj.rows, proj.cols, proj.depth, h, w)
    np.testing.assert_array_equal(proj.index, index)
    np.testing.assert_array_equal(proj.range, range_image)
    np.testing.assert_array_equal(proj.mask, index >= 0)
    return float((proj.index == ref.index).mean())


def check_spherical(xyz: np.ndarray, **kw: float) -> tuple[Projection, float]:
    proj, ref = project_spherical(xyz, **kw), project_spherical_reference(xyz, **kw)
    defaults = {"height": 64, "width": 2048, "fov_up": 3.0, "fov_down": -25.0}
    row_value, col_value, _, _ = spherical_coordinates(xyz, **{**defaults, **kw})
    return proj, assert_matches_reference(proj, ref, row_value, col_value)


def check_rings(xyz: np.ndarray, ring: np.ndarray, height: int, width: int) -> tuple[Projection, float]:
    proj, ref = project_rings(xyz, ring, height, width), project_rings_reference(xyz, ring, height, width)
    _, col_value, _, _ = spherical_coordinates(xyz, height, width, 3.0, -25.0)
    return proj, assert_matches_reference(proj, ref, np.zeros(len(proj.rows)), col_value)


# ------------------------------------------------------------------------------------------ against the reference

special = st.sampled_from(
    [
        float(np.float32(v))
        for v in (0.0, -0.0, 1.0, -1.0, 2.0, 1e-30, -1e30, 3e38, math.nan, math.inf, -math.inf)
    ]
)
coordinate = st.one_of(st.floats(-100, 100, width=32), st.integers(-3, 3).map(float), special)


@settings(max_examples=40, deadline=None)
@given(
    xyz=st.integers(0, 60).flatmap(lambda n: arrays(np.float32, (n, 3), elements=coordinate)),
    height=st.integers(1, 16),
    width=st.integers(1, 64),
    fov=st.tuples(st.floats(-90, 89), st.floats(0.5, 90)),
)
def test_spherical_matches_reference_on_random_clouds(
    xyz: np.ndarray, height: int, width: int, fov: tuple[float, float]
) -> None:
    fov_down, span = fov
    check_spherical(xyz, height=height, width=width, fov_up=min(fov_down + span, 90.0), fov_down=fov_down)


@settings(max_examples=25, deadline=None)
@given(data=st.data(), n=st.integers(0, 60), height=st.integers(1, 8), width=st.integers(1, 64))
def test_rings_match_reference_on_random_clouds(data: st.DataObject, n: int, height: int, width: int) -> None:
    xyz = data.draw(arrays(np.float32, (n, 3), elements=coordinate))
    ring = data.draw(arrays(np.int32, (n,), elements=st.integers(0, height - 1)))
    check_rings(xyz, ring, height, width)


def test_large_scan_matches_reference() -> None:
    xyz = scan_like()
    proj, agree = check_spherical(xyz)
    assert agree >= 0.9999
    assert 0.5 < proj.mask.mean() < 0.9


def test_integer_grid_lands_on_exact_edges() -> None:
    """Points on x = +-y, the axes and 45-degree elevations sit exactly on pixel edges: the float64 path decides."""
    g = np.arange(-3, 4, dtype=np.float32)
    xyz = np.stack(np.meshgrid(g, g, g), -1).reshape(-1, 3)
    check_spherical(xyz, height=8, width=16, fov_up=45.0, fov_down=-45.0)
    compass = np.array([[1, 0, 0], [1, -1, 0], [0, -1, 0], [-1, -1, 0], [-1, -0.0, 0], [-1, 0, 0], [-1, 1, 0],
                        [0, 1, 0], [1, 1, 0]], np.float32)  # fmt: skip
    # yaw = -atan2(y, x) = k pi / 4 -> col = W / 2 + k W / 8; yaw = pi (y = -0) is the right edge, clamped
    np.testing.assert_array_equal(
        project_spherical(compass).cols, [1024, 1280, 1536, 1792, 2047, 0, 256, 512, 768]
    )


def test_points_a_hair_from_pixel_edges() -> None:
    """Within 1e-3 pixel of an edge float32 angles cannot decide the pixel: the exact path must, every time."""
    rng = np.random.default_rng(7)
    h, w, up, down = 64, 2048, 3.0, -25.0
    edge = rng.integers(0, w, 20_000) + rng.uniform(-1e-3, 1e-3, 20_000)  # column value near an edge
    yaw = 2 * np.pi * edge / w - np.pi
    row_edge = rng.integers(0, h + 1, 20_000) + rng.uniform(-1e-3, 1e-3, 20_000)
    pitch = np.deg2rad(up - row_edge / h * (up - down))
    r = rng.uniform(1, 80, 20_000)
    xyz = np.stack(
        [r * np.cos(pitch) * np.cos(-yaw), r * np.cos(pitch) * np.sin(-yaw), r * np.sin(pitch)], -1
    )
    _, agree = check_spherical(xyz.astype(np.float32), height=h, width=w, fov_up=up, fov_down=down)
    assert agree >= 0.9999


def _real_points(path: Path, columns: int) -> np.ndarray:
    if not path.exists():
        pytest.skip(f"real scans not available: {path} is absent")
    return np.fromfile(path, dtype=np.float32).reshape(-1, columns)


def test_real_kitti_scan_matches_reference() -> None:
    points = _real_points(KITTI_SCAN, 4)
    proj, agree = check_spherical(points)
    assert agree >= 0.9999
    assert (proj.rows >= 0).all()  # all 17,238 points are finite and off the origin
    # elevation -14.7..3.4 deg in a 3..-25 deg image: rows 0 (above 3 deg, clamped) to floor(17.7 / 28 * 64) = 40
    assert proj.rows.min() == 0 and proj.rows.max() == 40


def test_real_nuscenes_scan_matches_reference() -> None:
    raw = _real_points(NUSCENES_SCAN, 5)
    ring = raw[:, 4].astype(np.int32)
    proj, agree = check_rings(raw, ring, 32, 1920)
    assert agree >= 0.9999
    np.testing.assert_array_equal(proj.rows, 31 - ring)  # every point has a pixel; ring 0 is the bottom row
    _, agree = check_spherical(raw, height=32, width=1920, fov_up=10.0, fov_down=-30.0)
    assert agree >= 0.9999


# --------------------------------------------------------------------------------------------------- properties


def test_each_pixel_holds_its_nearest_point() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(0, 10, (3000, 3)).astype(np.float32)
    # same directions behind and in front (occlusions), and exact copies (depth ties), in shuffled order
    xyz = np.concatenate([base, base[:1000] * 2, base[1000:1500] * 0.5, base[:300]])
    xyz = xyz[rng.permutation(len(xyz))]
    proj = project_spherical(xyz, height=16, width=64)
    assert (proj.rows >= 0).all()
    pixel = proj.rows.astype(np.int64) * 64 + proj.cols
    winner = proj.index.reshape(-1)[pixel]
    assert (winner >= 0).all()
    np.testing.assert_array_equal(pixel[winner], pixel)  # the winner lies in that pixel
    beaten = proj.depth[winner] < proj.depth
    tied = proj.depth[winner] == proj.depth
    assert (beaten | (tied & (winner <= np.arange(len(xyz))))).all()
    assert np.isin(np.flatnonzero(proj.mask.reshape(-1)), pixel).all()  # no pixel without a point
    np.testing.assert_array_equal(proj.range[proj.mask], proj.depth[proj.index[proj.mask]])
    assert (proj.range[~proj.mask] == -1).all() and (proj.index[~proj.mask] == -1).all()


def test_point_zero_is_never_lost() -> None:
    alone = np.array([[10, 0, 0], [0, 10, 0]], np.float32)
    nearest = np.array([[5, 0, 0], [10, 0, 0], [20, 0, 0]], np.float32)
    tied = np.array([[5, 0, 0], [5, 0, 0], [9, 0, 0]], np.float32)
    for xyz in (alone, nearest, tied):
        proj = project_spherical(xyz)
        pixel = proj.rows[0], proj.cols[0]
        assert proj.index[pixel] == 0 and proj.mask[pixel] and proj.range[pixel] == xyz[0, 0]


def test_ties_go_to_the_lowest_index() -> None:
    xyz = np.tile(np.array([[3, 4, 0]], np.float32), (50, 1))
    xyz[:10] *= 2  # the first ten lie behind
    proj = project_spherical(xyz)
    assert proj.mask.sum() == 1 and proj.index[proj.mask][0] == 10


def test_non_finite_and_origin_points_get_no_pixel() -> None:
    bad = [[np.nan, 1, 1], [1, np.inf, 1], [1, 1, -np.inf], [0, 0, 0], [-0.0, 0, -0.0]]
    xyz = np.array([[10, 1, 0], *bad, [0, 0, 5]], np.float32)
    for proj in (project_spherical(xyz), project_rings(xyz, np.arange(7) % 4, height=4, width=8)):
        assert (proj.rows[1:6] == -1).all() and (proj.cols[1:6] == -1).all() and (proj.depth[1:6] == -1).all()
        assert proj.rows[0] >= 0 and proj.rows[6] >= 0
        assert proj.mask.sum() == 2 and set(proj.index[proj.mask]) == {0, 6}
    all_nan = np.full((4, 4), np.nan, np.float32)
    assert not project_spherical(all_nan).mask.any()


def test_empty_scans() -> None:
    for proj in (
        project_spherical(np.zeros((0, 4), np.float32)),
        project_rings(np.zeros((0, 3)), np.zeros(0, int)),
    ):
        assert proj.rows.shape == proj.cols.shape == proj.depth.shape == (0,)
        assert (proj.index == -1).all() and (proj.range == -1).all() and not proj.mask.any()


def test_points_outside_the_vertical_fov_are_clamped() -> None:
    xyz = np.array([[10, 0, 10], [10, 0, -20], [0, 0, 3], [0, 0, -3], [10, 0, 0]], np.float32)
    proj = project_spherical(xyz, height=64, fov_up=3.0, fov_down=-25.0)
    np.testing.assert_array_equal(proj.rows, [0, 63, 0, 63, 6])  # 0 deg: floor((1 - 25/28) * 64) = 6


def test_ring_rows_and_ring_errors() -> None:
    xyz = np.array([[10, 0, 0], [0, 10, 0], [-10, 0, 0]], np.float32)
    np.testing.assert_array_equal(project_rings(xyz, np.array([0, 31, 5])).rows, [31, 0, 26])
    with pytest.raises(ValueError, match=r"32, 40"):
        project_rings(xyz, np.array([32, 40, 0]))
    with pytest.raises(ValueError, match=r"-1"):
        project_rings(xyz, np.array([-1, 0, 0]), height=32)
    with pytest.raises(ValueError, match=r"ring must hold whole numbers.*2\.5 at point 2"):
        project_rings(xyz, np.array([0.0, 1.0, 2.5]))
    with pytest.raises(TypeError, match="integers"):
        project_rings(xyz, np.array([True, False, True]))
    with pytest.raises(ValueError, match="shape"):
        project_rings(xyz, np.array([0, 1]))


def test_input_checks() -> None:
    with pytest.raises(ValueError, match="shape"):
        project_spherical(np.zeros((5, 2), np.float32))
    with pytest.raises(TypeError, match="floating"):
        project_spherical(np.zeros((5, 3), np.int32))
    with pytest.raises(ValueError, match="fov"):
        project_spherical(np.zeros((5, 3), np.float32), fov_up=-30.0, fov_down=-25.0)
    with pytest.raises(ValueError, match="size"):
        project_spherical(np.zeros((5, 3), np.float32), height=0)


def test_layouts_and_dtypes_give_the_same_projection() -> None:
    points = scan_like(3000, seed=2)
    base = project_spherical(points)
    for variant in (points[:, :3], np.concatenate([points, points[:, :1]], 1), points.astype(np.float64),
                    np.asfortranarray(points), np.concatenate([points, points], 1)[:, :4]):  # fmt: skip
        other = project_spherical(variant)
        for field in FIELDS:
            np.testing.assert_array_equal(getattr(other, field), getattr(base, field))


def test_dtypes_and_shapes() -> None:
    points = scan_like(1000, seed=3)
    for proj, (h, w) in ((project_spherical(points, 16, 128), (16, 128)),
                         (project_rings(points, np.arange(1000) % 8, 8, 96), (8, 96))):  # fmt: skip
        assert (proj.height, proj.width, proj.num_points) == (h, w, 1000)
        for field, dtype, shape in (("rows", np.int32, (1000,)), ("cols", np.int32, (1000,)),
                                    ("depth", np.float32, (1000,)), ("index", np.int32, (h, w)),
                                    ("range", np.float32, (h, w)), ("mask", np.bool_, (h, w))):  # fmt: skip
            array = getattr(proj, field)
            assert array.dtype == dtype and array.shape == shape, field
    with pytest.raises(dataclasses.FrozenInstanceError):
        proj.rows = proj.cols  # type: ignore[misc]


# --------------------------------------------------------------------------------------- features and labels


def test_gather_channels() -> None:
    points = scan_like(4000, seed=4)
    points[5] = np.nan
    proj = project_spherical(points, 32, 256)
    image = gather_channels(points, proj)
    assert image.dtype == np.float32 and image.shape == (6, 32, 256) and image.flags.writeable
    m = proj.mask
    np.testing.assert_array_equal(image[0][m], proj.range[m])
    np.testing.assert_array_equal(image[1:5][:, m], points[proj.index[m]].T)
    np.testing.assert_array_equal(image[5], m.astype(np.float32))
    assert (image[:, ~m] == 0).all()
    with pytest.raises(ValueError, match=r"\(4000, >=4\)"):
        gather_channels(points[:, :3], proj)

    # Normalised in the same pass: (value - mean) / std on filled pixels, as numpy computes it in float32.
    mean, std = np.array([10.0, 1.0, -2.0, 0.5, 0.3]), np.array([8.0, 12.0, 9.0, 1.5, 0.2])
    normed = gather_channels(points, proj, mean, std)
    m32, inv32 = mean.astype(np.float32)[:, None], (1.0 / std.astype(np.float32))[:, None]
    np.testing.assert_array_equal(normed[:5][:, m], (image[:5][:, m] - m32) * inv32)
    np.testing.assert_array_equal(normed[5], image[5])
    assert (normed[:, ~m] == 0).all()
    with pytest.raises(ValueError, match="both mean and std"):
        gather_channels(points, proj, mean)


def test_label_round_trip() -> None:
    points = scan_like(4000, seed=5)
    points[7] = np.inf
    proj = project_spherical(points, 32, 256)
    labels = np.random.default_rng(0).integers(1, 20, len(points))
    image = pixel_labels(labels, proj)
    assert image.dtype == np.int64 and image.shape == (32, 256)
    np.testing.assert_array_equal(image[proj.mask], labels[proj.index[proj.mask]])
    assert (image[~proj.mask] == 0).all()
    back = labels_from_pixels(image.astype(np.int16), proj)
    assert back.dtype == np.int64 and back.shape == (len(points),)
    winners = proj.index[proj.mask]
    np.testing.assert_array_equal(back[winners], labels[winners])  # every winning point gets its own label
    has_pixel = proj.rows >= 0
    np.testing.assert_array_equal(back[has_pixel], image[proj.rows[has_pixel], proj.cols[has_pixel]])
    assert back[7] == 0 and not has_pixel[7]
    with pytest.raises(ValueError, match="image"):
        labels_from_pixels(image[:, :10], proj)
    with pytest.raises(ValueError, match="labels"):
        pixel_labels(labels[:-1], proj)


# ------------------------------------------------------------------------------------------- fast arctangent


@numba.njit(cache=True)
def _fast_atan2_many(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    out = np.empty(y.shape[0], np.float64)
    for i in range(y.shape[0]):
        out[i] = P._atan2_f32(y[i], x[i])
    return out


def test_fast_arctangent_accuracy_and_signed_zeros() -> None:
    rng = np.random.default_rng(6)
    angle = rng.uniform(-np.pi, np.pi, 200_000)
    radius = np.exp(rng.uniform(-20, 20, angle.size))
    x, y = (radius * np.cos(angle)).astype(np.float32), (radius * np.sin(angle)).astype(np.float32)
    error = np.abs(_fast_atan2_many(y, x) - np.arctan2(y.astype(np.float64), x.astype(np.float64)))
    assert error.max() < 5e-7  # the bound the edge margins in projection.py are built on
    special = (
        np.array([0.0, -0.0, 0.0, -0.0, 1.0, -1.0], np.float32),
        np.array([-1, -1, 1, 1, 0, 0], np.float32),
    )
    np.testing.assert_allclose(_fast_atan2_many(*special), np.arctan2(*special), rtol=1e-6, atol=0)
    assert np.array_equal(np.signbit(_fast_atan2_many(*special)), np.signbit(np.arctan2(*special)))
