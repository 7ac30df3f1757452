"""kNN post-processing: knn_numba and knn_torch must equal knn_reference exactly; hand-built cases pin the rules."""

from __future__ import annotations

from pathlib import Path

import numba
import numpy as np
import pytest
import torch
from bench_modules import load_bench

from rangecps.eval.knn import knn_numba, knn_postprocess, knn_reference, knn_torch
from rangecps.eval.knn.cpu import _claim, _segments

EMPTY = -1.0


def random_scan(
    rng: np.random.Generator, h: int, w: int, n: int, k: int, levels: bool
) -> dict[str, np.ndarray]:
    """A random scan; ``levels=True`` draws ranges from a few values so that equal distances (ties) abound."""
    if levels:
        proj_range = rng.choice(np.array([1.0, 1.5, 2.0, 2.25, 6.0], dtype=np.float32), size=(h, w))
    else:
        proj_range = rng.uniform(0.5, 8.0, size=(h, w)).astype(np.float32)
    proj_range[rng.random((h, w)) < 0.3] = EMPTY
    proj_argmax = rng.integers(0, k, size=(h, w)).astype(np.int64)
    proj_argmax[proj_range < 0] = 0
    rows = rng.integers(-1, h, size=n).astype(np.int32)
    cols = rng.integers(0, w, size=n).astype(np.int32)
    cols[rows < 0] = -1
    if levels:
        unproj_range = rng.choice(np.array([1.0, 1.5, 2.0, 6.0], dtype=np.float32), size=n)
    else:
        unproj_range = rng.uniform(0.5, 8.0, size=n).astype(np.float32)
    return {
        "proj_range": proj_range,
        "proj_argmax": proj_argmax,
        "unproj_range": unproj_range,
        "rows": rows,
        "cols": cols,
    }


