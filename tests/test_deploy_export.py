"""rangecps-export: a verified ONNX model and its sidecar; Segmenter.from_onnx labels as the checkpoint does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny_runs import tiny

from rangecps import Segmenter
from rangecps.deploy.export import export_main
from rangecps.io import read_kitti_points
from rangecps.train import train

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def run(synthetic_kitti: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "run"
    train(
        tiny(synthetic_kitti, "train.method=cps", "train.epochs=1", "train.max_steps=2"), out, progress=False
    )
    return out


def test_export_writes_a_checked_model_and_a_sidecar_that_segments_alike(
    run: Path, synthetic_kitti: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx_path = tmp_path / "m" / "fidnet.onnx"
    assert export_main([str(run), "--onnx", str(onnx_path)]) == 0
    printed = capsys.readouterr().out
    assert "label agreement 100.0000 %" in printed and "max abs logits difference" in printed
    meta = json.loads(onnx_path.with_suffix(".json").read_text())
    assert meta["format"] == "rangecps-onnx-sidecar" and meta["net"] == "a" and meta["output"] == "logits"
    assert meta["input"]["channels"] == ["range", "x", "y", "z", "intensity", "mask"]
    assert meta["input"]["shape"][1:] == [6, 64, 128]
    p = meta["pipeline"]
    assert p["geometry"]["height"] == 64 and p["geometry"]["width"] == 128 and not p["geometry"]["rings"]
    assert (
        len(p["encoding"]["offset"]) == 5 and len(p["class_names"]) == 20 and p["train_to_raw"][1] == 10
    )  # car
    assert meta["knn"]["enabled"] and meta["knn"]["knn"] == 5
    assert meta["check"]["max_abs_diff"] <= 1e-3 and meta["check"]["agreement"] >= 0.9999
    assert len(meta["check"]["scans"]) == 3  # the validation scans of the tiny dataset
    assert {f.name for f in onnx_path.parent.iterdir()} == {"fidnet.onnx", "fidnet.json"}  # no staging left

    points = read_kitti_points(sorted((synthetic_kitti / "sequences" / "08" / "velodyne").glob("*.bin"))[0])
    # The export is checked against float32 PyTorch; the checkpoint's own precision may be bf16 on this CPU.
    torch_labels = Segmenter.from_checkpoint(run, device="cpu", amp="off").predict(points)
    onnx_seg = Segmenter.from_onnx(onnx_path)
    assert onnx_seg.net == "a"
    agree = (onnx_seg.predict(points) == torch_labels).mean()
    assert agree >= 0.9999


def test_ensemble_labels_export(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ens.onnx"
    assert export_main([str(run), "--onnx", str(out), "--net", "ensemble", "--labels"]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["output"] == "labels" and meta["net"] == "ensemble" and "max_abs_diff" not in meta["check"]
    seg = Segmenter.from_onnx(out, knn=False)
    points = np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32) * [10, 10, 1, 0.1]
    assert seg.predict(points).shape == (300,)


def test_bad_arguments_are_one_line_errors(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert export_main([str(run), "--onnx", str(tmp_path / "model.pt")]) == 2
    assert "must end in .onnx" in capsys.readouterr().err
    assert export_main([str(run), "--onnx", str(tmp_path / "m.onnx"), "--net", "teacher"]) == 2
    assert "--net takes a, b or ensemble" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
