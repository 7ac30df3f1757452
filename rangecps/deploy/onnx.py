"""Export trained range-view nets to ONNX, run them with ONNX Runtime, and check them against PyTorch.

The exported graph takes the normalised range image ``input``: ``(B, C, H, W) float32`` (C = 6 for our
projection: range, x, y, z, intensity, mask). H and W are fixed at export time and B is dynamic. It gives one output:

- ``logits``: one net's ``(B, K, H, W) float32`` logits;
- ``probs``: an ensemble's (2 nets) mean softmax ``(B, K, H, W) float32``;
- ``labels``: ``(B, H, W) int64`` argmax over classes 1..K-1, plus 1, exactly as
  :func:`rangecps.eval.predict.predict_pixels` (class 0 is the ignore class and is never predicted).

Exporter: ``torch.onnx.export(..., dynamo=True)`` (the ``torch.export`` based one, needs ``onnxscript``). It is
the default and recommended path of torch 2.x, its batch axis comes from a ``torch.export.Dim`` (no tracing of
Python shape checks), and its optimiser folds BatchNorm into the convolutions: for FIDNet and CENet the graph holds
only Conv, LeakyRelu, Resize (bilinear, align_corners), Concat, Add and Shape (plus Softmax / Slice / ArgMax from
:class:`ExportedNet`). Every op of both models exports; nothing needed a workaround. The TorchScript exporter
(``dynamo=False``) still exists in torch 2.13 but is deprecated ("will be removed"), warns while tracing the
models' Python shape checks and leaves Shape/Gather/Cast chains in the graph; ``exporter="torchscript"`` keeps it
as a fallback for a machine without ``onnxscript``.

Point models (FRNet) export through :mod:`rangecps.deploy.onnx_points` (inputs ``points`` (N, 4) float32 and
``coors`` (N, 3) int64, output ``(N, K)``); :class:`OnnxRunner` runs both kinds (``runner(x)`` or
``runner(points, coors)``) and :func:`compare_outputs` compares per-point outputs as it does per-pixel ones.

The sidecar (:func:`write_sidecar`, ``OUT.onnx`` -> ``OUT.json``) carries what a deployment needs beside the
graph: projection geometry, channel order, normalisation mean/std, class names, colours, the inverse label map
(training ids -> dataset ids) and kNN post-processing parameters. Its content is assembled by the caller; this
module only adds ``format``/``version`` and writes and reads it safely.
"""

from __future__ import annotations

import copy
import io
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rangecps.atomic import atomic_write

INPUT_NAME = "input"
OUTPUT_KINDS = ("logits", "probs", "labels")
EXPORTERS = ("dynamo", "torchscript")
# The export is checked against PyTorch with these limits (see check_agreement). float32 kernels differ in
# summation order and BN folding; the difference grows with the logits' scale (~3e-6 relative): ~1e-4 for logits in
# the tens (trained nets), but ~2e-3 for untrained Kaiming-initialised FIDNets at 64 x 512 (|logit| ~800), where
# torch's own float32 result is as far from float64. Pass a looser max_abs_diff to check_agreement for such nets.
MAX_ABS_DIFF = 1e-3
MIN_AGREEMENT = 0.9999
SIDECAR_FORMAT = "rangecps-onnx-sidecar"
SIDECAR_VERSION = 1


class ExportedNet(nn.Module):
    """The graph that gets exported: 1 net, or an ensemble of 2, plus the post-processing named by ``output``
    (``"probs"`` is accepted for an ensemble as a synonym of ``"logits"``).

    ``forward(x)``: ``x`` is ``(B, C, H, W) float32``; returns ``(B, K, H, W) float32`` logits (1 net) or mean
    softmax probabilities (2 nets) for ``output="logits"``, and ``(B, H, W) int64`` labels in 1..K-1 for
    ``output="labels"``. ``output_name`` is the graph's output name: ``logits``, ``probs`` or ``labels``.
    """

    def __init__(self, nets: list[nn.Module], output: str = "logits") -> None:
        super().__init__()
        if not 1 <= len(nets) <= 2:
            raise ValueError(f"ExportedNet wraps 1 net or an ensemble of 2, got {len(nets)}")
        # "probs" names an ensemble's "logits" output by what it holds; one net's logits are never softmaxed.
        if output == "probs" and len(nets) == 2:
            output = "logits"
        if output not in ("logits", "labels"):
            raise ValueError(f"output must be 'logits' or 'labels' ('probs' for 2 nets), got {output!r}")
        classes = {getattr(net, "num_classes", None) for net in nets}
        if len(classes) > 1:
            raise ValueError(f"ensemble nets disagree on the number of classes: {sorted(map(str, classes))}")
        self.nets = nn.ModuleList(nets)
        self.output = output
        self.output_name = "labels" if output == "labels" else ("logits" if len(nets) == 1 else "probs")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [net(x) for net in self.nets]
        # Same arithmetic as predict_pixels, so that labels match it bit for bit on the same scores.
        scores = outputs[0] if len(outputs) == 1 else sum(o.softmax(1) for o in outputs) / len(outputs)
        if self.output == "logits":
            return scores
        return scores[:, 1:].argmax(1) + 1