def run_all(scan: dict[str, np.ndarray], **params: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ref = knn_reference(**scan, **params)
    fast = knn_numba(**scan, **params)
    vec = knn_torch(**{k: torch.from_numpy(v) for k, v in scan.items()}, **params, chunk=37).numpy()
    return ref, fast, vec


PARAMS = [
    dict(knn=5, search=5, sigma=1.0, cutoff=1.0, wrap=True),
    dict(knn=7, search=7, sigma=1.0, cutoff=2.0, wrap=True),  # CENet's setting
    dict(knn=3, search=3, sigma=0.5, cutoff=0.0, wrap=False),  # cutoff disabled, no wrap
    dict(knn=9, search=3, sigma=2.0, cutoff=0.3, wrap=True),  # k = whole window
    dict(knn=1, search=1, sigma=1.0, cutoff=1.0, wrap=True),  # a 1x1 window: the plain projection
]


@pytest.mark.parametrize("params", PARAMS)
@pytest.mark.parametrize("levels", [False, True], ids=["continuous", "ties"])
def test_implementations_equal_reference_on_random_scans(params: dict, levels: bool) -> None:
    rng = np.random.default_rng(100 * params["knn"] + 10 * params["search"] + int(levels))
    for _ in range(3):
        h, w = int(rng.integers(1, 9)), int(rng.integers(params["search"], 24))
        scan = random_scan(rng, h, w, n=150, k=6, levels=levels)
        ref, fast, vec = run_all(scan, num_classes=6, **params)
        np.testing.assert_array_equal(fast, ref)
        np.testing.assert_array_equal(vec, ref)
        assert ref.dtype == fast.dtype == vec.dtype == np.int64
        assert (ref[scan["rows"] < 0] == 0).all()


def test_search_one_returns_own_pixel_label() -> None:
    rng = np.random.default_rng(3)
    scan = random_scan(rng, 6, 20, n=100, k=5, levels=False)
    ref, fast, vec = run_all(scan, num_classes=5, knn=1, search=1)
    has = scan["rows"] >= 0
    expected = np.where(has, scan["proj_argmax"][scan["rows"], scan["cols"]], 0)
    for out in (ref, fast, vec):
        np.testing.assert_array_equal(out, expected)


def _one_point(
    proj_range: np.ndarray, proj_argmax: np.ndarray, r: int, c: int, rng_p: float, **params: object
):
    scan = {
        "proj_range": np.asarray(proj_range, dtype=np.float32),
        "proj_argmax": np.asarray(proj_argmax, dtype=np.int64),
        "unproj_range": np.array([rng_p], dtype=np.float32),
        "rows": np.array([r], dtype=np.int32),
        "cols": np.array([c], dtype=np.int32),
    }
    ref, fast, vec = run_all(scan, **params)
    assert ref[0] == fast[0] == vec[0]
    return int(ref[0])


def test_cutoff_removes_far_neighbours_after_choosing_the_k_nearest() -> None:
    # Centre (label 1) and two near neighbours (label 2) are within the cutoff; six far ones (label 3) are not.
    rng_img = np.full((3, 3), 14.0)
    lab = np.full((3, 3), 3)
    rng_img[1, 1], lab[1, 1] = 10.0, 1
    rng_img[0, 1], lab[0, 1] = 10.4, 2
    rng_img[1, 0], lab[1, 0] = 10.4, 2
    common = dict(num_classes=4, knn=9, search=3, sigma=1.0, wrap=False)
    assert _one_point(rng_img, lab, 1, 1, 10.0, cutoff=1.0, **common) == 2
    assert _one_point(rng_img, lab, 1, 1, 10.0, cutoff=0.0, **common) == 3  # disabled: the far majority wins


def test_occluded_point_votes_with_neighbours_at_its_own_depth() -> None:
    # The pixel holds a near car (label 1, 5 m); the point lies behind it on the wall (label 2, 20 m).
    rng_img = np.full((3, 5), 20.0)
    lab = np.full((3, 5), 2)
    rng_img[:, 1:3], lab[:, 1:3] = 5.0, 1
    common = dict(num_classes=3, knn=9, search=3, sigma=1.0, cutoff=1.0, wrap=False)
    assert _one_point(rng_img, lab, 1, 2, 20.0, **common) == 2
    assert _one_point(rng_img, lab, 1, 2, 5.0, **common) == 1


def test_ties_take_lower_window_index_then_lower_class() -> None:
    # All nine candidates have distance 0, so the window order decides: k=3 takes positions 0, 1, 2 (labels
    # 3, 2 and ignore): one vote each for 3 and 2, and the lower class id wins.
    rng_img = np.full((3, 3), 4.0)
    lab = np.array([[3, 2, 0], [1, 1, 1], [1, 1, 1]])
    common = dict(num_classes=4, search=3, sigma=1.0, cutoff=1.0, wrap=False)
    assert _one_point(rng_img, lab, 1, 1, 4.0, knn=3, **common) == 2
    assert _one_point(rng_img, lab, 1, 1, 4.0, knn=1, **common) == 3
    assert _one_point(rng_img, lab, 1, 1, 4.0, knn=9, **common) == 1


def test_no_vote_falls_back_to_own_pixel_label() -> None:
    # k=1 picks window position 0 (tied at distance 0 with the centre), labelled ignore: nobody votes.
    rng_img = np.full((3, 3), 4.0)
    lab = np.full((3, 3), 2)
    lab[0, 0] = 0
    common = dict(num_classes=3, search=3, sigma=1.0, cutoff=1.0, wrap=False)
    assert _one_point(rng_img, lab, 1, 1, 4.0, knn=1, **common) == 2
    lab[1, 1] = 0
    assert _one_point(rng_img, lab, 1, 1, 4.0, knn=1, **common) == 0


def test_out_of_image_neighbours_behave_like_empty_pixels() -> None:
    # Near ranges make zero padding look like close neighbours (RangeNet++'s artefact); here, adding rows of
    # empty pixels around the image must change nothing.
    rng = np.random.default_rng(11)
    scan = random_scan(rng, 5, 16, n=200, k=4, levels=False)
    scan["proj_range"] = np.where(scan["proj_range"] > 0, scan["proj_range"] / 8.0, EMPTY).astype(np.float32)
    scan["unproj_range"] /= 8.0
    params = dict(num_classes=4, knn=5, search=5, sigma=1.0, cutoff=1.0, wrap=True)
    padded = dict(scan)
    padded["proj_range"] = np.pad(scan["proj_range"], ((2, 2), (0, 0)), constant_values=EMPTY)
    padded["proj_argmax"] = np.pad(scan["proj_argmax"], ((2, 2), (0, 0)))
    padded["rows"] = np.where(scan["rows"] >= 0, scan["rows"] + 2, -1).astype(np.int32)
    for fn in (knn_reference, knn_numba):
        np.testing.assert_array_equal(fn(**padded, **params), fn(**scan, **params))


def test_window_wraps_across_the_azimuth_seam() -> None:
    # With wrap, rotating the scan in azimuth changes no label; the seam columns are neighbours.
    rng = np.random.default_rng(5)
    scan = random_scan(rng, 6, 20, n=300, k=5, levels=False)
    params = dict(num_classes=5, knn=5, search=5, sigma=1.0, cutoff=1.0, wrap=True)
    base = knn_numba(**scan, **params)
    for shift in (1, 2, 9):
        rolled = dict(scan)
        rolled["proj_range"] = np.roll(scan["proj_range"], shift, axis=1)
        rolled["proj_argmax"] = np.roll(scan["proj_argmax"], shift, axis=1)
        rolled["cols"] = np.where(scan["cols"] >= 0, (scan["cols"] + shift) % 20, -1).astype(np.int32)
        ref, fast, vec = run_all(rolled, **params)
        np.testing.assert_array_equal(ref, base)
        np.testing.assert_array_equal(fast, base)
        np.testing.assert_array_equal(vec, base)


def test_wrap_reaches_the_last_column_only_when_enabled() -> None:
    rng_img = np.full((3, 8), 20.0)
    lab = np.full((3, 8), 1)
    rng_img[:, 6:], lab[:, 6:] = 5.0, 2  # an object at the end of the scan, next to column 0
    rng_img[1, 0], lab[1, 0] = 5.0, 2
    common = dict(num_classes=3, knn=5, search=5, sigma=1.0, cutoff=1.0)
    assert _one_point(rng_img, lab, 1, 0, 5.0, wrap=True, **common) == 2
    rng_img[1, 0], lab[1, 0] = 5.0, 1  # the point's own pixel says 1; only the wrapped neighbours say 2
    assert _one_point(rng_img, lab, 1, 0, 5.0, wrap=True, **common) == 2
    assert _one_point(rng_img, lab, 1, 0, 5.0, wrap=False, **common) == 1


def test_matches_published_unfold_method_away_from_its_artefacts() -> None:
    # Interior points of a full image with continuous ranges and no ignore labels: no borders, no empty
    # pixels, no ties, and the centre always votes -- there the published method and ours must agree.
    bench = load_bench("bench_knn")
    rng = np.random.default_rng(2)
    h, w, n = 12, 40, 400
    proj_range = rng.uniform(1.0, 4.0, size=(h, w)).astype(np.float32)
    proj_argmax = rng.integers(1, 5, size=(h, w)).astype(np.int64)
    rows = rng.integers(2, h - 2, size=n).astype(np.int32)
    cols = rng.integers(2, w - 2, size=n).astype(np.int32)
    unproj_range = (proj_range[rows, cols] + rng.uniform(0.0, 2.0, size=n)).astype(np.float32)
    arrays = (proj_range, proj_argmax, unproj_range, rows, cols)
    ours = knn_numba(*arrays, num_classes=5, wrap=False)
    theirs = bench.knn_unfold(*(torch.from_numpy(a) for a in arrays), num_classes=5).numpy()
    np.testing.assert_array_equal(ours, theirs)
    assert (ours != proj_argmax[rows, cols]).any()  # the vote did change labels


def test_synthetic_benchmark_scan_agrees() -> None:
    bench = load_bench("bench_knn")
    scan = bench.synthetic_scan(0, h=16, w=256, num_points=3000, visible=2500)
    assert (scan["proj_range"] >= 0).sum() == 2500
    ref, fast, vec = run_all(scan, num_classes=bench.NUM_CLASSES)
    np.testing.assert_array_equal(fast, ref)
    np.testing.assert_array_equal(vec, ref)


def test_dispatcher_keeps_the_input_type() -> None:
    rng = np.random.default_rng(8)
    scan = random_scan(rng, 4, 16, n=50, k=3, levels=False)
    expected = knn_reference(**scan, num_classes=3)
    out = knn_postprocess(**scan, num_classes=3)
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, expected)
    tensors = {k: torch.from_numpy(v) for k, v in scan.items()}
    out_t = knn_postprocess(**tensors, num_classes=3)
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.int64
    np.testing.assert_array_equal(out_t.numpy(), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torch_on_cuda_equals_reference() -> None:
    rng = np.random.default_rng(4)
    scan = random_scan(rng, 8, 64, n=2000, k=6, levels=True)
    expected = knn_reference(**scan, num_classes=6)
    out = knn_postprocess(**scan, num_classes=6, device="cuda")
    assert out.device.type == "cuda"
    np.testing.assert_array_equal(out.cpu().numpy(), expected)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(search=4), "odd"),
        (dict(knn=10, search=3), "knn must be"),
        (dict(num_classes=1), "num_classes"),
        (dict(sigma=0.0), "sigma"),
        (dict(cutoff=float("nan")), "cutoff"),
    ],
)
def test_bad_parameters_are_rejected(change: dict, message: str) -> None:
    scan = random_scan(np.random.default_rng(0), 4, 16, n=10, k=3, levels=False)
    params = {"num_classes": 3, **change}
    for fn in (knn_numba, knn_reference):
        with pytest.raises(ValueError, match=message):
            fn(**scan, **params)
    with pytest.raises(ValueError, match=message):
        knn_torch(**{k: torch.from_numpy(v) for k, v in scan.items()}, **params)


