"""ONNX export of the range-view nets: dynamic batch, agreement with PyTorch and predict_pixels, the sidecar."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")

from rangecps.deploy.onnx import (  # noqa: E402
    MAX_ABS_DIFF,
    MIN_AGREEMENT,
    ExportedNet,
    OnnxRunner,
    check_agreement,
    compare_outputs,
    export_onnx,
    read_sidecar,
    write_sidecar,
)
from rangecps.models import build_model  # noqa: E402

try:  # predict_pixels moved from rangecps.eval.evaluate to rangecps.eval.predict
    from rangecps.eval.predict import predict_pixels
except ImportError:
    from rangecps.eval.evaluate import predict_pixels

# Small enough to export in seconds on a loaded CPU; H = 16 still leaves FIDNet's 1/8 stage 2 rows.
H, W, C, K = 16, 64, 6, 20


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    # Two spinning threads per op slow tiny tensors down on a loaded machine (see conftest.one_thread).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def nets() -> list[torch.nn.Module]:
    return [build_model("fidnet", C, K, 0.125, seed=s) for s in (0, 1)]


@pytest.fixture(scope="module")
def exported(nets: list[torch.nn.Module], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Info of four exports: one net / ensemble, logits (probs) / labels. Nets are in train mode while exported."""
    folder = tmp_path_factory.mktemp("onnx")
    for net in nets:
        net.train()
    infos = {
        "single": export_onnx(nets[:1], folder / "single.onnx", H, W, C),
        "ensemble": export_onnx(nets, folder / "ensemble.onnx", H, W, C),
        "single_labels": export_onnx(nets[:1], folder / "single_labels.onnx", H, W, C, output="labels"),
        "ensemble_labels": export_onnx(nets, folder / "ensemble_labels.onnx", H, W, C, output="labels"),
    }
    # Exporting works on copies: the caller's nets keep their mode (eval below, for the references).
    assert all(net.training for net in nets)
    for net in nets:
        net.eval()
    return infos


def scan(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, C, H, W, generator=torch.Generator().manual_seed(seed))


def run(info: dict, x: torch.Tensor) -> np.ndarray:
    return OnnxRunner(info["path"], providers=["CPUExecutionProvider"], intra_op_threads=1)(x)


def test_export_info_checker_and_atomic_write(exported: dict[str, dict]) -> None:
    info = exported["single"]
    path = Path(info["path"])
    onnx.checker.check_model(str(path), full_check=True)
    assert info["exporter"] == "dynamo" and info["opset"] >= 18
    assert info["input_name"] == "input" and info["output_name"] == "logits"
    assert info["input_shape"] == ["batch", C, H, W] and info["output_shape"] == ["batch", K, H, W]
    assert info["file_bytes"] == path.stat().st_size > 0
    assert exported["ensemble"]["output_name"] == "probs"
    assert exported["single_labels"]["output_shape"] == ["batch", H, W]
    # No temporary files left beside the models; everything in the folder is a finished export.
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(f"{k}.onnx" for k in exported)


@pytest.mark.parametrize("name", ["single", "ensemble", "single_labels"])
def test_batch_axis_is_dynamic(exported: dict[str, dict], name: str) -> None:
    graph = onnx.load(exported[name]["path"]).graph
    (inp,), (out,) = graph.input, graph.output
    in_dims = inp.type.tensor_type.shape.dim
    out_dims = out.type.tensor_type.shape.dim
    assert in_dims[0].dim_param and not in_dims[0].HasField("dim_value")
    assert [d.dim_value for d in in_dims[1:]] == [C, H, W]
    assert out_dims[0].dim_param == in_dims[0].dim_param
    assert [d.dim_value for d in out_dims[-2:]] == [H, W]