def write_checked(data: bytes, path: Path) -> int:
    """Check a serialised model with ONNX's full checker, then write it to ``path`` atomically; returns the
    ``ai.onnx`` opset it uses."""
    import onnx

    proto = onnx.load_from_string(data)
    onnx.checker.check_model(proto, full_check=True)
    with atomic_write(path, "wb") as f:
        f.write(data)
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _export_dynamo(model: nn.Module, x: torch.Tensor, output_name: str, opset: int | None) -> bytes:
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        # torch's own pytree deprecation notice, raised inside torch.export; nothing the caller can act on.
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        program = torch.onnx.export(
            model,
            (x,),
            input_names=[INPUT_NAME],
            output_names=[output_name],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=({0: batch},),
            optimize=True,
            verbose=False,
        )
    # Serialised from memory: file-based saving could split weights into external data named after the temporary
    # file, which would dangle after the rename. Our nets are far below protobuf's 2 GB limit.
    return program.model_proto.SerializeToString()


def _export_torchscript(model: nn.Module, x: torch.Tensor, output_name: str, opset: int | None) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # Deprecation and tracer warnings about the models' Python shape checks: H and W are fixed, so the traced
        # branch is the right one for every input the graph accepts.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=[output_name],
            opset_version=opset,
            dynamo=False,
            dynamic_axes={INPUT_NAME: {0: "batch"}, output_name: {0: "batch"}},
        )
    return buffer.getvalue()


def export_onnx(
    nets: list[nn.Module],
    path: str | Path,
    height: int,
    width: int,
    in_channels: int = 6,
    output: str = "logits",
    opset: int | None = None,
    *,
    exporter: str = "dynamo",
) -> dict[str, Any]:
    """Export ``ExportedNet(nets, output)`` for ``(B, in_channels, height, width)`` inputs to ``path``, atomically.

    The nets are copied, so the caller's modules keep their device, dtype and train/eval mode; the copies are
    exported in eval mode, on the CPU, in float32. The batch axis is dynamic, H and W are fixed. The model must
    pass ``onnx.checker.check_model(full_check=True)`` before anything is written; it is written to a temporary
    file beside ``path`` and renamed onto it. ``opset=None`` takes the exporter's default.

    Returns JSON-ready info: path, input/output names and shapes, output kind, opset, exporter, versions, file size
    in bytes and export seconds.
    """
    import onnx

    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    path = Path(path)
    copies = [copy.deepcopy(net).to("cpu", torch.float32).eval() for net in nets]
    model = ExportedNet(copies, output).eval()
    # Batch 2, not 1: torch.export specialises a size-1 example dimension to a constant.
    x = torch.zeros(2, in_channels, height, width, dtype=torch.float32)
    start = time.perf_counter()
    export = _export_dynamo if exporter == "dynamo" else _export_torchscript
    data = export(model, x, model.output_name, opset)
    opset_used = write_checked(data, path)
    seconds = time.perf_counter() - start
    out_shape = ["batch", height, width] if model.output == "labels" else ["batch", -1, height, width]
    num_classes = getattr(copies[0], "num_classes", None)
    if num_classes is not None and model.output != "labels":
        out_shape[1] = int(num_classes)
    return {
        "path": str(path),
        "input_name": INPUT_NAME,
        "input_shape": ["batch", in_channels, height, width],
        "output_name": model.output_name,
        "output_shape": out_shape,
        "num_nets": len(copies),
        "num_classes": num_classes,
        "opset": int(opset_used),
        "exporter": exporter,
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
        "file_bytes": len(data),
        "export_seconds": round(seconds, 3),
    }