def test_bad_inputs_are_rejected() -> None:
    base = random_scan(np.random.default_rng(0), 4, 16, n=10, k=3, levels=False)
    bad_label = dict(base, proj_argmax=np.full((4, 16), 3))
    bad_shape = dict(base, proj_argmax=np.zeros((4, 15), dtype=np.int64))
    bad_rows = dict(base, rows=np.full(10, 4, dtype=np.int32), cols=np.zeros(10, dtype=np.int32))
    half_missing = dict(base, rows=np.full(10, -1, dtype=np.int32), cols=np.zeros(10, dtype=np.int32))
    nan_range = dict(base, rows=np.zeros(10, dtype=np.int32), cols=np.zeros(10, dtype=np.int32))
    nan_range["unproj_range"] = np.full(10, np.nan, dtype=np.float32)
    narrow = dict(base, proj_range=base["proj_range"][:, :3], proj_argmax=base["proj_argmax"][:, :3])
    cases = [
        (bad_label, r"outside 0\.\.2"),
        (bad_shape, "same"),
        (bad_rows, "outside"),
        (half_missing, "same points"),
        (nan_range, "finite"),
        (narrow, "width"),
    ]
    for scan, message in cases:
        with pytest.raises(ValueError, match=message):
            knn_numba(**scan, num_classes=3)
        with pytest.raises(ValueError, match=message):
            knn_torch(**{k: torch.from_numpy(v) for k, v in scan.items()}, num_classes=3)


