"""The loader benchmark's baseline must really swap the projection: a refactor that moves the call elsewhere would
otherwise time numba against itself and report a ratio of 1 as a finding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bench_modules import load_bench

from rangecps.config import AugmentConfig
from rangecps.data import DATASETS
from rangecps.data.augment import build_augment
from rangecps.data.dataset import RangeDataset
from rangecps.data.prep import prepare
from rangecps.labels import load_label_map

bench = load_bench("bench_loader")


def test_numpy_projection_makes_the_loader_call_the_reference(
    synthetic_kitti: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cls = DATASETS["synthetic_kitti"]
    index, stats, _ = prepare(cls, synthetic_kitti, progress=False, out=tmp_path / "index")
    ds = RangeDataset(synthetic_kitti, index.split("train"), cls.file_format, cls.geometry,
                      load_label_map(cls.label_map), stats, build_augment(AugmentConfig()), seed=0,
                      with_points=False)  # fmt: skip
    calls: list[int] = []
    reference = bench.project_spherical_reference

    def counting(*args, **kwargs):
        calls.append(1)
        return reference(*args, **kwargs)

    monkeypatch.setattr(bench, "project_spherical_reference", counting)
    fast = ds[0]
    assert calls == []
    with bench.numpy_projection():
        slow = ds[0]
    assert calls == [1]
    # the reference is exact, so the baseline loads the very same sample
    for key in ("input", "label", "mask"):
        np.testing.assert_array_equal(slow[key].numpy(), fast[key].numpy())
    ds[0]
    assert calls == [1]  # restored after the block
