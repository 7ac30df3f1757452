"""Deploying point models (FRNet): Segmenter labels as rangecps-eval writes, rangecps-infer on an FRNet run, and
the ONNX export (points + coors in, point logits out) checked against PyTorch and run by Segmenter.from_onnx."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_runs import tiny

from rangecps.data.sample import collate
from rangecps.deploy import GeometryWarning, Prediction, Segmenter
from rangecps.deploy.infer import infer_main
from rangecps.eval.evaluate import evaluate
from rangecps.eval.runs import load_run
from rangecps.io import read_kitti_points

pytestmark = pytest.mark.usefixtures("one_thread")

K = 20
GRID = (64, 128)


@pytest.fixture(scope="module")
def frnet_run(synthetic_kitti: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rangecps.train import train

    out = tmp_path_factory.mktemp("frnet_deploy") / "run"
    cfg = tiny(
        synthetic_kitti,
        "model.name=frnet",
        "model.width=0.125",
        "train.method=cps",
        "train.epochs=1",
        "train.max_steps=2",
    )
    train(cfg, out, progress=False)
    return out


def val_files(root: Path) -> list[Path]:
    return sorted((root / "sequences" / "08" / "velodyne").glob("*.bin"))


def test_segmenter_labels_every_point_as_rangecps_eval_writes(
    frnet_run: Path, synthetic_kitti: Path, tmp_path: Path
) -> None:
    evaluate(frnet_run, out=tmp_path / "ev", write_predictions=True, progress=False, num_workers=0)
    seg = Segmenter.from_checkpoint(frnet_run, device="cpu")  # the run's precision, as rangecps-eval
    assert seg.point_model and seg.knn is None and seg.net == "a"
    for path in val_files(synthetic_kitti):
        points = read_kitti_points(path)
        written = np.fromfile(
            tmp_path / "ev" / "sequences" / "08" / "predictions" / f"{path.stem}.label", np.uint32
        )
        got = seg.predict(points, raw_ids=True)
        assert got.shape == (len(points),)
        np.testing.assert_array_equal(got, written & 0xFFFF)
    assert seg.counts.scans == 3 and seg.counts.without_pixel == 0


def test_probabilities_and_points_without_a_pixel(frnet_run: Path, synthetic_kitti: Path) -> None:
    with pytest.warns(UserWarning, match="kNN ignored: a point model"):
        seg = Segmenter.from_checkpoint(frnet_run, device="cpu", knn=True, amp="off")
    assert seg.knn is None
    points = read_kitti_points(val_files(synthetic_kitti)[0])
    bad = np.array([[np.nan, 0, 0, 0], [1, np.inf, 0, 0], [0, 0, 0, 0.5]], np.float32)
    out = seg.predict(np.concatenate([bad[:2], points, bad[2:]]), return_probs=True)
    assert isinstance(out, Prediction) and out.labels.shape == (len(points) + 3,)
    assert out.non_finite == 2 and out.without_pixel == 3
    assert out.probs.shape == (len(points) + 3, K)
    np.testing.assert_allclose(out.probs.sum(1), 1.0, atol=1e-5)
    own = out.labels[2:-1]
    # Each point's own softmax (its argmax may differ from the logits' where two classes round alike).
    assert (own == out.probs[2:-1, 1:].argmax(1) + 1).mean() > 0.9999
    fill = np.bincount(own, minlength=K).argmax()
    assert out.labels[[0, 1, -1]].tolist() == [fill] * 3
    # The same scan in a batch of two gets the same labels (a near-tie aside).
    both = seg.predict([points, points[::2]])
    assert (both[0] == own).mean() > 0.999 and both[1].shape == (len(points[::2]),)


def test_another_sensor_warns_and_still_labels_every_point(frnet_run: Path, synthetic_kitti: Path) -> None:
    seg = Segmenter.from_checkpoint(frnet_run, device="cpu")
    with pytest.warns(GeometryWarning, match="32 rows instead of 64"):
        seg.for_sensor("32,256,3,-25")
    points = read_kitti_points(val_files(synthetic_kitti)[0])
    assert seg.predict(points).shape == (len(points),)


def test_rangecps_infer_with_a_point_model(
    frnet_run: Path, synthetic_kitti: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "preds"
    folder = synthetic_kitti / "sequences" / "08" / "velodyne"
    argv = [str(frnet_run), str(folder), "--out", str(out), "--format", "npy", "--train-ids", "--no-progress"]
    assert infer_main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["point_model"] is True and summary["knn"] is None and summary["scans"] == 3
    seg = Segmenter.from_checkpoint(frnet_run, device="cpu")
    for path in val_files(synthetic_kitti):
        labels = np.load(out / "predictions" / f"{path.stem}.npy")
        np.testing.assert_array_equal(labels, seg.predict(read_kitti_points(path)))


# ------------------------------------------------------------------------------------------------- ONNX


def test_exported_graph_computes_frnet_forward(frnet_run: Path, synthetic_kitti: Path) -> None:
    """ExportedPointNet (FRNet's parts without the input check) is FRNet's forward; an ensemble's labels are
    the argmax of the mean softmax."""
    from rangecps.data.pipeline import ScanPipeline
    from rangecps.deploy.onnx_points import ExportedPointNet

    run = load_run(frnet_run)
    pipeline = ScanPipeline.from_dict(run.state["derived"]["pipeline"])
    points = read_kitti_points(val_files(synthetic_kitti)[0])
    batch = collate([pipeline.sample(points, None, 0, point_inputs=True)])
    nets = [n.float().eval() for n in run.nets]
    with torch.no_grad():
        own = [n(batch["points"], batch["coors"], 1, GRID)["point_logits"] for n in nets]
        exported = ExportedPointNet(nets[:1], GRID)(batch["points"], batch["coors"])
        ens = ExportedPointNet(nets, GRID, "labels")(batch["points"], batch["coors"])
    assert torch.equal(exported, own[0])
    probs = (own[0].softmax(1) + own[1].softmax(1)) / 2
    assert torch.equal(ens, probs[:, 1:].argmax(1) + 1)


class Scatter(torch.nn.Module):
    def __init__(self, reduce: str) -> None:
        super().__init__()
        self.reduce = reduce

    def forward(self, src: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        from rangecps.models.frnet_blocks import scatter_max, scatter_mean

        return (scatter_max if self.reduce == "amax" else scatter_mean)(src, index, 40)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:.*axis name:UserWarning")
@pytest.mark.parametrize("reduce", ["amax", "mean"])
def test_scatter_translation_matches_torch(reduce: str, tmp_path: Path) -> None:
    """The row-scatter translation gives frnet_blocks' scatter_max / scatter_mean exactly: all-negative
    segments keep their maximum, empty segments stay 0, the mean is a mean (onnxscript's own translation
    of the mean keeps one value per segment)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from rangecps.deploy.onnx import OnnxRunner
    from rangecps.deploy.onnx_points import TRANSLATIONS

    g = torch.Generator().manual_seed(0)
    src = torch.randn(300, 3, generator=g) - 2.0  # mostly negative
    index = torch.randint(0, 30, (300,), generator=g)  # segments 30..39 stay empty
    n = torch.export.Dim("n", min=1)
    program = torch.onnx.export(
        Scatter(reduce).eval(), (src, index), dynamo=True, dynamic_shapes=({0: n}, {0: n}),
        custom_translation_table=TRANSLATIONS, input_names=["src", "index"], verbose=False,
    )  # fmt: skip
    # The scatter reads the (P, 1) segment ids, never a (P, C) int64 copy of them (twice the graph's memory).
    assert "Expand" not in {node.op_type for node in program.model_proto.graph.node}
    (tmp_path / "s.onnx").write_bytes(program.model_proto.SerializeToString())
    runner = OnnxRunner(tmp_path / "s.onnx", providers=["CPUExecutionProvider"], intra_op_threads=1)
    for count in (300, 7):
        expected = Scatter(reduce)(src[:count], index[:count]).numpy()
        np.testing.assert_allclose(runner(src[:count], index[:count]), expected, rtol=1e-6, atol=1e-6)
    assert (expected[30:] == 0).all() and (expected[:30] < 0).any()


@pytest.fixture(scope="module")
def exported(frnet_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from rangecps.deploy.export import export_main

    path = tmp_path_factory.mktemp("onnx") / "frnet.onnx"
    assert export_main([str(frnet_run), "--onnx", str(path)]) == 0
    return path


def test_export_writes_a_checked_point_model_and_sidecar(exported: Path, synthetic_kitti: Path) -> None:
    meta = json.loads(exported.with_suffix(".json").read_text())
    assert meta["point_model"] is True and meta["knn"] is None and meta["output"] == "logits"
    i = meta["input"]
    assert i["names"] == ["points", "coors"] and i["batch_size"] == 1 and i["grid"] == list(GRID)
    assert i["points"] == {
        "shape": ["points", 4],
        "dtype": "float32",
        "columns": ["x", "y", "z", "intensity"],
    }
    assert i["coors"]["shape"] == ["points", 3] and i["coors"]["dtype"] == "int64" and "fixed" in i["fixed"]
    assert meta["output_tensor"] == {"name": "logits", "shape": ["points", K]}
    c = meta["check"]
    assert c["unit"] == "points" and c["max_abs_diff"] <= 1e-3 and c["agreement"] >= 0.9999
    assert c["points"] == sum(len(read_kitti_points(p)) for p in val_files(synthetic_kitti))
    # Every scatter_reduce went through the row translation (ScatterND), none through ScatterElements.
    assert {"ScatterND", "Unique"} <= set(meta["export"]["ops"]) and "ScatterElements" not in meta["export"][
        "ops"
    ]
    assert sorted(f.name for f in exported.parent.iterdir()) == ["frnet.json", "frnet.onnx"]


def test_onnx_segmenter_labels_as_the_checkpoint(
    exported: Path, frnet_run: Path, synthetic_kitti: Path
) -> None:
    files = val_files(synthetic_kitti)
    clouds = [read_kitti_points(p) for p in files[:2]]
    reference = Segmenter.from_checkpoint(frnet_run, device="cpu", amp="off").predict(clouds)
    seg = Segmenter.from_onnx(exported)
    assert seg.point_model and seg.knn is None and seg.net == "a"
    got = seg.predict(clouds)  # a batch of two runs scan by scan through the batch-1 graph
    for a, b in zip(got, reference, strict=True):
        assert a.shape == b.shape and (a == b).mean() >= 0.9999
    with pytest.warns(GeometryWarning):
        seg.for_sensor("64,256,3,-25")
    with pytest.raises(ValueError, match="exported for the frustum grid 64x128, got range images of 64x256"):
        seg.predict(clouds[0])


def test_onnx_runner_takes_points_and_coors(exported: Path, frnet_run: Path) -> None:
    from rangecps.deploy.onnx import OnnxRunner

    runner = OnnxRunner(exported, providers=["CPUExecutionProvider"], intra_op_threads=1)
    assert runner.input_names == ["points", "coors"] and runner.output_name == "logits"
    net = load_run(frnet_run).nets[0].float().eval()
    points = torch.tensor([[5.0, 1.0, -1.0, 0.3]])  # one point: the smallest scan
    coors = torch.tensor([[0, 40, 60]])
    with torch.no_grad():
        expected = net(points, coors, 1, GRID)["point_logits"].numpy()
    np.testing.assert_allclose(runner(points, coors), expected, atol=1e-5)
    with pytest.raises(ValueError, match="takes 2 input"):
        runner(points)
    with pytest.raises(ValueError, match="expects input 'points'"):
        runner(torch.zeros(3, 5), torch.zeros(3, 3, dtype=torch.int64))


def test_ensemble_labels_export(frnet_run: Path, synthetic_kitti: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from rangecps.deploy.export import export

    meta = export(frnet_run, tmp_path / "ens.onnx", net="ensemble", labels=True, check_scans=1)
    assert meta["output"] == "labels" and meta["net"] == "ensemble" and "max_abs_diff" not in meta["check"]
    assert meta["output_tensor"]["shape"] == ["points"] and meta["check"]["agreement"] >= 0.9999
    points = read_kitti_points(val_files(synthetic_kitti)[1])
    onnx_labels = Segmenter.from_onnx(tmp_path / "ens.onnx").predict(points)
    torch_labels = Segmenter.from_checkpoint(frnet_run, device="cpu", net="ensemble", amp="off").predict(
        points
    )
    assert (onnx_labels == torch_labels).mean() >= 0.9999
