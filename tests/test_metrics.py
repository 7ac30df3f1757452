"""ConfusionMatrix: hand-computed values, ignore handling, merging, the two mIoU conventions, and agreement
with the official evaluators (nuscenes-devkit itself; semantic-kitti-api re-implemented independently here)."""

from __future__ import annotations

import json
import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from official_kitti import OfficialIouEval

from rangecps.eval.metrics import (
    CONVENTION_NAMES,
    ConfusionMatrix,
    format_table,
    official_convention,
    other_convention,
)

# gt/pred over 4 classes (0 = ignore). Counted pairs (gt != 0): (1,1) (1,2) (2,2) (2,2) (3,0).
GT = np.array([1, 1, 2, 2, 0, 3, 0])
PRED = np.array([1, 2, 2, 2, 1, 0, 3])


def test_hand_computed_example() -> None:
    cm = ConfusionMatrix(4)
    cm.update(GT, PRED)
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[1, 1], expected[1, 2], expected[2, 2], expected[3, 0] = 1, 1, 2, 1
    np.testing.assert_array_equal(cm.matrix, expected)
    assert cm.matrix.dtype == np.int64
    iou = cm.get_per_class_iou()
    # class 1: TP 1, FN 1 -> 1/2; class 2: TP 2, FP 1 -> 2/3; class 3: predicted as ignore -> FN -> 0.
    np.testing.assert_allclose(iou[1:], [0.5, 2 / 3, 0.0])
    assert math.isnan(iou[0])
    for convention in ("semantickitti", "nuscenes"):  # every real class occurs: the conventions agree
        assert cm.get_mean_iou(convention) == pytest.approx((0.5 + 2 / 3 + 0.0) / 3)
    assert cm.get_accuracy() == pytest.approx(3 / 5)
    # frequency-weighted: 2 points of class 1, 2 of class 2, 1 of class 3.
    assert cm.get_freqweighted_iou() == pytest.approx((2 * 0.5 + 2 * 2 / 3 + 0.0) / 5)


def test_absent_class_is_nan_and_counts_by_the_convention() -> None:
    cm = ConfusionMatrix(5)
    cm.update(np.array([1, 1, 2]), np.array([1, 1, 2]))
    iou = cm.get_per_class_iou()
    assert iou[1] == iou[2] == 1.0
    assert math.isnan(iou[3]) and math.isnan(iou[4])
    assert cm.get_mean_iou("nuscenes") == 1.0  # absent classes 3 and 4 left out
    assert cm.get_mean_iou("semantickitti") == pytest.approx(2 / 4)  # absent classes 3 and 4 count 0
    assert cm.get_mean_iou() == cm.get_mean_iou("nuscenes")  # the default, for callers predating the choice
    # A class only predicted (never in gt) is defined: IoU 0, and it counts under both.
    cm.update(np.array([1]), np.array([4]))
    assert cm.get_per_class_iou()[4] == 0.0
    assert cm.get_mean_iou("nuscenes") == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)
    assert cm.get_mean_iou("semantickitti") == pytest.approx((2 / 3 + 1.0 + 0.0 + 0.0) / 4)
    with pytest.raises(ValueError, match="convention must be one of"):
        cm.get_mean_iou("kitti")  # type: ignore[arg-type]


def test_empty_matrix_gives_nan() -> None:
    cm = ConfusionMatrix(3)
    cm.update(np.zeros(5, dtype=np.int64), np.ones(5, dtype=np.int64))  # all ignored
    assert cm.matrix.sum() == 0
    assert math.isnan(cm.get_mean_iou("nuscenes")) and math.isnan(cm.get_mean_iou("semantickitti"))
    assert math.isnan(cm.get_accuracy())
    assert math.isnan(cm.get_freqweighted_iou())


