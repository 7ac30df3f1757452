"""The models and scans of ``bench_infer.py`` (and ``gpu_check.py``): the benchmark's sizes, the validation scans
of the synthetic dataset through the ``configs/synthetic`` pipeline, nets with seeded random weights whose
batch-norm statistics are measured on those scans (so their predictions look like a trained net's), and their ONNX
exports. Kept apart so that the timing code reads on its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rangecps.config import load_config
from rangecps.data.build import build_data
from rangecps.data.pipeline import ScanPipeline
from rangecps.data.sample import CHANNELS, collate
from rangecps.eval.predict import knn_settings
from rangecps.io import read_kitti_points
from rangecps.models import build_model, is_point_model
from rangecps.models.frnet import POINT_CHANNELS

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "synthetic" / "sup_only_fidnet.yaml"
DEFAULT_ROOT = REPO / "data" / "synthetic_kitti"
NUM_CLASSES = 20


@dataclass(frozen=True)
class Size:
    model_width: float
    height: int
    width_px: int
    model: str = "fidnet"  # "fidnet" (image model, kNN) or "frnet" (point model, no kNN)

    @property
    def points(self) -> bool:
        """A point model: it takes the points and predicts each itself."""
        return is_point_model(self.model)

    def describe(self) -> str:
        name = {"fidnet": "FIDNet", "frnet": "FRNet"}.get(self.model, self.model)
        return f"{name} width {self.model_width}, {self.height}x{self.width_px}"


SIZES = {
    "small": Size(0.125, 64, 512),
    "published": Size(1.0, 64, 2048),
    "frnet-small": Size(0.25, 64, 512, "frnet"),  # the CPU-sized FRNet
    "frnet-released": Size(1.0, 64, 512, "frnet"),  # the release's FRNet on SemanticKITTI's 64x512 grid
}


def load_scans(width_px: int, root: Path = DEFAULT_ROOT) -> tuple[ScanPipeline, list[Path], dict | None]:
    """The pipeline of ``configs/synthetic/sup_only_fidnet.yaml`` at ``width_px`` columns, the validation scans'
    files and the config's kNN settings (None when ``eval.knn`` is off). Makes the dataset on first use."""
    cfg = load_config(CONFIG, [f"data.root={Path(root).resolve()}", f"data.width={width_px}"])
    data = build_data(cfg, progress=False)
    pipeline = ScanPipeline.from_bundle(data)
    if pipeline.num_classes != NUM_CLASSES:
        raise ValueError(f"{root}: {pipeline.num_classes} classes, the benchmark's nets have {NUM_CLASSES}")
    paths = [data.root / r.points for r in data.index.split("val")]
    if not paths:
        raise ValueError(f"{root}: no validation scans")
    return pipeline, paths, knn_settings(cfg.eval) if cfg.eval.knn else None


def build_net(size: Size, weights: Path | None = None) -> nn.Module:
    """The benchmark's net at ``size`` (FIDNet or FRNet), seeded random weights (or ``weights``, a state dict
    saved by :func:`prepare_models`), in eval mode on the CPU."""
    in_channels = len(POINT_CHANNELS) if size.points else len(CHANNELS)  # FRNet: x, y, z, intensity
    net = build_model(size.model, in_channels, NUM_CLASSES, size.model_width, seed=0)
    if weights is not None:
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return net.eval()


def scan_inputs(pipeline: ScanPipeline, paths: list[Path]) -> torch.Tensor:
    """``(B, C, H, W)`` network inputs of the scans at ``paths``."""
    samples = [pipeline.sample(read_kitti_points(p), None, i, p.stem) for i, p in enumerate(paths)]
    return collate(samples)["input"]


def scan_points(pipeline: ScanPipeline, paths: list[Path]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A point model's inputs of each scan at ``paths``: ``(P, 4)`` points with a pixel and their ``(P, 3)``
    coors (batch index 0)."""
    out = []
    for i, p in enumerate(paths):
        batch = collate([pipeline.sample(read_kitti_points(p), None, i, p.stem, point_inputs=True)])
        out.append((batch["points"], batch["coors"]))
    return out


def calibrated_net(
    size: Size,
    inputs: torch.Tensor | list[tuple[torch.Tensor, torch.Tensor]],
    device: str | torch.device = "cpu",
) -> nn.Module:
    """:func:`build_net` with its BatchNorm running statistics measured on ``inputs`` (train-mode forwards, one
    scan at a time, cumulative averages), in eval mode on ``device``. ``inputs``: ``(B, C, H, W)`` images, or for
    a point model :func:`scan_points`' list."""
    net = build_net(size).to(device)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):  # FRNet's point layers have BatchNorm1d too
            m.reset_running_stats()
            m.momentum = None  # the plain average over the calibration scans
    net.train()
    with torch.no_grad():
        for x in inputs:
            if size.points:
                points, coors = x
                net(points.to(device), coors.to(device), 1, (size.height, size.width_px))
            else:
                net(x[None].to(device))
    return net.eval()


def export(net: nn.Module, size: Size, path: Path) -> dict[str, Any]:
    """Export ``net`` at ``size`` to ``path`` (logits); export_onnx's (export_point_onnx's) info plus the wall
    seconds."""
    from rangecps.deploy.onnx import export_onnx
    from rangecps.deploy.onnx_points import export_point_onnx

    start = time.perf_counter()
    if size.points:
        info = export_point_onnx([net], path, (size.height, size.width_px), "logits")
    else:
        info = export_onnx([net], path, size.height, size.width_px, len(CHANNELS), "logits")
    return info | {"wall_seconds": round(time.perf_counter() - start, 2)}


def file_stem(size_name: str) -> str:
    """``fidnet-small``, ``frnet-small``: the model's name and the size's, once."""
    model = SIZES[size_name].model
    return size_name if size_name.startswith(model) else f"{model}-{size_name}"


def prepare_models(
    size_name: str, root: Path, folder: Path, onnx: bool, device: str | torch.device = "cpu"
) -> dict[str, Any]:
    """The benchmark's net at ``size_name``, calibrated on the first validation scan (on ``device``), its weights
    saved as ``folder/fidnet-SIZE.pt`` (``frnet-SIZE.pt``) and, with ``onnx``, exported to ``folder/...onnx``.
    Returns the paths (``weights``, ``onnx``), the calibration seconds and the export's info."""
    size = SIZES[size_name]
    pipeline, paths, _ = load_scans(size.width_px, root)
    start = time.perf_counter()
    inputs = scan_points(pipeline, paths[:1]) if size.points else scan_inputs(pipeline, paths[:1])
    net = calibrated_net(size, inputs, device).cpu()
    stem = file_stem(size_name)
    out: dict[str, Any] = {"weights": Path(folder) / f"{stem}.pt", "onnx": None, "export": None}
    out["calibration_s"] = round(time.perf_counter() - start, 2)
    torch.save(net.state_dict(), out["weights"])
    if onnx:
        out["onnx"] = Path(folder) / f"{stem}.onnx"
        out["export"] = export(net, size, out["onnx"])
    return out