def test_real_nuscenes_scan_all_implementations_agree() -> None:
    shared = Path(__file__).resolve().parents[1].parent / "shared"
    path = shared / "real_scans" / "nuscenes_LIDAR_TOP_1532402927647951.pcd.bin"
    if not path.is_file():
        pytest.skip(f"real scan not available: {path}")
    from rangecps.io import read_nuscenes_points
    from rangecps.projection import project_rings

    points, ring = read_nuscenes_points(path)
    proj = project_rings(points[:, :3], ring, height=32, width=1024)
    # Pseudo-predictions from geometry (ground / low / high by the pixel's point height, far pixels ignored),
    # so that labels are piecewise constant like a network's.
    z = points[np.maximum(proj.index, 0), 2]
    pseudo = np.where(z < -1.4, 1, np.where(z < 0.5, 2, 3))
    pseudo = np.where(proj.range > 60.0, 0, pseudo)
    pseudo = np.where(proj.mask, pseudo, 0).astype(np.int64)
    scan = {
        "proj_range": proj.range,
        "proj_argmax": pseudo,
        "unproj_range": proj.depth,
        "rows": proj.rows,
        "cols": proj.cols,
    }
    params = dict(num_classes=4, knn=5, search=5, sigma=1.0, cutoff=1.0)
    fast = knn_numba(**scan, **params)
    vec = knn_torch(
        **{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in scan.items()}, **params
    ).numpy()
    np.testing.assert_array_equal(fast, vec)
    subset = np.random.default_rng(0).choice(len(fast), size=1500, replace=False)
    sub = dict(scan, unproj_range=proj.depth[subset], rows=proj.rows[subset], cols=proj.cols[subset])
    np.testing.assert_array_equal(knn_reference(**sub, **params), fast[subset])
    held = proj.rows >= 0
    own = pseudo[proj.rows[held], proj.cols[held]]
    changed = np.mean(fast[held] != own)
    assert 0.0 < changed < 0.2, changed  # the vote relabels depth edges and occluded points, not the bulk