def test_without_ignore_class_every_point_counts() -> None:
    cm = ConfusionMatrix(2, ignore_index=None)
    cm.update(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]))
    np.testing.assert_allclose(cm.get_per_class_iou(), [0.5, 2 / 3])
    assert cm.get_accuracy() == pytest.approx(0.75)


def test_any_shape_and_torch_inputs_count_the_same() -> None:
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 6, size=(2, 3, 50))
    pred = rng.integers(0, 6, size=(2, 3, 50))
    a, b, c = ConfusionMatrix(6), ConfusionMatrix(6), ConfusionMatrix(6)
    a.update(gt, pred)
    b.update(torch.from_numpy(gt), torch.from_numpy(pred).to(torch.int32))
    c.update(torch.from_numpy(gt), pred.astype(np.uint8))
    np.testing.assert_array_equal(a.matrix, b.matrix)
    np.testing.assert_array_equal(a.matrix, c.matrix)
    assert a.matrix.sum() == (gt != 0).sum()


def test_merge_equals_update_on_concatenation() -> None:
    rng = np.random.default_rng(1)
    parts = [(rng.integers(0, 7, size=n), rng.integers(0, 7, size=n)) for n in (10, 0, 300, 45)]
    whole = ConfusionMatrix(7)
    whole.update(np.concatenate([g for g, _ in parts]), np.concatenate([p for _, p in parts]))
    merged = ConfusionMatrix(7)
    for g, p in parts:
        one = ConfusionMatrix(7)
        one.update(g, p)
        merged += one
    np.testing.assert_array_equal(merged.matrix, whole.matrix)
    assert merged.merge(ConfusionMatrix(7)) is merged
    with pytest.raises(ValueError, match="does not match"):
        merged.merge(ConfusionMatrix(8))
    with pytest.raises(ValueError, match="does not match"):
        merged.merge(ConfusionMatrix(7, ignore_index=None))
    merged.reset()
    assert merged.matrix.sum() == 0


def test_bad_updates_are_rejected_and_leave_the_matrix_alone() -> None:
    cm = ConfusionMatrix(4)
    cm.update(GT, PRED)
    before = cm.matrix.copy()
    with pytest.raises(ValueError, match=r"pred holds class ids outside 0\.\.3"):
        cm.update(np.array([1, 2]), np.array([1, 4]))
    with pytest.raises(ValueError, match="gt holds class ids outside"):
        cm.update(np.array([-1, 2]), np.array([1, 1]))
    with pytest.raises(ValueError, match="3 elements but pred has 2"):
        cm.update(np.array([1, 2, 3]), np.array([1, 1]))
    with pytest.raises(ValueError, match="integer"):
        cm.update(np.array([1.0, 2.0]), np.array([1, 1]))
    with pytest.raises(ValueError, match="integer"):
        cm.update(torch.tensor([1, 2]), torch.tensor([0.5, 1.0]))
    np.testing.assert_array_equal(cm.matrix, before)
    with pytest.raises(ValueError, match="ignore_index"):
        ConfusionMatrix(4, ignore_index=4)


def test_agrees_with_nuscenes_devkit() -> None:
    utils = pytest.importorskip("nuscenes.eval.lidarseg.utils", reason="nuscenes-devkit is not installed")
    rng = np.random.default_rng(2)
    k = 17  # nuScenes lidarseg: ignore + 16 classes
    ours, theirs = ConfusionMatrix(k), utils.ConfusionMatrix(k, ignore_idx=0)
    for _ in range(4):
        gt = rng.integers(0, k, size=2000)
        gt[gt == 5] = 6  # class 5 never occurs in gt
        pred = rng.integers(1, k, size=2000)  # the devkit forbids predicting the ignore class
        pred[pred == 9] = 10  # class 9 is never predicted
        ours.update(gt, pred)
        theirs.update(gt, pred)
    np.testing.assert_array_equal(ours.matrix[1:, 1:], theirs.global_cm[1:, 1:])
    np.testing.assert_allclose(
        ours.get_per_class_iou(), theirs.get_per_class_iou(), equal_nan=True, rtol=1e-6
    )
    assert ours.get_mean_iou("nuscenes") == pytest.approx(theirs.get_mean_iou(), rel=1e-6)
    assert ours.get_freqweighted_iou() == pytest.approx(theirs.get_freqweighted_iou(), rel=1e-6)