class OnnxRunner:
    """An ONNX Runtime session over an exported model.

    ``providers=None`` takes CUDAExecutionProvider when this onnxruntime build offers it, then the CPU.
    ``intra_op_threads`` sets the threads one op may use (None: onnxruntime's default, all cores).
    ``runner(x)`` with ``x`` a ``(B, C, H, W) float32`` array or tensor returns the output as a numpy array; a
    point model's ``runner(points, coors)`` takes ``(N, 4)`` float32 and ``(N, 3)`` int64 (one array per graph
    input, in the graph's order, each converted to the input's dtype).
    """

    def __init__(
        self, path: str | Path, providers: list[str] | None = None, intra_op_threads: int | None = None
    ) -> None:
        import onnxruntime as ort

        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        options = ort.SessionOptions()
        if intra_op_threads is not None:
            options.intra_op_num_threads = intra_op_threads
        self.path = Path(path)
        self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        self._inputs = list(self.session.get_inputs())
        self._input = self._inputs[0]
        (self._output,) = self.session.get_outputs()

    @property
    def input_name(self) -> str:
        return self._input.name

    @property
    def input_names(self) -> list[str]:
        """Every graph input's name: ``["input"]`` for image models, ``["points", "coors"]`` for point models."""
        return [i.name for i in self._inputs]

    @property
    def output_name(self) -> str:
        return self._output.name

    @property
    def input_shape(self) -> list[int | str]:
        """``[batch, C, H, W]``: the batch as its symbolic name, the rest as fixed sizes."""
        return list(self._input.shape)

    @property
    def providers(self) -> list[str]:
        """The providers the session actually uses (a CUDA provider that failed to load is not listed)."""
        return list(self.session.get_providers())

    def __call__(self, *inputs: np.ndarray | torch.Tensor) -> np.ndarray:
        if len(inputs) != len(self._inputs):
            raise ValueError(
                f"{self.path}: takes {len(self._inputs)} input(s) {self.input_names}, got {len(inputs)}"
            )
        feed = {}
        for spec, x in zip(self._inputs, inputs, strict=True):
            if isinstance(x, torch.Tensor):
                x = x.detach().cpu().numpy()
            x = np.ascontiguousarray(x, dtype=np.int64 if spec.type == "tensor(int64)" else np.float32)
            expected = list(spec.shape)
            # Every named (symbolic) axis is dynamic; only the fixed sizes after the first axis are checked.
            fixed_ok = all(
                not isinstance(e, int) or e == s for e, s in zip(expected[1:], x.shape[1:], strict=False)
            )
            if x.ndim != len(expected) or not fixed_ok:
                name = "input" if len(self._inputs) == 1 else f"input {spec.name!r}"
                raise ValueError(f"{self.path}: expects {name} {tuple(expected)}, got {x.shape}")
            feed[spec.name] = x
        return self.session.run([self.output_name], feed)[0]


def _labels(scores: np.ndarray) -> np.ndarray:
    """``(B, K, H, W)`` (or per-point ``(N, K)``) scores -> argmax over classes 1..K-1, plus 1."""
    return scores[:, 1:].argmax(1) + 1


def compare_outputs(
    torch_out: np.ndarray, onnx_out: np.ndarray, kind: str, unit: str = "pixels"
) -> dict[str, Any]:
    """Compare the same output from PyTorch and ONNX Runtime.

    ``kind`` "logits" / "probs": ``(B, K, H, W)`` arrays (a point model's: ``(N, K)``, with ``unit="points"``);
    gives ``max_abs_diff``, ``max_abs_torch`` (the scale that difference is relative to) and ``agreement``, the
    fraction of pixels (points) whose label (argmax over 1..K-1) agrees. "labels": ``(B, H, W)`` (``(N,)``)
    arrays; gives ``agreement`` only. ``stats[unit]`` counts the pixels (points) compared; ``stats["unit"]``
    names the unit when it is not pixels.
    """
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"kind must be one of {OUTPUT_KINDS}, got {kind!r}")
    a, b = np.asarray(torch_out), np.asarray(onnx_out)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: torch {a.shape} vs onnx {b.shape}")
    stats: dict[str, Any] = {"kind": kind}
    if kind == "labels":
        equal = a == b
    else:
        stats["max_abs_diff"] = float(np.abs(a.astype(np.float64) - b).max(initial=0.0))
        stats["max_abs_torch"] = float(np.abs(a).max(initial=0.0))
        equal = _labels(a) == _labels(b)
    if unit != "pixels":  # image models' stats keep their historical keys
        stats["unit"] = unit
    stats[unit] = int(equal.size)
    stats["agreement"] = float(equal.mean()) if equal.size else 1.0
    return stats


