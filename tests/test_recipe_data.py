"""The data side of the released recipe: a fresh augmentation on every draw, the release's transforms, the column
roll and the input encoding."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from rangecps.config import load_config
from rangecps.data import DATASETS
from rangecps.data.augment import (
    PointDropout,
    RandomFlip,
    RandomRotate,
    RandomScale,
    RandomTranslate,
    build_augment,
)
from rangecps.data.dataset import RangeDataset
from rangecps.data.loader import semi_supervised_loader
from rangecps.data.prep import prepare
from rangecps.io import Scan
from rangecps.labels import load_label_map
from rangecps.projection import gather_channels

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def kitti(synthetic_kitti: Path, tmp_path_factory: pytest.TempPathFactory):
    cls = DATASETS["synthetic_kitti"]
    index, stats, _ = prepare(cls, synthetic_kitti, tmp_path_factory.mktemp("prep"), progress=False)
    return cls, index, stats


def _dataset(root, kitti, records, augment=None, **kw) -> RangeDataset:
    cls, _, stats = kitti
    geometry = replace(cls.geometry, width=512)
    lmap = load_label_map(cls.label_map)
    return RangeDataset(root, records, cls.file_format, geometry, lmap, stats, augment, seed=7, **kw)


def _batches(loader) -> list[tuple[dict, dict]]:
    loader.set_epoch(0)
    return list(loader)


def test_every_draw_of_a_repeated_labeled_scan_is_augmented_afresh(synthetic_kitti: Path, kitti) -> None:
    _, index, _ = kitti
    recs = index.split("train") + index.split("val")
    aug = build_augment(load_config(CONFIGS / "semantickitti" / "cps_fidnet.yaml").data.augment)
    lab = _dataset(synthetic_kitti, kitti, recs[:1], aug)
    unl = _dataset(synthetic_kitti, kitti, recs[1:5], aug)
    pairs = _batches(semi_supervised_loader(lab, unl, 1, 1, num_workers=0, seed=0))
    # One labeled scan, four unlabeled: the labeled scan is drawn four times in the epoch...
    assert len(pairs) == 4 and all(int(b["index"][0]) == 0 for b, _ in pairs)
    inputs = [b["input"][0] for b, _ in pairs]
    # ...and every draw is augmented differently.
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.equal(inputs[i], inputs[j]), (i, j)


def test_draws_do_not_depend_on_workers_processes_or_resume(synthetic_kitti: Path, kitti) -> None:
    _, index, _ = kitti
    recs = index.split("train") + index.split("val")
    aug = build_augment(load_config(CONFIGS / "semantickitti" / "cps_fidnet.yaml").data.augment)

    def run(batch: int, workers: int, rank: int = 0, world: int = 1) -> list[dict]:
        lab = _dataset(synthetic_kitti, kitti, recs[:2], aug)
        unl = _dataset(synthetic_kitti, kitti, recs[2:6], aug)
        loader = semi_supervised_loader(lab, unl, batch, batch, workers, seed=3, rank=rank, world=world)
        return [b for b, _ in _batches(loader)]

    one = run(2, 0)
    assert all(torch.equal(a["input"], b["input"]) for a, b in zip(one, run(2, 2), strict=True))
    # Two processes with one scan each see exactly the two halves of one process's batches of two.
    shards = [run(1, 0, rank, 2) for rank in range(2)]
    for step, batch in enumerate(one):
        for rank in range(2):
            assert torch.equal(shards[rank][step]["input"][0], batch["input"][rank])
            assert int(shards[rank][step]["draw"][0]) == int(batch["draw"][rank])
    # Resuming at step 1 of the epoch draws what the uninterrupted run drew.
    lab = _dataset(synthetic_kitti, kitti, recs[:2], aug)
    unl = _dataset(synthetic_kitti, kitti, recs[2:6], aug)
    loader = semi_supervised_loader(lab, unl, 2, 2, 0, seed=3)
    loader.set_epoch(0, start_step=1)
    resumed = [b for b, _ in loader]
    assert all(torch.equal(a["input"], b["input"]) for a, b in zip(one[1:], resumed, strict=True))


def test_released_scaling_translation_and_dropout_draws() -> None:
    rng = np.random.default_rng(0)
    up_or_inverse = np.array([RandomScale(1.0, 1.05, "up_or_inverse").factor(rng) for _ in range(4000)])
    exact = np.isclose(up_or_inverse, 1 / 1.05, rtol=0, atol=1e-12)
    assert 0.46 < exact.mean() < 0.54  # half the draws are exactly 1 / 1.05
    assert ((up_or_inverse[~exact] >= 1.0) & (up_or_inverse[~exact] <= 1.05)).all()
    reciprocal = np.array([RandomScale(1.0, 1.05, "up_or_reciprocal").factor(rng) for _ in range(4000)])
    below = reciprocal < 1.0
    assert 0.46 < below.mean() < 0.54
    assert (reciprocal[below] >= 1 / 1.05).all() and np.unique(reciprocal[below]).size > 1000
    assert (reciprocal[~below] <= 1.05).all()

    pts = rng.normal(size=(1000, 4)).astype(np.float32) * 10
    scan = Scan(points=pts, labels=rng.integers(1, 20, size=1000))
    # x and y scale, z stays (the KITTI release scales x and y only).
    out = RandomScale(1.0, 1.05, "up_or_inverse", z=False)(scan, np.random.default_rng(1))
    ratio = out.points[:, :2] / pts[:, :2]
    assert np.allclose(ratio, ratio[0, 0], rtol=1e-5) and ratio[0, 0] != 1.0
    np.testing.assert_array_equal(out.points[:, 2], pts[:, 2])
    # One shift for the whole scan, clipped to 3 sigma per axis.
    shifts = []
    for seed in range(1500):
        moved = RandomTranslate(0.1)(scan, np.random.default_rng(seed)).points[:, :3] - pts[:, :3]
        assert np.allclose(moved, moved[0], atol=1e-5)
        shifts.append(moved[0])
    shifts = np.array(shifts)
    assert np.abs(shifts).max() <= 0.3 + 1e-6 and 0.09 < shifts.std() < 0.105
    # Up to 10 % of the points dropped, a different share every draw.
    shares = [1 - len(PointDropout(0.1)(scan, np.random.default_rng(s)).points) / 1000 for s in range(300)]
    assert 0 <= min(shares) < 0.01 and max(shares) < 0.1 and 0.03 < np.mean(shares) < 0.06


def test_real_configs_build_the_release_order() -> None:
    kitti = build_augment(load_config(CONFIGS / "semantickitti" / "sup_only_fidnet.yaml").data.augment)
    assert [type(t) for t in kitti.transforms] == [
        PointDropout,
        RandomFlip,
        RandomScale,
        RandomRotate,
        RandomTranslate,
    ]
    assert kitti.transforms[2] == RandomScale(1.0, 1.05, "up_or_inverse", z=False)
    nusc = build_augment(load_config(CONFIGS / "nuscenes" / "sup_only_fidnet.yaml").data.augment)
    names = [type(t).__name__ for t in nusc.transforms]
    assert names == ["MinDistance", "RandomFlip", "RandomScale", "RandomRotate", "RandomTranslate"]
    assert nusc.transforms[2] == RandomScale(1.0, 1.05, "up_or_reciprocal", z=True)
    assert nusc.transforms[4] == RandomTranslate(0.2)


def test_column_roll_moves_images_and_points_together(synthetic_kitti: Path, kitti) -> None:
    _, index, _ = kitti
    recs = index.split("val")
    plain = _dataset(synthetic_kitti, kitti, recs, with_points=True)
    rolled = _dataset(synthetic_kitti, kitti, recs, with_points=True, roll=True)
    shifts = set()
    for key in range(3):
        a, b = plain[key], rolled[key]
        shift = next(s for s in range(512) if torch.equal(torch.roll(a["input"], -s, -1), b["input"]))
        assert 100 <= shift <= 412
        shifts.add(shift)
        assert torch.equal(torch.roll(a["label"], -shift, -1), b["label"])
        assert torch.equal(torch.roll(a["mask"], -shift, -1), b["mask"])
        held = b["rows"] >= 0
        assert torch.equal(
            b["label"][b["rows"][held], b["cols"][held]], a["label"][a["rows"][held], a["cols"][held]]
        )
    assert len(shifts) == 3


def test_released_input_encoding(
    synthetic_kitti: Path, synthetic_nuscenes: Path, kitti, tmp_path: Path
) -> None:
    _, index, _ = kitti
    recs = index.split("val")[:1]
    item = _dataset(synthetic_kitti, kitti, recs, encoding="released")[0]
    norm = _dataset(synthetic_kitti, kitti, recs)[0]
    mask = item["mask"]
    assert torch.equal(mask, norm["mask"])
    # Raw channels, rebuilt independently: undo the normalisation of the default encoding.
    _, _, stats = kitti
    mean = torch.tensor(stats.mean).view(5, 1)
    std = torch.tensor(stats.std).view(5, 1)
    raw = norm["input"][:5][:, mask] * std + mean
    scale = torch.tensor([80.0, 50.0, 50.0, 3.0, 1.0]).view(5, 1)
    torch.testing.assert_close(item["input"][:5][:, mask], raw / scale, rtol=1e-4, atol=1e-5)
    empty = item["input"][:5][:, ~mask]
    torch.testing.assert_close(empty, (-1.0 / scale).expand_as(empty))
    assert torch.equal(item["input"][5], mask.float())

    cls = DATASETS["synthetic_nuscenes"]
    nindex, nstats, _ = prepare(cls, synthetic_nuscenes, tmp_path, progress=False)
    ds = RangeDataset(
        synthetic_nuscenes, nindex.split("val")[:1], cls.file_format, cls.geometry,
        load_label_map(cls.label_map), nstats, encoding="released",
    )  # fmt: skip
    item = ds[0]
    m = item["mask"]
    x, y = item["input"][1][m], item["input"][2][m]
    torch.testing.assert_close(item["input"][0][m], torch.hypot(x, y))  # the horizontal range, unscaled
    assert (item["input"][:5][:, ~m] == -1).all()
    # x, y, z, intensity as stored: the gather of the raw points.
    from rangecps.data.index import read_scan
    from rangecps.data.sample import project_scan

    scan = read_scan(synthetic_nuscenes, nindex.split("val")[0], cls.file_format, None)
    raw = gather_channels(scan.points, project_scan(scan, cls.geometry))
    np.testing.assert_allclose(item["input"][1:5].numpy()[:, m.numpy()], raw[1:5][:, m.numpy()], rtol=1e-6)