@pytest.mark.parametrize("absent", [(), (4, 13)], ids=["every-class-occurs", "two-classes-absent"])
def test_agrees_with_semantic_kitti_api(absent: tuple[int, ...]) -> None:
    """SemanticKITTI's 20 train ids (0 = ignore), several batches, predictions of the ignore class included;
    with ``absent``, those classes occur in neither ground truth nor predictions."""
    rng = np.random.default_rng(3)
    k = 20
    official, cm = OfficialIouEval(k, ignore=[0]), ConfusionMatrix(k)
    for _ in range(3):
        gt = rng.integers(0, k, size=5000)
        pred = rng.integers(0, k, size=5000)
        for c in absent:
            gt[gt == c], pred[pred == c] = c + 1, c - 1
        official.add_batch(pred, gt)
        cm.update(gt, pred)
    official_miou, official_iou = official.get_iou()
    present = np.array([c for c in range(1, k) if c not in absent])
    np.testing.assert_allclose(cm.get_per_class_iou()[present], official_iou[present], rtol=1e-12)
    assert np.isnan(cm.get_per_class_iou()[list(absent)]).all() and (official_iou[list(absent)] == 0).all()
    assert cm.get_mean_iou("semantickitti") == pytest.approx(official_miou, rel=1e-12)
    nuscenes_miou = cm.get_mean_iou("nuscenes")
    assert nuscenes_miou == pytest.approx(official_iou[present].mean(), rel=1e-12)
    if absent:  # absent classes pull the official figure down by exactly their share of the 19
        assert cm.get_mean_iou("semantickitti") < nuscenes_miou
        assert cm.get_mean_iou("semantickitti") == pytest.approx(nuscenes_miou * len(present) / (k - 1))
    else:
        assert cm.get_mean_iou("semantickitti") == pytest.approx(nuscenes_miou, rel=1e-12)
    d = cm.to_dict([f"c{c}" for c in range(k)], "semantickitti")
    assert d["miou"] == pytest.approx(official_miou, rel=1e-12)
    assert d["miou_other"] == pytest.approx(nuscenes_miou, rel=1e-12)
    assert [d["iou"][f"c{c}"] for c in absent] == [None] * len(absent)


def test_accuracy_agrees_with_semantic_kitti_api_without_ignore_predictions() -> None:
    # semantic-kitti-api's getacc leaves points predicted as ignore out of its denominator (module docstring);
    # rangecps.eval never predicts the ignore class, and then the two agree.
    rng = np.random.default_rng(4)
    k = 20
    gt = rng.integers(0, k, size=5000)
    pred = rng.integers(1, k, size=5000)
    official, cm = OfficialIouEval(k, ignore=[0]), ConfusionMatrix(k)
    official.add_batch(pred, gt)
    cm.update(gt, pred)
    assert cm.get_accuracy() == pytest.approx(official.get_acc(), rel=1e-12)


def test_official_convention_of_each_dataset() -> None:
    from rangecps.data import DATASETS

    kitti = ("semantickitti", "scribblekitti", "synthetic_kitti", "synthetic_scribblekitti")
    for name in kitti:
        assert official_convention(name) == "semantickitti"
    for name in ("nuscenes", "synthetic_nuscenes"):
        assert official_convention(name) == "nuscenes"
    for name in DATASETS:  # every dataset rangecps knows has one
        official_convention(name)
    with pytest.raises(ValueError, match="no official mIoU convention known for dataset 'cityscapes'"):
        official_convention("cityscapes")
    assert other_convention("semantickitti") == "nuscenes" and other_convention("nuscenes") == "semantickitti"
    assert CONVENTION_NAMES["semantickitti"] == "semantic-kitti-api (absent classes count 0)"
    assert CONVENTION_NAMES["nuscenes"] == "nuscenes-devkit (absent classes excluded)"


