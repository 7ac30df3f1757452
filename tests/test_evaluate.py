"""rangecps-eval: its mIoU agrees with the official evaluators on the files it writes, and it fails clearly.

SemanticKITTI-format runs are checked against an independent numpy re-implementation of semantic-kitti-api's
``evaluate_semantics.py`` + ``auxiliary/np_ioueval.py`` (written here, sharing no code with rangecps) on the
written ``.label`` files; nuScenes-format runs against the real nuscenes-devkit ``LidarSegEval``.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from official_kitti import OfficialIouEval

from rangecps.checkpoint import save_checkpoint
from rangecps.cli import eval_main
from rangecps.config import load_config, to_dict
from rangecps.data.build import build_data
from rangecps.data.sample import CHANNELS, collate
from rangecps.eval.evaluate import LEVELS, evaluate
from rangecps.eval.runs import choose_net
from rangecps.models import build_model

KITTI_YAML = Path(__file__).resolve().parents[1] / "configs" / "labels" / "semantickitti.yaml"
SMALL = ["data.width=96", "model.width=0.125", "data.num_workers=0"]


def make_run(
    run_dir: Path, root: Path, dataset: str, num_nets: int, *extra: str, never_predict_absent: bool = False
) -> Path:
    """A run folder whose best.pt has the train.py layout: ``num_nets`` small FIDNets with random weights and
    batch-norm statistics measured on two training scans (so that predictions vary across classes).

    ``never_predict_absent``: the classes that no validation point has are never predicted either (their
    output bias lowered by 1e4), so that they are absent from ground truth AND predictions, the case where the
    two mIoU conventions differ."""
    method = "cps" if num_nets == 2 else "sup_only"
    cfg = load_config(
        None, [f"data.root={root}", f"data.dataset={dataset}", f"train.method={method}", *SMALL, *extra]
    )
    data = build_data(cfg, progress=False)
    train_set = data.dataset("train")
    x = collate([train_set[i] for i in range(2)])["input"]
    seen = np.zeros(data.num_classes, dtype=bool)  # classes some validation point has
    if never_predict_absent:
        val = data.dataset("val")
        for i in range(len(val)):
            seen[val[i]["point_label"].numpy()] = True
    nets = []
    for k in range(num_nets):
        net = build_model(cfg.model.name, len(CHANNELS), data.num_classes, cfg.model.width, seed=k)
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None  # cumulative average: the statistics of exactly these scans
        with torch.no_grad():
            net.train()(x)
        weights = net.state_dict()
        if never_predict_absent:  # the last bias with one entry per class is the output layer's
            out = [n for n, v in weights.items() if n.endswith(".bias") and v.shape == (data.num_classes,)]
            weights[out[-1]][torch.from_numpy(~seen)] -= 1e4
        nets.append(weights)
    derived = {
        "num_classes": data.num_classes,
        "in_channels": len(CHANNELS),
        "height": data.geometry.height,
        "width": data.geometry.width,
        "revision": "test-revision",
    }
    state = {
        "nets": nets,
        "config": to_dict(cfg),
        "derived": derived,
        "step": 7,
        "best": 0.0,
        "revision": "test-revision",
        "label_names": list(data.label_map.names),
    }
    save_checkpoint(run_dir / "best.pt", state)
    return run_dir


@pytest.fixture(scope="module")
def kitti_run(synthetic_kitti: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(
        tmp_path_factory.mktemp("kitti_run"), synthetic_kitti, "synthetic_kitti", 2, "data.height=32",
        never_predict_absent=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def nuscenes_run(synthetic_nuscenes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(
        tmp_path_factory.mktemp("nusc_run"),
        synthetic_nuscenes,
        "synthetic_nuscenes",
        1,
        never_predict_absent=True,
    )


def official_kitti_scores(gt_dir: Path, pred_dir: Path) -> tuple[float, np.ndarray, np.ndarray, float]:
    """mIoU, IoU per included class, union per included class and accuracy as semantic-kitti-api's
    evaluate_semantics.py computes them from raw ``.label`` files (both remapped by ``learning_map``)."""
    doc = yaml.safe_load(KITTI_YAML.read_text())
    remap = doc["learning_map"]
    lut = np.zeros(max(remap) + 100, dtype=np.int32)
    lut[list(remap)] = list(remap.values())
    n = len(doc["learning_map_inv"])
    ignore = [c for c, flag in doc["learning_ignore"].items() if flag]
    evaluator = OfficialIouEval(n, ignore)
    gt_files = sorted(gt_dir.glob("*.label"))
    pred_files = sorted(pred_dir.glob("*.label"))
    assert [f.name for f in gt_files] == [f.name for f in pred_files]
    for gt_file, pred_file in zip(gt_files, pred_files, strict=True):
        gt = lut[np.fromfile(gt_file, dtype=np.int32) & 0xFFFF]
        pred = lut[np.fromfile(pred_file, dtype=np.int32) & 0xFFFF]
        evaluator.add_batch(pred, gt)
    miou, iou = evaluator.get_iou()
    tp, fp, fn = evaluator.get_stats()
    union = (tp + fp + fn)[evaluator.include]
    return miou, iou[evaluator.include], union, evaluator.get_acc()


def test_kitti_eval_matches_official_evaluator(
    kitti_run: Path, synthetic_kitti: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert eval_main([str(kitti_run), "--submission", "--num-workers", "0", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for description in LEVELS.values():
        assert description in printed
    assert "vegetation" in printed and "mIoU" in printed
    # A CPS run is scored with net a by default, and the report says so.
    assert "(3 scans, net a)" in printed and "mIoU by level (net a)" in printed
    out = kitti_run / "eval_val_a"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["net"] == "a" and metrics["nets_in_checkpoint"] == 2
    assert metrics["checkpoint"] == str(kitti_run / "best.pt") and metrics["step"] == 7
    assert metrics["revision"] == "test-revision" and metrics["split"] == "val" and metrics["scans"] == 3
    assert metrics["knn"] == {"enabled": True, "knn": 5, "search": 5, "sigma": 1.0, "cutoff": 1.0}
    assert metrics["headline"] == "point_knn" and set(metrics["levels"]) == set(LEVELS)
    assert metrics["miou_convention"] == "semantickitti"

    official_miou, iou, union, accuracy = official_kitti_scores(
        synthetic_kitti / "sequences" / "08" / "labels", out / "sequences" / "08" / "predictions"
    )
    ours = metrics["levels"]["point_knn"]
    assert ours["miou_convention"] == "semantic-kitti-api (absent classes count 0)"
    assert ours["miou_other_convention"] == "nuscenes-devkit (absent classes excluded)"
    assert (union > 0).sum() >= 5  # the check below compares many real classes, not one
    assert (union == 0).sum() >= 2  # and classes absent from ground truth and predictions, where rules differ
    for c, name in enumerate(list(ours["iou"])):
        if union[c] == 0:
            assert ours["iou"][name] is None, name
        else:
            assert ours["iou"][name] == pytest.approx(iou[c], abs=1e-12), name
    # The official figure, absent classes counting 0, is the headline; nuScenes' rule gives a higher one.
    assert ours["miou"] == pytest.approx(official_miou, abs=1e-12)
    assert ours["miou_other"] == pytest.approx(iou[union > 0].mean(), abs=1e-12)
    assert ours["miou"] < ours["miou_other"]
    assert ours["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    # The console names both figures: the official one in the table, the other one where they differ.
    assert f"mIoU, semantic-kitti-api {100 * ours['miou']:.2f}" in " ".join(printed.split())
    assert f"mIoU, nuscenes-devkit {100 * ours['miou_other']:.2f}" in " ".join(printed.split())
    assert "counts 0 in the semantic-kitti-api mIoU" in printed
    pixel = np.array(metrics["levels"]["range_pixel"]["confusion_matrix"])
    assert pixel.sum() < ours["counted"]  # occluded points are scored at point level only

    # The zip as semantic-kitti-api's validate_submission.py reads it: explicit directory entries, and
    # file_size / 4 labels per scan.
    import zipfile

    with zipfile.ZipFile(out / "submission.zip") as archive:
        infos = {i.filename: i for i in archive.infolist()}
    assert {"sequences/", "sequences/08/", "sequences/08/predictions/", "description.txt"} <= set(infos)
    for velodyne in sorted((synthetic_kitti / "sequences" / "08" / "velodyne").glob("*.bin")):
        info = infos[f"sequences/08/predictions/{velodyne.stem}.label"]
        assert info.file_size / 4 == velodyne.stat().st_size / 16


def test_no_knn_level_and_batching(kitti_run: Path, synthetic_kitti: Path, tmp_path: Path) -> None:
    """The plain point level matches the official computation too, and batches of 2 give the same counts."""
    one = evaluate(
        kitti_run,
        knn=False,
        net="a",
        out=tmp_path / "one",
        write_predictions=True,
        num_workers=0,
        progress=False,
    )
    assert set(one["levels"]) == {"point", "range_pixel"} and one["headline"] == "point"
    official_miou, iou, union, _ = official_kitti_scores(
        synthetic_kitti / "sequences" / "08" / "labels", tmp_path / "one" / "sequences" / "08" / "predictions"
    )
    assert one["levels"]["point"]["miou"] == pytest.approx(official_miou, abs=1e-12)
    assert one["levels"]["point"]["miou_other"] == pytest.approx(iou[union > 0].mean(), abs=1e-12)
    # Batches of 2 pad the per-point arrays; every scan must still be scored and written with its own points.
    two = evaluate(
        kitti_run, knn=False, net="a", out=tmp_path / "two", write_predictions=True, batch_size=2, num_workers=0,
        progress=False,
    )  # fmt: skip
    for level in ("point", "range_pixel"):
        a = np.array(one["levels"][level]["confusion_matrix"])
        b = np.array(two["levels"][level]["confusion_matrix"])
        assert a.sum() == b.sum() and (a.sum(axis=1) == b.sum(axis=1)).all()  # the same ground truth
        # CPU convolutions round differently at batch size 2 (logits move by ~1e-3), which can flip a near-tie
        # argmax of these random networks; anything beyond that would be a real difference.
        assert np.abs(a - b).sum() <= 1e-3 * a.sum()
    for f in sorted((tmp_path / "one" / "sequences" / "08" / "predictions").glob("*.label")):
        assert (
            tmp_path / "two" / "sequences" / "08" / "predictions" / f.name
        ).stat().st_size == f.stat().st_size


def test_nuscenes_eval_matches_devkit(nuscenes_run: Path, synthetic_nuscenes: Path, tmp_path: Path) -> None:
    from nuscenes.eval.lidarseg.evaluate import LidarSegEval
    from nuscenes.eval.lidarseg.validate_submission import validate_submission
    from nuscenes.nuscenes import NuScenes

    nusc = NuScenes(version="v1.0-mini", dataroot=str(synthetic_nuscenes), verbose=False)
    for knn, level in ((True, "point_knn"), (False, "point")):
        out = tmp_path / level
        result = evaluate(nuscenes_run, knn=knn, out=out, submission=True, num_workers=0, progress=False)
        assert result["net"] == "a" and result["scans"] == 4
        validate_submission(nusc, str(out), "mini_val")  # raises AssertionError on any problem
        labels = np.concatenate(
            [np.fromfile(f, np.uint8) for f in (out / "lidarseg" / "mini_val").glob("*.bin")]
        )
        assert labels.min() >= 1 and labels.max() <= 16 and len(np.unique(labels)) >= 3
        devkit = LidarSegEval(nusc, str(out), "mini_val").evaluate()
        ours = result["levels"][level]
        # nuScenes' official rule is the headline: classes absent from ground truth and predictions excluded.
        assert result["miou_convention"] == "nuscenes"
        assert ours["miou_convention"] == "nuscenes-devkit (absent classes excluded)"
        assert ours["miou"] == pytest.approx(devkit["miou"], abs=1e-6)
        for name, value in ours["iou"].items():
            if value is None:
                assert np.isnan(devkit["iou_per_class"][name]), name
            else:
                assert value == pytest.approx(float(devkit["iou_per_class"][name]), abs=1e-6), name
        # Beside it, semantic-kitti-api's rule: the devkit's per-class IoUs with absent classes as 0.
        devkit_iou = np.array([float(devkit["iou_per_class"][name]) for name in ours["iou"]])
        assert len(devkit_iou) == 16 and np.isnan(devkit_iou).sum() >= 1
        assert ours["miou_other_convention"] == "semantic-kitti-api (absent classes count 0)"
        assert ours["miou_other"] == pytest.approx(np.nan_to_num(devkit_iou).mean(), abs=1e-6)
        assert ours["miou_other"] < ours["miou"]
        assert json.loads((out / "mini_val" / "submission.json").read_text())["meta"]["use_lidar"] is True


def test_test_split_writes_predictions_only(
    synthetic_kitti: Path, kitti_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "kitti"
    for seq in ("00", "08"):  # prep wants a train and a val split
        shutil.copytree(synthetic_kitti / "sequences" / seq, root / "sequences" / seq)
    velodyne = root / "sequences" / "11" / "velodyne"
    velodyne.mkdir(parents=True)
    shutil.copy(synthetic_kitti / "sequences" / "08" / "velodyne" / "000001.bin", velodyne / "000000.bin")
    base = [
        str(kitti_run / "best.pt"),
        "--split",
        "test",
        "--set",
        f"data.root={root}",
        "--num-workers",
        "0",
        "--no-progress",
        "--out",
        str(tmp_path / "out"),
    ]
    assert eval_main(base) == 2
    assert "split 'test' has no labels: pass --write-predictions or --submission" in capsys.readouterr().err
    assert eval_main([*base, "--submission"]) == 0
    assert "1 scans predicted with net a (no labels, no metrics)" in capsys.readouterr().out
    prediction = np.fromfile(
        tmp_path / "out" / "sequences" / "11" / "predictions" / "000000.label", np.uint32
    )
    assert len(prediction) * 16 == (velodyne / "000000.bin").stat().st_size
    raw_ids = set(yaml.safe_load(KITTI_YAML.read_text())["learning_map_inv"].values()) - {0}
    assert set(np.unique(prediction).tolist()) <= raw_ids
    assert not (tmp_path / "out" / "metrics.json").exists()
    assert (tmp_path / "out" / "submission.zip").is_file()


def test_cps_run_is_scored_with_net_a_unless_asked(
    kitti_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Net a by default (one network, as the CPS reference evaluates); b and the ensemble on request. Each
    report and default results folder names the net."""
    ab, mt = ("a", "b"), ("student", "teacher")
    assert (
        choose_net(None, ab, "cps", kitti_run) == "a"
        and choose_net(None, ("a",), "sup_only", kitti_run) == "a"
    )
    assert (
        choose_net("ensemble", ab, "cps", kitti_run) == "ensemble"
        and choose_net("b", ab, "cps", kitti_run) == "b"
    )
    # Mean Teacher and LaserMix runs are scored with the teacher unless asked, as the LaserMix release predicts.
    assert choose_net(None, mt, "lasermix", kitti_run) == "teacher"
    assert choose_net(None, mt, "mean_teacher", kitti_run) == "teacher"
    assert choose_net("student", mt, "mean_teacher", kitti_run) == "student"
    with pytest.raises(ValueError, match="--net takes student, teacher or ensemble"):
        choose_net("b", mt, "lasermix", kitti_run)
    matrices = {}
    for net, title in (("b", "net b"), ("ensemble", "ensemble of nets a and b")):
        args = [str(kitti_run), "--net", net, "--no-knn", "--num-workers", "0", "--no-progress"]
        assert eval_main(args) == 0
        printed = capsys.readouterr().out
        assert f"(3 scans, {title})" in printed and f"mIoU by level ({title})" in printed
        metrics = json.loads((kitti_run / f"eval_val_{net}" / "metrics.json").read_text())
        assert metrics["net"] == net and metrics["out_dir"] == str(kitti_run / f"eval_val_{net}")
        matrices[net] = np.array(metrics["levels"]["point"]["confusion_matrix"])
    default = evaluate(kitti_run, knn=False, out=None, num_workers=0, progress=False)
    assert default["net"] == "a" and default["out_dir"] == str(kitti_run / "eval_val_a")
    matrices["a"] = np.array(default["levels"]["point"]["confusion_matrix"])
    # Three different predictors over the same ground truth.
    assert len({m.sum() for m in matrices.values()}) == 1
    assert not np.array_equal(matrices["a"], matrices["b"])
    assert not np.array_equal(matrices["a"], matrices["ensemble"])