@pytest.mark.parametrize("batch", [1, 3])
def test_logits_match_torch(exported: dict[str, dict], nets: list[torch.nn.Module], batch: int) -> None:
    x = scan(batch)
    with torch.no_grad():
        ref = nets[0](x).numpy()
    out = run(exported["single"], x)
    assert out.shape == (batch, K, H, W) and out.dtype == np.float32
    stats = compare_outputs(ref, out, "logits")
    assert stats["max_abs_diff"] < MAX_ABS_DIFF and stats["agreement"] >= MIN_AGREEMENT
    check_agreement(stats)


@pytest.mark.parametrize("batch", [1, 3])
def test_ensemble_probs_match_torch(
    exported: dict[str, dict], nets: list[torch.nn.Module], batch: int
) -> None:
    x = scan(batch, seed=1)
    with torch.no_grad():
        ref = ((nets[0](x).softmax(1) + nets[1](x).softmax(1)) / 2).numpy()
    out = run(exported["ensemble"], x)
    np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-5)
    stats = compare_outputs(ref, out, "probs")
    assert stats["max_abs_diff"] < MAX_ABS_DIFF and stats["agreement"] >= MIN_AGREEMENT
    check_agreement(stats)


@pytest.mark.parametrize("name", ["single_labels", "ensemble_labels"])
@pytest.mark.parametrize("batch", [1, 3])
def test_labels_equal_predict_pixels(
    exported: dict[str, dict], nets: list[torch.nn.Module], name: str, batch: int
) -> None:
    members = nets[:1] if name == "single_labels" else nets
    x = scan(batch, seed=2)
    ref = predict_pixels(members, x, None).numpy()
    out = run(exported[name], x)
    assert out.dtype == np.int64 and out.shape == (batch, H, W)
    assert out.min() >= 1 and out.max() <= K - 1
    np.testing.assert_array_equal(out, ref)
    assert compare_outputs(ref, out, "labels") == {"kind": "labels", "pixels": out.size, "agreement": 1.0}


def test_runner_properties_and_inputs(exported: dict[str, dict]) -> None:
    runner = OnnxRunner(exported["single"]["path"], intra_op_threads=1)
    assert runner.input_name == "input" and runner.output_name == "logits"
    assert runner.providers[-1] == "CPUExecutionProvider"
    assert runner.input_shape[1:] == [C, H, W]
    x = scan(2)
    np.testing.assert_array_equal(runner(x), runner(x.numpy().astype(np.float64)))
    with pytest.raises(ValueError, match=r"expects input"):
        runner(torch.zeros(1, C, H, W + 1))
    with pytest.raises(ValueError, match=r"expects input"):
        runner(torch.zeros(C, H, W))


def test_cenet_exports(tmp_path: Path) -> None:
    net = build_model("cenet", C, K, 0.125, seed=0).eval()
    info = export_onnx([net], tmp_path / "cenet.onnx", H, W, C)
    x = scan(3)
    with torch.no_grad():
        ref = net(x).numpy()
    check_agreement(compare_outputs(ref, run(info, x), "logits"))


def test_torchscript_fallback(tmp_path: Path, nets: list[torch.nn.Module], exported: dict[str, dict]) -> None:
    info = export_onnx(nets[:1], tmp_path / "ts.onnx", H, W, C, exporter="torchscript")
    assert info["exporter"] == "torchscript"
    onnx.checker.check_model(info["path"], full_check=True)
    assert onnx.load(info["path"]).graph.input[0].type.tensor_type.shape.dim[0].dim_param
    x = scan(3)
    with torch.no_grad():
        ref = nets[0](x).numpy()
    check_agreement(compare_outputs(ref, run(info, x), "logits"))