def test_to_dict_is_json_ready() -> None:
    cm = ConfusionMatrix(4)
    cm.update(np.array([1, 2]), np.array([1, 2]))
    names = ["unlabeled", "car", "road", "pole"]
    d = cm.to_dict(names, "semantickitti")
    assert d == {
        "miou": pytest.approx(2 / 3),
        "miou_convention": "semantic-kitti-api (absent classes count 0)",
        "miou_other": 1.0,
        "miou_other_convention": "nuscenes-devkit (absent classes excluded)",
        "accuracy": 1.0,
        "freqweighted_iou": 1.0,
        "iou": {"car": 1.0, "road": 1.0, "pole": None},
    }
    n = cm.to_dict(names, "nuscenes")
    assert n["miou"] == 1.0 and n["miou_other"] == pytest.approx(2 / 3)
    assert n["miou_convention"] == "nuscenes-devkit (absent classes excluded)"
    assert json.loads(json.dumps(d)) == d
    with pytest.raises(ValueError, match="3 names for 4 classes"):
        cm.to_dict(["a", "b", "c"], "nuscenes")


def test_format_table() -> None:
    names = ["unlabeled", "car", "traffic-sign"]
    text = format_table(names, np.array([np.nan, 0.5, np.nan]), miou=0.5, accuracy=0.91234, title="val")
    lines = text.splitlines()
    assert lines[0] == "val"
    assert "unlabeled" not in text
    assert any(line.startswith("car") and line.endswith("50.00") for line in lines)
    assert any(line.startswith("traffic-sign") and line.endswith("n/a") for line in lines)
    assert lines[-2].startswith("mIoU") and lines[-2].endswith("50.00")
    assert lines[-1].startswith("accuracy") and lines[-1].endswith("91.23")
    with pytest.raises(ValueError, match="3 names"):
        format_table(names, np.zeros(2))
    # A named mIoU row and further summary rows, between mIoU and accuracy.
    text = format_table(
        names, np.array([np.nan, 0.5, np.nan]), 0.25, 0.9, miou_label="mIoU, semantic-kitti-api",
        extra=[("mIoU, nuscenes-devkit", 0.5)],
    )  # fmt: skip
    assert [line.split("  ")[0] for line in text.splitlines()[-3:]] == [
        "mIoU, semantic-kitti-api",
        "mIoU, nuscenes-devkit",
        "accuracy",
    ]
    assert text.splitlines()[-3].endswith("25.00") and text.splitlines()[-2].endswith("50.00")


def test_all_reduce_without_process_group_is_a_no_op() -> None:
    cm = ConfusionMatrix(3)
    cm.update(np.array([1, 2]), np.array([1, 1]))
    before = cm.matrix.copy()
    cm.all_reduce()
    np.testing.assert_array_equal(cm.matrix, before)


def _reduce_worker(rank: int, world: int, port: int, queue: mp.Queue) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cm = ConfusionMatrix(3)
        cm.update(np.array([1, 2, rank + 1]), np.array([1, 1, 2]))
        cm.all_reduce("cpu")
        queue.put((rank, cm.matrix.tolist()))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs the fork start method")
def test_all_reduce_sums_over_processes() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")  # no re-import of torch in the workers; they only run gloo on CPU
    queue = ctx.Queue()
    procs = [ctx.Process(target=_reduce_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    expected = ConfusionMatrix(3)
    for rank in range(2):
        expected.update(np.array([1, 2, rank + 1]), np.array([1, 1, 2]))
    for rank in range(2):
        np.testing.assert_array_equal(np.array(results[rank]), expected.matrix)
