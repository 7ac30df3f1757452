"""Export point models (FRNet) to ONNX.

The graph takes one scan: ``points`` ``(N, in_channels) float32`` (x, y, z, intensity as read, unnormalised) and
``coors`` ``(N, 3) int64`` (batch index, which must be 0, then each point's row and col in the range image), for
the points that have a pixel. N is dynamic; the batch size (1) and the frustum grid (H, W) are fixed in the graph,
which the sidecar says (``input.batch_size``, ``input.grid``). For a model trained with RangeInterpolation the
caller feeds the scan's points followed by its interpolated ones (the sidecar's ``preprocessing``) and drops the
latter's outputs: the graph treats every point alike. It gives one output, by ``output``:

- ``logits``: one net's ``(N, K) float32`` point logits;
- ``probs``: an ensemble's (2 nets) mean softmax ``(N, K) float32``;
- ``labels``: ``(N,) int64`` argmax over classes 1..K-1, plus 1, as
  :func:`rangecps.eval.predict_points.point_classes` (class 0 is never predicted).

What the export needed (torch 2.13, ``torch.onnx.export(..., dynamo=True)``, onnxscript 0.7, onnxruntime 1.23);
nothing in ``rangecps.models`` changed:

- ``FRNet.forward`` checks its inputs with Python conditions on tensor values (``coors.amin(0).tolist()``):
  ``torch.export`` cannot guard on data-dependent values and refuses. :class:`ExportedPointNet` calls the
  model's parts (encoder, backbone, head) as ``FRNet.forward`` does, without the check.
- ``scatter_reduce(reduce="mean", include_self=False)`` (the frustum mean of ``FrustumFeatureEncoder``,
  ``rangecps.models.frnet_blocks.scatter_mean``) exports without an error but wrongly: onnxscript's translation
  maps ``mean`` to ``ScatterElements(reduction="none")``, so each pixel keeps one point's value, not the mean
  (logits off by ~0.1 at width 0.125). ONNX has no mean reduction (onnx/onnx#5100) and onnxscript maps it to
  "none" knowingly (microsoft/onnxscript#582), without an error.
- ``scatter_reduce(reduce="amax", include_self=False)`` (``scatter_max``, the max-pooling into pixels) exports
  correctly, as ``ScatterElements`` over every (point, channel) element, but onnxruntime's element-wise
  reductions are slow there: 436 of 640 ms of a 127,000-point scan at width 0.125, 64x128, one thread.

  Both go through :func:`scatter_reduce_rows`, a custom translation of ``aten.scatter_reduce.two``
  (``custom_translation_table``) that scatters whole rows with ``ScatterND`` (``reduction="max"`` after
  setting the touched rows to the lowest float, as ``include_self=False`` wants; the mean as a ``"add"`` sum over
  an ``"add"`` count). It relies on what ``frnet_blocks`` passes: ``dim=0`` and an index that is each row's
  segment id expanded over the columns (``index[:, None].expand_as(src)``), so it scatters by the (P, 1) ids
  that feed the Expand and the (P, C) int64 index is never made (it had doubled the graph's peak memory).
  Same scan: 218 ms, float32 PyTorch 213 ms; outputs within 3e-7. Every other op exports as it is:
  ``torch.unique(return_inverse=True)`` (ONNX ``Unique``), ``index_copy`` (``ScatterND``), the gathers, convs,
  bilinear ``Resize``, HardSwish.

The export is checked against the float32 PyTorch model's own forward (``FRNet.forward``, check included) on real
scans by ``rangecps-export``.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rangecps.deploy.onnx import write_checked
from rangecps.models import FRNet
from rangecps.models.frnet_blocks import pixels_to_points

POINT_INPUTS = ("points", "coors")
EXAMPLE_POINTS = 512  # points of the tracing example; N itself is dynamic


def scatter_reduce_rows(
    self: Any, dim: int, index: Any, src: Any, reduce: str, include_self: bool = True
) -> Any:
    """ONNX translation (onnxscript, traced) of ``aten.scatter_reduce.two`` for row scatters: ``self`` (n, C),
    ``src`` (P, C), ``index`` (P, C) whose columns all equal each row's target row (the (P, 1) ids before its
    Expand are used where the graph has them), ``dim`` 0, as
    ``frnet_blocks.scatter_max`` / ``scatter_mean`` call it. ``amax`` (either ``include_self``) and ``mean``
    (``include_self=False``: untouched rows keep ``self``) are supported; anything else raises."""
    from onnxscript import ir
    from onnxscript import opset18 as op

    if dim != 0:
        raise NotImplementedError(f"scatter_reduce_rows: dim must be 0, got {dim}")
    dtype = src.dtype or self.dtype

    def fill(like: Any, value: float) -> Any:
        return op.ConstantOfShape(op.Shape(like), value=ir.tensor(np.array([value], dtype.numpy())))

    zero, one = op.CastLike(op.Constant(value_float=0.0), src), op.CastLike(op.Constant(value_float=1.0), src)
    # (P, 1) row ids: the input of the index's Expand where the graph has one, so that the (P, C) int64 index is
    # never made (the Expand is left unused and dropped: it doubled the graph's memory); else its first column.
    producer = index.producer() if hasattr(index, "producer") else None
    column = producer.inputs[0].shape if producer is not None and producer.op_type == "Expand" else None
    if column is not None and len(column) == 2 and column[1] == 1:
        rows = producer.inputs[0]
    else:
        rows = op.Slice(
            index, op.Constant(value_ints=[0]), op.Constant(value_ints=[1]), op.Constant(value_ints=[1])
        )
    if reduce == "amax":
        if not include_self:  # touched rows start from the lowest value, so that only src counts there
            self = op.ScatterND(self, rows, fill(src, float(np.finfo(dtype.numpy()).min)), reduction="min")
        return op.ScatterND(self, rows, src, reduction="max")
    if reduce == "mean" and not include_self:
        sums = op.ScatterND(fill(self, 0.0), rows, src, reduction="add")
        counts = op.ScatterND(fill(self, 0.0), rows, fill(src, 1.0), reduction="add")
        return op.Where(op.Greater(counts, zero), op.Div(sums, op.Max(counts, one)), self)
    raise NotImplementedError(f"scatter_reduce_rows: reduce={reduce!r}, include_self={include_self}")


# The translations every point export uses (see the module docstring).
TRANSLATIONS = {torch.ops.aten.scatter_reduce.two: scatter_reduce_rows}


def point_logits(net: FRNet, points: torch.Tensor, coors: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """``net(points, coors, 1, grid)["point_logits"]`` without the input check (data-dependent conditions that
    ``torch.export`` refuses): (P, C), (P, 3) with batch index 0 -> (P, K). The same steps as ``FRNet.forward``."""
    pixels, encoder_points = net.encoder(points, coors, 1, grid)
    maps, backbone_points = net.backbone(pixels, encoder_points[-1], coors)
    sampled = pixels_to_points(maps[0], coors, 1)
    return net.head(sampled, [backbone_points, *encoder_points[-2::-1]])


class ExportedPointNet(nn.Module):
    """The point graph that gets exported: 1 FRNet or an ensemble of 2, on one scan of a fixed grid, plus the
    post-processing named by ``output`` (``"probs"`` is accepted for an ensemble as a synonym of ``"logits"``).

    ``forward(points (N, C) float32, coors (N, 3) int64)`` -> ``(N, K)`` logits (1 net) or mean softmax (2 nets)
    for ``output="logits"``, ``(N,) int64`` labels in 1..K-1 for ``output="labels"``.
    """

    def __init__(self, nets: list[nn.Module], grid: Sequence[int], output: str = "logits") -> None:
        super().__init__()
        if not 1 <= len(nets) <= 2:
            raise ValueError(f"ExportedPointNet wraps 1 net or an ensemble of 2, got {len(nets)}")
        if not all(isinstance(net, FRNet) for net in nets):
            raise ValueError(f"ExportedPointNet exports FRNets, got {[type(n).__name__ for n in nets]}")
        if output == "probs" and len(nets) == 2:
            output = "logits"
        if output not in ("logits", "labels"):
            raise ValueError(f"output must be 'logits' or 'labels' ('probs' for 2 nets), got {output!r}")
        if len({(n.num_classes, n.in_channels) for n in nets}) > 1:  # type: ignore[union-attr]
            raise ValueError("ensemble nets disagree on their classes or input channels")
        self.nets = nn.ModuleList(nets)
        self.grid = (int(grid[0]), int(grid[1]))
        self.output = output
        self.output_name = "labels" if output == "labels" else ("logits" if len(nets) == 1 else "probs")

    def forward(self, points: torch.Tensor, coors: torch.Tensor) -> torch.Tensor:
        outputs = [point_logits(net, points, coors, self.grid) for net in self.nets]  # type: ignore[arg-type]
        # The arithmetic of point_net_forward, so that labels match it on the same scores.
        scores = outputs[0] if len(outputs) == 1 else sum(o.softmax(1) for o in outputs) / len(outputs)
        if self.output == "logits":
            return scores
        return scores[:, 1:].argmax(1) + 1


def example_inputs(
    grid: Sequence[int], in_channels: int, count: int = EXAMPLE_POINTS
) -> tuple[torch.Tensor, ...]:
    """A seeded random scan on ``grid`` to trace with: ``(count, in_channels)`` points, ``(count, 3)`` coors
    (batch 0; several points share pixels, as in real scans)."""
    g = torch.Generator().manual_seed(0)
    h, w = int(grid[0]), int(grid[1])
    coors = torch.stack(
        [
            torch.zeros(count, dtype=torch.int64),
            torch.randint(0, h, (count,), generator=g),
            torch.randint(0, w, (count,), generator=g),
        ],
        1,
    )
    return torch.randn(count, in_channels, generator=g) * 10, coors


def export_point_onnx(
    nets: list[nn.Module],
    path: str | Path,
    grid: Sequence[int],
    output: str = "logits",
    opset: int | None = None,
) -> dict[str, Any]:
    """Export ``ExportedPointNet(nets, grid, output)`` to ``path``, atomically, with the dynamo exporter.

    As :func:`rangecps.deploy.onnx.export_onnx`: the nets are copied (the caller's keep their device, dtype and
    mode) and exported in eval mode, on the CPU, in float32; the model must pass
    ``onnx.checker.check_model(full_check=True)`` before it is written. N is dynamic; batch size 1 and ``grid``
    are fixed. Returns JSON-ready info: path, input/output names and shapes, batch size, grid, output kind,
    opset, exporter, versions, file size in bytes and export seconds.
    """
    import onnx

    path = Path(path)
    copies = [copy.deepcopy(net).to("cpu", torch.float32).eval() for net in nets]
    model = ExportedPointNet(copies, grid, output).eval()
    in_channels, num_classes = copies[0].in_channels, copies[0].num_classes
    example = example_inputs(model.grid, in_channels)
    n = torch.export.Dim("points", min=1)
    start = time.perf_counter()
    with warnings.catch_warnings():
        # torch's pytree deprecation notice and onnxscript's note on an empty attribute list: nothing to act on.
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*Attribute type is ambiguous.*")
        warnings.filterwarnings("ignore", message=".*axis name: points will not be used.*")
        program = torch.onnx.export(
            model,
            example,
            input_names=list(POINT_INPUTS),
            output_names=[model.output_name],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=({0: n}, {0: n}),
            custom_translation_table=TRANSLATIONS,
            optimize=True,
            verbose=False,
        )
    data = program.model_proto.SerializeToString()  # from memory: no external-data files (see export_onnx)
    opset_used = write_checked(data, path)
    seconds = time.perf_counter() - start
    return {
        "path": str(path),
        "input_names": list(POINT_INPUTS),
        "input_shapes": [["points", in_channels], ["points", 3]],
        "input_dtypes": ["float32", "int64"],
        "batch_size": 1,
        "grid": list(model.grid),
        "output_name": model.output_name,
        "output_shape": ["points"] if model.output == "labels" else ["points", num_classes],
        "num_nets": len(copies),
        "num_classes": num_classes,
        "ops": sorted({node.op_type for node in program.model_proto.graph.node}),
        "opset": int(opset_used),
        "exporter": "dynamo",
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
        "file_bytes": len(data),
        "export_seconds": round(seconds, 3),
    }


__all__ = [
    "TRANSLATIONS",
    "ExportedPointNet",
    "example_inputs",
    "export_point_onnx",
    "point_logits",
    "scatter_reduce_rows",
]