@pytest.mark.parametrize("workers", [1, 2, 3, 5])
def test_claims_cover_every_chunk_exactly_once_in_any_interleaving(workers: int) -> None:
    # The kernel's work stealing, replayed one claim at a time in random orders: owners take their segment from
    # the front, the others steal from the back, and no chunk is skipped or labelled twice.
    rng = np.random.default_rng(workers)
    for n_chunks in (0, 1, workers - 1, 7, 40):
        front, back = _segments(n_chunks, workers)
        hops = [0] * workers
        claimed: list[int] = []
        while any(h < workers for h in hops):
            w = int(rng.choice([w for w in range(workers) if hops[w] < workers]))
            chunk = _claim(front, back, (w + hops[w]) % workers, hops[w] == 0)
            if chunk < 0:
                hops[w] += 1
            else:
                claimed.append(chunk)
        assert sorted(claimed) == list(range(n_chunks))


def test_numba_labels_do_not_depend_on_the_thread_count() -> None:
    # 30 chunks of 1024 points: with two threads, the one that finishes its segment first steals from the other's.
    rng = np.random.default_rng(5)
    scan = random_scan(rng, 32, 512, n=30_000, k=6, levels=True)
    before = numba.get_num_threads()
    try:
        results = []
        for threads in range(1, numba.config.NUMBA_NUM_THREADS + 1):
            numba.set_num_threads(threads)
            results.append(knn_numba(**scan, num_classes=6))
    finally:
        numba.set_num_threads(before)
    for labels in results[1:]:
        np.testing.assert_array_equal(labels, results[0])
    subset = rng.choice(len(results[0]), size=500, replace=False)
    sub = dict(scan, **{k: scan[k][subset] for k in ("unproj_range", "rows", "cols")})
    np.testing.assert_array_equal(knn_reference(**sub, num_classes=6), results[0][subset])
