"""Point inputs of the dataset (``RangeDataset(point_inputs=True)``) and the point batches of ``collate``: what a
point-based range-view network (FRNet) reads in training and evaluation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from rangecps.config import AugmentConfig
from rangecps.data import DATASETS
from rangecps.data.augment import build_augment
from rangecps.data.build import DataBundle
from rangecps.data.dataset import RangeDataset
from rangecps.data.prep import prepare
from rangecps.data.sample import collate, pack_sample
from rangecps.labels import load_label_map
from rangecps.projection import project_spherical

CLS = DATASETS["synthetic_kitti"]
# A small range image keeps the tests light; the geometry is the dataset's, at another size.
GEOMETRY = replace(CLS.geometry, height=32, width=512)
# Every point transform, so that the projected points differ from the stored ones in every way they can.
AUGMENT = AugmentConfig(dropout=0.1, translate=0.2, point_noise=0.01)

# Today's keys (the option off): a sample with and without the per-point arrays, and their batches.
PIXEL_KEYS = {"input", "label", "mask", "num_points", "index", "draw", "scan_id", "non_finite"}
POINT_KEYS = {"rows", "cols", "depth", "point_label"}
INPUT_KEYS = {"points", "point_valid"}
BATCH_INPUT_KEYS = {"points", "coors", "point_valid", "point_counts", "point_offsets"}


@pytest.fixture(scope="module")
def prepared(synthetic_kitti: Path, tmp_path_factory: pytest.TempPathFactory):
    index, stats, _ = prepare(CLS, synthetic_kitti, tmp_path_factory.mktemp("prep"), progress=False)
    return synthetic_kitti, index, stats


def make(prepared, augment: AugmentConfig | None = AUGMENT, **kw) -> RangeDataset:
    root, index, stats = prepared
    return RangeDataset(
        root,
        index.split("train"),
        CLS.file_format,
        GEOMETRY,
        load_label_map(CLS.label_map),
        stats,
        build_augment(augment) if augment is not None else None,
        seed=3,
        **kw,
    )


def reproject(points: torch.Tensor):
    g = GEOMETRY
    return project_spherical(points.numpy(), g.height, g.width, g.fov_up, g.fov_down)


def test_points_are_the_projected_points(prepared) -> None:
    ds = make(prepared, with_points=False, point_inputs=True)
    plain = make(prepared, augment=None, with_points=False, point_inputs=True)
    s = ds[(1, 7)]
    assert set(s) == PIXEL_KEYS | POINT_KEYS | INPUT_KEYS  # point inputs bring the per-point arrays along
    n = s["num_points"]
    assert s["points"].shape == (n, 4) and s["points"].dtype == torch.float32
    assert s["rows"].shape == s["cols"].shape == s["point_label"].shape == s["point_valid"].shape == (n,)
    # augmented: dropout removed points and the rest moved
    stored = plain[1]["points"]
    assert n < len(stored)
    # Re-projecting the sample's points at the dataset geometry gives exactly its pixels (and no-pixel flags).
    proj = reproject(s["points"])
    assert torch.equal(s["rows"], torch.from_numpy(proj.rows.astype(np.int64)))
    assert torch.equal(s["cols"], torch.from_numpy(proj.cols.astype(np.int64)))
    assert torch.equal(s["depth"], torch.from_numpy(proj.depth))
    assert torch.equal(s["point_valid"], s["rows"] >= 0) and bool(s["point_valid"].all())
    # ... and the image holds exactly those pixels.
    v = s["point_valid"]
    hit = torch.zeros(GEOMETRY.height, GEOMETRY.width, dtype=torch.bool)
    hit[s["rows"][v], s["cols"][v]] = True
    assert torch.equal(hit, s["mask"])
    # The pixel-key values are those of a pixel-only dataset at the same draw.
    pixel_only = make(prepared, with_points=False)[(1, 7)]
    assert set(pixel_only) == PIXEL_KEYS
    for key in ("input", "label", "mask"):
        assert torch.equal(pixel_only[key], s[key]), key


def test_roll_moves_the_columns_only(prepared) -> None:
    s = make(prepared, point_inputs=True, roll=True)[(0, 2)]
    proj = reproject(s["points"])
    v = s["point_valid"]
    assert torch.equal(s["rows"], torch.from_numpy(proj.rows.astype(np.int64)))
    shift = (torch.from_numpy(proj.cols.astype(np.int64))[v] - s["cols"][v]) % GEOMETRY.width
    assert len(shift.unique()) == 1 and int(shift[0]) != 0  # one roll of every column, as the image's


def test_option_off_gives_todays_keys(prepared) -> None:
    pixel = make(prepared, with_points=False)
    full = make(prepared, with_points=True)
    assert pixel.point_inputs is False and full.point_inputs is False
    assert set(pixel[0]) == PIXEL_KEYS
    assert set(full[0]) == PIXEL_KEYS | POINT_KEYS
    batch_keys = PIXEL_KEYS | {"input"}
    assert set(collate([pixel[0], pixel[1]])) == batch_keys
    assert set(collate([full[0], full[1]])) == batch_keys | POINT_KEYS
    on = collate([make(prepared, point_inputs=True)[i] for i in (0, 1)])
    assert set(on) == batch_keys | POINT_KEYS | BATCH_INPUT_KEYS
    off = collate([full[0], full[1]])
    for key in off:
        if key != "scan_id":
            assert torch.equal(off[key], on[key]), key


def _sample(points: np.ndarray, index: int) -> dict:
    """A hand-made point-input sample of ``points`` at the test geometry (labels = 1 + point index)."""
    g = GEOMETRY
    proj = project_spherical(points, g.height, g.width, g.fov_up, g.fov_down)
    image = np.zeros((6, g.height, g.width), np.float32)
    image[5] = proj.mask
    labels = np.arange(1, len(points) + 1, dtype=np.int64)
    pixel = np.zeros((g.height, g.width), np.int64)
    rows, cols, depth = proj.rows, proj.cols, proj.depth
    return pack_sample(
        image, pixel, rows, cols, depth, labels, index, index, f"s{index}", False, points=points
    )


def test_collate_concatenates_scans_of_different_sizes() -> None:
    rng = np.random.default_rng(0)
    sizes = (50, 7, 0, 23)
    scans = []
    for n in sizes:
        p = np.concatenate([rng.uniform(-20, 20, (n, 3)), rng.uniform(0, 1, (n, 1))], axis=1).astype(
            np.float32
        )
        p[:, 2] = rng.uniform(-2, 0.5, n)
        scans.append(p)
    scans[1][3] = 0.0  # r = 0: no pixel
    scans[3][[0, 5]] = np.nan  # non-finite: no pixel
    samples = [_sample(p, i) for i, p in enumerate(scans)]
    batch = collate(samples)
    valid = [s["point_valid"] for s in samples]
    counts = [int(v.sum()) for v in valid]
    assert counts == [50, 6, 0, 21]
    total = sum(counts)
    assert batch["points"].shape == (total, 4) and batch["points"].dtype == torch.float32
    assert batch["coors"].shape == (total, 3) and batch["coors"].dtype == torch.int64
    assert batch["point_counts"].tolist() == counts
    assert batch["point_offsets"].tolist() == [0, 50, 56, 56, 77]
    assert torch.isfinite(batch["points"]).all()
    assert batch["point_valid"].shape == batch["rows"].shape == (4, max(sizes))
    off = batch["point_offsets"]
    for b, s in enumerate(samples):
        part = slice(int(off[b]), int(off[b + 1]))
        v = valid[b]
        assert (batch["coors"][part, 0] == b).all()
        assert torch.equal(batch["coors"][part, 1], s["rows"][v])
        assert torch.equal(batch["coors"][part, 2], s["cols"][v])
        assert torch.equal(batch["points"][part], s["points"][v])
        assert torch.equal(batch["point_valid"][b, : sizes[b]], v)
        assert not batch["point_valid"][b, sizes[b] :].any()
    # The concatenation is in the padded mask's order: per-point outputs go back to every point by the mask,
    # and the training targets are the padded labels under it.
    targets = torch.cat([s["point_label"][s["point_valid"]] for s in samples])
    assert torch.equal(batch["point_label"][batch["point_valid"]], targets)
    back = torch.full(batch["rows"].shape, -1, dtype=torch.int64)
    back[batch["point_valid"]] = torch.arange(total)
    assert back[1, :7].tolist() == [50, 51, 52, -1, 53, 54, 55]
    assert back[3, :7].tolist() == [-1, 56, 57, 58, 59, -1, 60]


def test_same_draw_same_sample(prepared) -> None:
    a = make(prepared, point_inputs=True)
    b = make(prepared, point_inputs=True)  # a fresh dataset, as a loader worker or a resumed run holds
    s, t = a[(2, 11)], b[(2, 11)]
    assert set(s) == set(t)
    for key in s:
        if isinstance(s[key], torch.Tensor):
            assert torch.equal(s[key], t[key]), key
        else:
            assert s[key] == t[key], key
    other = a[(2, 12)]  # another draw of the same scan is augmented afresh
    assert other["index"] == 2 and other["draw"] == 12
    same_n = other["num_points"] == s["num_points"]
    assert not (same_n and torch.equal(other["points"], s["points"]))
    a.set_epoch(1)
    assert not torch.equal(a[(2, 11)]["input"], s["input"])


def test_non_finite_and_zero_points_are_flagged(prepared, monkeypatch: pytest.MonkeyPatch) -> None:
    import rangecps.data.dataset as dataset_module

    original = dataset_module.read_scan
    bad = {3: (0, np.nan), 10: (1, np.inf), 20: (3, np.nan), 30: (2, -np.inf)}

    def broken(*args, **kwargs):
        scan = original(*args, **kwargs)
        for i, (column, value) in bad.items():
            scan.points[i, column] = value
        scan.points[40, :3] = 0.0  # r = 0
        return scan

    monkeypatch.setattr(dataset_module, "read_scan", broken)
    ds = make(prepared, augment=None, with_points=False, point_inputs=True)
    s = ds[0]
    flagged = sorted([*bad, 40])
    assert torch.nonzero(~s["point_valid"]).flatten().tolist() == flagged
    assert (s["rows"][flagged] == -1).all() and (s["cols"][flagged] == -1).all()
    assert s["non_finite"] == len(bad)
    # The points are kept as read (all N of them, aligned with the per-point arrays), NaN included...
    assert s["points"].shape == (s["num_points"], 4)
    assert torch.isnan(s["points"][3, 0]) and torch.isinf(s["points"][10, 1])
    # ... and the batch hands the network only points with a pixel, all finite.
    batch = collate([s, ds[1]])
    assert torch.isfinite(batch["points"]).all()
    assert int(batch["point_counts"][0]) == s["num_points"] - len(flagged)
    assert len(batch["points"]) == int(batch["point_valid"].sum())
    # Evaluation labels every point: network outputs for the valid ones, a fallback for the rest.
    pred = torch.zeros(batch["rows"].shape, dtype=torch.int64)
    pred[batch["point_valid"]] = 5
    assert (pred[0, : s["num_points"]] == 5).sum() == s["num_points"] - len(flagged)
    # With augmentation the NaN points stay without a pixel too.
    aug = make(prepared, point_inputs=True)[(0, 4)]
    assert torch.equal(aug["point_valid"], aug["rows"] >= 0)
    assert not aug["point_valid"][torch.isnan(aug["points"]).any(1)].any()


def test_cache_is_not_used_with_point_inputs(prepared, tmp_path: Path) -> None:
    missing = tmp_path / "no-cache"  # reading it would fail: point inputs must read and project the scans
    assert make(prepared, augment=None, cache_dir=missing).cache_dir == missing  # off: the cache is read
    ds = make(prepared, augment=None, point_inputs=True, cache_dir=missing)
    assert ds.cache_dir is None
    ds.cache_dir = missing  # even when set afterwards
    assert ds[0]["points"].shape[0] == ds[0]["num_points"]
    root, index, stats = prepared
    bundle = DataBundle(CLS, root, index, stats, load_label_map(CLS.label_map), GEOMETRY)
    bundle._cache_checked, bundle._cache_folder = True, missing  # a cache this run would use
    assert bundle.dataset("train").cache_dir == missing
    pts = bundle.dataset("train", with_points=False, point_inputs=True)
    assert pts.point_inputs and pts.with_points and pts.cache_dir is None
    assert set(pts[0]) == PIXEL_KEYS | POINT_KEYS | INPUT_KEYS


def test_loader_workers_give_the_same_batches(prepared) -> None:
    """In a worker, collate writes the point keys straight into shared memory; the batches are the same."""
    ds = make(prepared, point_inputs=True)
    keys = [(0, 1), (1, 2), (2, 3)]
    loader = torch.utils.data.DataLoader(ds, batch_size=3, sampler=keys, num_workers=1, collate_fn=collate)
    (batch,) = list(loader)
    here = collate([ds[k] for k in keys])
    assert set(batch) == set(here)
    for key in here:
        if key != "scan_id":
            assert torch.equal(batch[key], here[key]), key