def check_agreement(
    stats: dict[str, Any], *, max_abs_diff: float = MAX_ABS_DIFF, min_agreement: float = MIN_AGREEMENT
) -> None:
    """Raise ValueError (one line with the figures) when ``stats`` of :func:`compare_outputs` break the limits:
    ``max_abs_diff`` (logits/probs only) or ``min_agreement``. NaN figures fail."""
    diff = stats.get("max_abs_diff")
    agreement = stats["agreement"]
    unit = stats.get("unit", "pixels")
    # Written as "not (x within limit)" so that NaN fails instead of slipping through a comparison.
    diff_bad = diff is not None and not diff <= max_abs_diff
    if diff_bad or not agreement >= min_agreement:
        shown = f"max abs diff {diff:.3g} (limit {max_abs_diff:g}), " if diff is not None else ""
        raise ValueError(
            f"ONNX {stats.get('kind', 'output')} disagrees with PyTorch: {shown}label agreement "
            f"{agreement:.6f} (minimum {min_agreement}) over {stats.get(unit, '?')} {unit}"
        )


def sidecar_path(onnx_path: str | Path) -> Path:
    """``OUT.onnx`` -> ``OUT.json``."""
    return Path(onnx_path).with_suffix(".json")


def _jsonable(value: Any) -> Any:
    # numpy scalars and arrays (normalisation stats, colour tables) and paths turn up in meta; JSON takes lists.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"sidecar value of type {type(value).__name__} is not JSON serialisable")


def write_sidecar(onnx_path: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``meta`` plus ``format``/``version`` as JSON beside the model (``OUT.json``), atomically, keys sorted.

    Strict JSON (no NaN/Infinity), so that any runtime's parser reads it. Returns the sidecar's path.
    """
    reserved = {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION}
    clash = {k: meta[k] for k in reserved if k in meta and meta[k] != reserved[k]}
    if clash:
        raise ValueError(
            f"sidecar meta may not set {clash}; 'format' and 'version' are added by write_sidecar"
        )
    path = sidecar_path(onnx_path)
    text = json.dumps({**meta, **reserved}, indent=2, sort_keys=True, allow_nan=False, default=_jsonable)
    with atomic_write(path, "w") as f:
        f.write(text + "\n")
    return path


def read_sidecar(onnx_path: str | Path) -> dict[str, Any]:
    """The sidecar of ``onnx_path`` as written by :func:`write_sidecar` (with ``format`` and ``version``).

    Raises FileNotFoundError when it is missing and ValueError when it is not valid JSON, not an object, or not a
    ``rangecps-onnx-sidecar`` of a supported version; each message is one line naming the file.
    """
    path = sidecar_path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no sidecar beside {Path(onnx_path).name}")
    try:
        meta = json.loads(path.read_text(), parse_constant=_refuse_constant)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path}: not a valid JSON sidecar ({str(e).splitlines()[0]})") from e
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{path}: not a {SIDECAR_FORMAT} file (format {found!r})")
    if meta.get("version") != SIDECAR_VERSION:
        raise ValueError(
            f"{path}: sidecar version {meta.get('version')!r}; this code reads {SIDECAR_VERSION}"
        )
    return meta


def _refuse_constant(name: str) -> float:
    # json.loads accepts NaN/Infinity by default; the writer never emits them, so a file holding them was not ours.
    raise ValueError(f"non-standard JSON constant {name}")


__all__ = [
    "MAX_ABS_DIFF",
    "MIN_AGREEMENT",
    "ExportedNet",
    "OnnxRunner",
    "check_agreement",
    "compare_outputs",
    "export_onnx",
    "read_sidecar",
    "sidecar_path",
    "write_sidecar",
]