def test_export_refuses_bad_arguments(nets: list[torch.nn.Module], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exporter"):
        export_onnx(nets[:1], tmp_path / "x.onnx", H, W, C, exporter="tflite")
    with pytest.raises(ValueError, match="output"):
        ExportedNet(nets[:1], output="probs")  # one net's logits are not probabilities
    assert ExportedNet(nets, output="probs").output_name == "probs"
    with pytest.raises(ValueError, match="1 net or an ensemble of 2"):
        ExportedNet([*nets, nets[0]])
    with pytest.raises(ValueError, match="number of classes"):
        ExportedNet([nets[0], build_model("fidnet", C, K - 1, 0.125)])
    assert not (tmp_path / "x.onnx").exists()


def test_compare_outputs_figures() -> None:
    ref = np.zeros((2, 4, 3, 5), dtype=np.float32)
    ref[:, 2] = 1.0  # every pixel is class 2
    out = ref.copy()
    out[0, 3, 1, 1] = 2.0  # one pixel flips to class 3
    out[1, 0, 0, 0] = 5.0  # the ignore class never counts as a prediction
    stats = compare_outputs(ref, out, "logits")
    assert stats["max_abs_diff"] == 5.0 and stats["max_abs_torch"] == 1.0
    assert stats["pixels"] == 30 and stats["agreement"] == pytest.approx(29 / 30)
    with pytest.raises(ValueError, match="shapes differ"):
        compare_outputs(ref, out[:1], "logits")
    with pytest.raises(ValueError, match="kind"):
        compare_outputs(ref, out, "scores")


@pytest.mark.parametrize(
    "stats",
    [
        {"kind": "logits", "max_abs_diff": 2e-3, "agreement": 1.0, "pixels": 10},
        {"kind": "logits", "max_abs_diff": 1e-5, "agreement": 0.9998, "pixels": 10},
        {"kind": "probs", "max_abs_diff": float("nan"), "agreement": 1.0, "pixels": 10},
        {"kind": "labels", "agreement": 0.5, "pixels": 10},
    ],
)
def test_check_agreement_raises(stats: dict) -> None:
    with pytest.raises(ValueError, match=r"disagrees with PyTorch: .*agreement") as info:
        check_agreement(stats)
    assert "\n" not in str(info.value)


def test_check_agreement_passes_at_the_limits() -> None:
    check_agreement({"kind": "logits", "max_abs_diff": MAX_ABS_DIFF, "agreement": MIN_AGREEMENT})
    check_agreement({"kind": "labels", "agreement": 1.0})
    check_agreement({"kind": "logits", "max_abs_diff": 4e-3, "agreement": 1.0}, max_abs_diff=5e-3)


def test_sidecar_round_trip(tmp_path: Path) -> None:
    model = tmp_path / "out.onnx"
    meta = {
        "height": 64,
        "mean": np.array([12.1, 10.9, 0.2, -1.0, 0.3, 0.0], dtype=np.float32),
        "class_names": ["unlabeled", "car"],
        "knn": {"k": np.int64(5), "search": 5},
    }
    path = write_sidecar(model, meta)
    assert path == tmp_path / "out.json" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    back = read_sidecar(model)
    assert back["format"] == "rangecps-onnx-sidecar" and back["version"] == 1
    assert back["knn"] == {"k": 5, "search": 5} and back["class_names"] == ["unlabeled", "car"]
    np.testing.assert_allclose(back["mean"], meta["mean"], rtol=1e-6)
    assert list(json.loads(path.read_text())) == sorted(back)


def test_sidecar_refusals(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    with pytest.raises(FileNotFoundError, match=r"m\.json"):
        read_sidecar(model)
    sidecar = tmp_path / "m.json"
    for text, pattern in [
        ('{"format": "something-else", "version": 1}', "not a rangecps-onnx-sidecar"),
        ("[1, 2]", "not a rangecps-onnx-sidecar"),
        ('{"format": "rangecps-onnx-sidecar", "version": 2}', "version 2"),
        ("{not json", "not a valid JSON"),
        ('{"format": "rangecps-onnx-sidecar", "version": 1, "x": NaN}', "not a valid JSON"),
    ]:
        sidecar.write_text(text)
        with pytest.raises(ValueError, match=pattern) as info:
            read_sidecar(model)
        assert str(sidecar) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match="may not set"):
        write_sidecar(model, {"format": "mine"})
    with pytest.raises(ValueError):
        write_sidecar(model, {"std": float("nan")})