def test_clear_errors(nuscenes_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert eval_main([str(nuscenes_run), "--net", "b", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{nuscenes_run / 'best.pt'}: holds the net(s) a of a sup_only run; --net takes a" in err
    assert eval_main([str(tmp_path / "missing")]) == 2
    assert f"{tmp_path / 'missing'}: no such run folder or checkpoint" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert eval_main([str(tmp_path / "empty")]) == 2
    assert "run folder holds neither best.pt nor last.pt" in capsys.readouterr().err
    assert eval_main([str(nuscenes_run), "--set", f"data.root={tmp_path / 'nowhere'}"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'nowhere'}: dataset root of" in err and "pass --set data.root=PATH" in err
    assert eval_main([str(nuscenes_run), "--set", "eval.knn_kk=3"]) == 2
    assert "unknown key 'eval.knn_kk'" in capsys.readouterr().err


def test_range_image_and_points_without_pixel(synthetic_kitti: Path) -> None:
    from rangecps.data.index import read_scan
    from rangecps.data.sample import project_scan
    from rangecps.eval.predict import point_labels, range_image

    cfg = load_config(None, [f"data.root={synthetic_kitti}", *SMALL])
    data = build_data(cfg, progress=False)
    dataset = data.dataset("val")
    sample = dataset[0]
    proj = project_scan(read_scan(data.root, dataset.records[0], "kitti", None), data.geometry)
    image = range_image(sample["depth"], sample["rows"], sample["cols"], proj.height, proj.width)
    assert torch.equal(image, torch.from_numpy(proj.range))

    # Two points have no pixel: both levels give them the class most occupied pixels predict (3 here).
    pred = torch.tensor([[3, 3, 3, 5, 5, 5], [3, 3, 7, 7, 7, 7]])
    mask = torch.tensor([[1, 1, 1, 0, 0, 1], [1, 0, 0, 0, 0, 1]], dtype=torch.bool)
    rows, cols = torch.tensor([0, -1, 1, -1]), torch.tensor([5, -1, 5, -1])
    depth = torch.tensor([10.0, -1.0, 10.5, -1.0])
    plain, voted = point_labels(
        pred, mask, rows, cols, depth, 8, {"knn": 3, "search": 3, "sigma": 1.0, "cutoff": 1.0}
    )
    assert plain.tolist() == [5, 3, 7, 3]
    assert voted is not None and voted[[1, 3]].tolist() == [3, 3] and voted.min() >= 1


def test_eval_reads_a_train_run_folder(synthetic_kitti: Path, tmp_path: Path) -> None:
    """A run folder written by rangecps.train itself (one step) evaluates: the checkpoint formats agree."""
    from rangecps.train import train

    cfg = load_config(
        None,
        [f"data.root={synthetic_kitti}", *SMALL, "data.height=32", "data.batch_size=1", "train.method=sup_only",
         "train.max_steps=1", "data.labels=50%"],
    )  # fmt: skip
    train(cfg, tmp_path / "run", progress=False)
    assert eval_main([str(tmp_path / "run"), "--no-progress", "--num-workers", "0"]) == 0
    metrics = json.loads((tmp_path / "run" / "eval_val_a" / "metrics.json").read_text())
    assert metrics["step"] == 1 and metrics["checkpoint"] == str(tmp_path / "run" / "best.pt")
    assert set(metrics["levels"]) == set(LEVELS) and metrics["net"] == "a"
    assert all(level["counted"] > 0 for level in metrics["levels"].values())
