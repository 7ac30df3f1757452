"""ConfusionMatrix: hand-computed values, ignore handling, merging, and agreement with the official evaluators."""

from __future__ import annotations

import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rangecps.eval.metrics import ConfusionMatrix, format_table

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
    assert cm.get_mean_iou() == pytest.approx((0.5 + 2 / 3 + 0.0) / 3)
    assert cm.get_accuracy() == pytest.approx(3 / 5)
    # frequency-weighted: 2 points of class 1, 2 of class 2, 1 of class 3.
    assert cm.get_freqweighted_iou() == pytest.approx((2 * 0.5 + 2 * 2 / 3 + 0.0) / 5)


def test_absent_class_is_nan_and_left_out_of_the_mean() -> None:
    cm = ConfusionMatrix(5)
    cm.update(np.array([1, 1, 2]), np.array([1, 1, 2]))
    iou = cm.get_per_class_iou()
    assert iou[1] == iou[2] == 1.0
    assert math.isnan(iou[3]) and math.isnan(iou[4])
    assert cm.get_mean_iou() == 1.0
    # A class only predicted (never in gt) is defined: IoU 0, and it counts.
    cm.update(np.array([1]), np.array([4]))
    assert cm.get_per_class_iou()[4] == 0.0
    assert cm.get_mean_iou() == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)


def test_empty_matrix_gives_nan() -> None:
    cm = ConfusionMatrix(3)
    cm.update(np.zeros(5, dtype=np.int64), np.ones(5, dtype=np.int64))  # all ignored
    assert cm.matrix.sum() == 0
    assert math.isnan(cm.get_mean_iou()) and math.isnan(cm.get_accuracy())
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
    assert ours.get_mean_iou() == pytest.approx(theirs.get_mean_iou(), rel=1e-6)
    assert ours.get_freqweighted_iou() == pytest.approx(theirs.get_freqweighted_iou(), rel=1e-6)


def test_agrees_with_semantic_kitti_rules_when_every_class_occurs() -> None:
    # semantic-kitti-api's iouEval: conf[pred, gt]; the ignore gt column is zeroed; TP/FP/FN per class;
    # union gets +1e-15; mIoU averages the non-ignore classes; accuracy = sum TP / sum (TP + FP) over them.
    rng = np.random.default_rng(3)
    k = 20
    gt = rng.integers(0, k, size=5000)
    pred = rng.integers(0, k, size=5000)  # predictions of the ignore class included
    conf = np.zeros((k, k), dtype=np.int64)
    np.add.at(conf, (pred, gt), 1)
    conf[:, 0] = 0
    tp = np.diag(conf)
    fp = conf.sum(axis=1) - tp
    fn = conf.sum(axis=0) - tp
    sk_iou = tp / (tp + fp + fn + 1e-15)
    cm = ConfusionMatrix(k)
    cm.update(gt, pred)
    np.testing.assert_allclose(cm.get_per_class_iou()[1:], sk_iou[1:], rtol=1e-12)
    assert cm.get_mean_iou() == pytest.approx(sk_iou[1:].mean(), rel=1e-12)
    # Accuracy agrees once no point is predicted as ignore (see the module docstring).
    keep = pred != 0
    cm2 = ConfusionMatrix(k)
    cm2.update(gt[keep], pred[keep])
    conf2 = np.zeros((k, k), dtype=np.int64)
    np.add.at(conf2, (pred[keep], gt[keep]), 1)
    conf2[:, 0] = 0
    tp2 = np.diag(conf2)
    sk_acc = tp2.sum() / (tp2[1:].sum() + (conf2.sum(axis=1) - tp2)[1:].sum() + 1e-15)
    assert cm2.get_accuracy() == pytest.approx(sk_acc, rel=1e-12)


def test_to_dict_is_json_ready() -> None:
    cm = ConfusionMatrix(4)
    cm.update(np.array([1, 2]), np.array([1, 2]))
    d = cm.to_dict(["unlabeled", "car", "road", "pole"])
    assert d["iou"] == {"car": 1.0, "road": 1.0, "pole": None}
    assert d["miou"] == 1.0 and d["accuracy"] == 1.0
    with pytest.raises(ValueError, match="3 names for 4 classes"):
        cm.to_dict(["a", "b", "c"])


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
