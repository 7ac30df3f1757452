"""``Segmenter``: a trained model as one object that labels bare point clouds.

    seg = Segmenter.from_checkpoint("runs/cps_fidnet-10pct")      # a run folder or a .pt; net as rangecps-eval
    labels = seg.predict(points)                                    # (N, 4) float32 -> (N,) train ids
    out = seg.predict(points, ring=ring, return_probs=True, raw_ids=True)   # Prediction: dataset ids, (N, K)

Projection, encoding, network, AMP and kNN are those of ``rangecps-eval``: the sample comes from the run's
:class:`~rangecps.data.pipeline.ScanPipeline` (stored in the checkpoint) and the labels from
:func:`~rangecps.eval.predict.segment_batch`, the function evaluation calls. ``from_onnx`` runs an exported model
(``rangecps-export``) through onnxruntime with the same interface.

Point models (FRNet) work the same way: the sample then carries the points (``ScanPipeline.sample(...,
point_inputs=True)``), the network labels every point with a pixel itself and
:func:`~rangecps.eval.predict_points.segment_point_batch` gives the labels; there is no kNN (``knn`` is None, and
asking for it warns once and is ignored). ``probs`` are then each point's own softmax. A point model trained with
``data.augment.range_interpolation`` (its pipeline records the image) predicts as ``rangecps-eval`` evaluates it:
each scan is densified by the same RangeInterpolation, the network sees the added points too, and their
predictions are dropped, so the labels and probabilities cover exactly the N points given, in their order
(``counts.interpolated`` counts the added points). Another sensor (:meth:`Segmenter.for_sensor`) changes the
projection only: the interpolation keeps the recorded image.

Test-time augmentation (``tta``: a number of views, :mod:`rangecps.data.tta`) labels each scan from the softmax
averaged over its views, exactly as ``rangecps-eval --tta`` does (:func:`~rangecps.eval.tta.segment_views`);
``from_checkpoint`` takes the run's ``eval.tta`` unless told otherwise, ``from_onnx`` none. It costs one network
pass per view.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rangecps.data.build import eval_interpolation
from rangecps.data.index import Geometry
from rangecps.data.pipeline import ScanPipeline
from rangecps.data.sample import collate
from rangecps.data.tta import View, tta_views
from rangecps.deploy.sensors import geometry_difference, parse_sensor
from rangecps.device import precision
from rangecps.eval.predict import Forward, knn_settings, net_forward, segment_batch
from rangecps.eval.predict_points import (
    PointForward,
    per_scan_forward,
    point_net_forward,
    segment_point_batch,
)
from rangecps.eval.runs import LoadedRun, choose_net, load_run, net_names
from rangecps.eval.tta import segment_views
from rangecps.models import is_point_model


def load_nets(
    path: str | Path, device: torch.device, net: str | None
) -> tuple[LoadedRun, str, list[torch.nn.Module], ScanPipeline]:
    """A checkpoint's run, the chosen net's name (None: the one ``rangecps-eval`` scores), its module(s) in eval
    mode on ``device`` (two for ``ensemble``) and the pipeline stored with it (with the run's evaluation-time
    RangeInterpolation taken from its config when the pipeline predates recording it)."""
    run = load_run(path, (), device)
    names = net_names(run.state)
    chosen = choose_net(net, names, run.cfg.train.method, run.path)
    nets = run.nets if chosen == "ensemble" else [run.nets[names.index(chosen)]]
    if "pipeline" not in run.state["derived"]:
        raise ValueError(
            f"{run.path}: checkpoint predates stored pipelines (geometry, statistics); evaluate it with "
            "rangecps-eval, or retrain with this version"
        )
    stored = run.state["derived"]["pipeline"]
    pipeline = ScanPipeline.from_dict(stored)
    if "interpolation" not in stored:  # none recorded (or stored before pipelines recorded it): the config's
        pipeline = replace(pipeline, interpolation=eval_interpolation(run.cfg))
    return run, chosen, nets, pipeline


class GeometryWarning(UserWarning):
    """The model runs on range images of another sensor than the one it was trained on."""


def _no_knn_note(knn: bool | None, source: str) -> None:
    """Warn (one line) that kNN asked for a point model is ignored."""
    if knn:
        warnings.warn(
            f"{source}: kNN ignored: a point model (FRNet) predicts every point itself",
            UserWarning,
            stacklevel=3,
        )


@dataclass
class Prediction:
    """One scan's result with ``return_probs``: ``labels`` (N,) train ids (or dataset ids with ``raw_ids``),
    ``probs`` (N, K) float32 class probabilities of each point's pixel (a point model: of the point itself),
    ``non_finite`` the points with a NaN or infinite value (labelled with the fallback class), ``without_pixel``
    all points that had no pixel."""

    labels: np.ndarray
    probs: np.ndarray
    non_finite: int
    without_pixel: int


@dataclass
class Counts:
    """What a Segmenter has seen so far."""

    scans: int = 0
    points: int = 0
    non_finite: int = 0
    without_pixel: int = 0
    interpolated: int = 0  # added by a point model's RangeInterpolation: seen by the network, not labelled


@dataclass
class Segmenter:
    """Labels point clouds with a trained network (see the module docstring). Build it with
    :meth:`from_checkpoint` or :meth:`from_onnx`.

    Attributes:
        forward: ``(B, C, H, W)`` normalised images -> ``(B, K, H, W)`` scores on ``device``; for a point model
            a :data:`~rangecps.eval.predict_points.PointForward`, ``(points (P, 4), coors (P, 3), B, (H, W))`` ->
            ``(P, K)`` scores.
        pipeline: geometry, encoding and classes (the geometry may be a sensor's other than the trained one).
        knn: kNN parameters, or None to take each point's pixel class (always None for a point model).
        scores_are_probs: the forward gives probabilities (an ensemble), not logits.
        trained_geometry: the geometry the model was trained on.
        net: the net that runs (``a``, ``teacher``, ``ensemble``, ...).
    """

    forward: Forward
    pipeline: ScanPipeline
    device: torch.device
    knn: dict[str, Any] | None
    scores_are_probs: bool
    trained_geometry: Geometry
    net: str
    source: str
    counts: Counts = field(default_factory=Counts)
    point_model: bool = False  # the net takes points (FRNet): forward is a PointForward, no kNN
    views: tuple[View, ...] = ()  # test-time augmentation views; () for one plain pass

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        net: str | None = None,
        sensor: str | Geometry | None = None,
        knn: bool | None = None,
        amp: str | None = None,
        tta: int | None = None,
    ) -> Segmenter:
        """Load a run folder (its ``best.pt``, else ``last.pt``) or a checkpoint file.

        Args:
            device: default CUDA when available, else CPU.
            net: ``a`` / ``b`` / ``student`` / ``teacher`` / ``ensemble``; None: the net ``rangecps-eval`` scores.
            sensor: a preset name or geometry string (:mod:`rangecps.deploy.sensors`), or a Geometry; None: the
                training geometry. Another geometry than the trained one warns (:class:`GeometryWarning`).
            knn: kNN post-processing (None: the run's ``eval.knn``; a point model never runs it and warns when
                it is asked for).
            amp: ``auto`` / ``bf16`` / ``fp16`` / ``off`` (None: the run's ``train.amp``, as rangecps-eval).
            tta: test-time augmentation views (None: the run's ``eval.tta``, as rangecps-eval; 0: none), drawn
                from the run's ``eval.tta_seed``.
        """
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        run, chosen, nets, pipeline = load_nets(path, device, net)
        cfg = run.cfg
        point_model = is_point_model(cfg.model.name)
        # As rangecps-eval does, so that both label alike (point models train and run without channels_last).
        prec = precision(
            cfg.train.amp if amp is None else amp, cfg.train.channels_last and not point_model, device
        )
        if prec.channels_last:
            for n in nets:
                n.to(memory_format=torch.channels_last)
        if point_model:
            _no_knn_note(knn, str(run.path))
        use_knn = not point_model and (cfg.eval.knn if knn is None else knn)
        seg = cls(
            forward=point_net_forward(nets, prec.amp)
            if point_model
            else net_forward(nets, prec.amp, prec.channels_last),
            pipeline=pipeline,
            device=device,
            knn=knn_settings(cfg.eval) if use_knn else None,
            scores_are_probs=len(nets) > 1,
            trained_geometry=pipeline.geometry,
            net=chosen,
            source=str(run.path),
            point_model=point_model,
            views=tta_views(cfg.eval.tta if tta is None else tta, cfg.eval.tta_seed),
        )
        return seg.for_sensor(sensor) if sensor is not None else seg

    @classmethod
    def from_onnx(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        sensor: str | Geometry | None = None,
        knn: bool | None = None,
        providers: list[str] | None = None,
        tta: int = 0,
        tta_seed: int = 0,
    ) -> Segmenter:
        """Run an exported model (``rangecps-export``) through onnxruntime; the JSON sidecar beside it gives the
        pipeline and kNN parameters. Outputs equal :meth:`from_checkpoint`'s within the export's tolerance.

        A point model's graph takes one scan at a time on the frustum grid it was exported with (the sidecar's
        ``input.grid``): batches run scan by scan, and another sensor's grid is refused when predicting.
        ``tta``: test-time augmentation views drawn from ``tta_seed`` (the sidecar records none)."""
        from rangecps.deploy.onnx import OnnxRunner, read_sidecar

        meta = read_sidecar(path)
        device = torch.device(device or "cpu")
        runner = OnnxRunner(path, providers=providers)
        kind = meta["output"]
        num_classes = len(meta["pipeline"]["class_names"])
        point_model = bool(meta.get("point_model", False))

        def scores(out: np.ndarray, channel_dim: int) -> torch.Tensor:
            t = torch.from_numpy(np.asarray(out)).to(device)
            if kind == "labels":  # argmax-only models: one-hot scores give back the same classes
                return torch.nn.functional.one_hot(t, num_classes).movedim(-1, channel_dim).float()
            return t

        forward: Forward | PointForward
        if point_model:
            graph_grid = tuple(int(v) for v in meta["input"]["grid"])

            def single(points: torch.Tensor, coors: torch.Tensor) -> torch.Tensor:
                return scores(runner(points.float().cpu().numpy(), coors.cpu().numpy()), 1)

            batched = per_scan_forward(single)

            def forward(
                points: torch.Tensor, coors: torch.Tensor, batch_size: int, grid: tuple[int, int]
            ) -> torch.Tensor:
                if tuple(grid) != graph_grid:
                    raise ValueError(
                        f"{path}: exported for the frustum grid {graph_grid[0]}x{graph_grid[1]}, got range images "
                        f"of {grid[0]}x{grid[1]}; export again at that geometry or use Segmenter.from_checkpoint"
                    )
                return batched(points, coors, batch_size, grid)

            _no_knn_note(knn, str(path))
        else:

            def forward(x: torch.Tensor) -> torch.Tensor:
                return scores(runner(x.float().cpu().numpy()), 1)

        pipeline = ScanPipeline.from_dict(meta["pipeline"])
        use_knn = not point_model and (meta["knn"]["enabled"] if knn is None else knn)
        seg = cls(
            forward=forward,
            pipeline=pipeline,
            device=device,
            knn={k: v for k, v in meta["knn"].items() if k != "enabled"} if use_knn else None,
            scores_are_probs=kind != "logits",
            trained_geometry=pipeline.geometry,
            net=meta["net"],
            source=str(path),
            point_model=point_model,
            views=tta_views(tta, tta_seed),
        )
        return seg.for_sensor(sensor) if sensor is not None else seg

    def for_sensor(self, sensor: str | Geometry) -> Segmenter:
        """This model on another sensor's range images; warns how the geometry differs from the trained one."""
        geometry = parse_sensor(sensor) if isinstance(sensor, str) else sensor
        difference = geometry_difference(self.trained_geometry, geometry)
        if difference is not None:
            warnings.warn(difference, GeometryWarning, stacklevel=2)
        self.pipeline = self.pipeline.with_geometry(geometry)
        return self

    @property
    def num_classes(self) -> int:
        return self.pipeline.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.pipeline.class_names

    def predict(
        self,
        points: np.ndarray | list[np.ndarray],
        ring: np.ndarray | list[np.ndarray | None] | None = None,
        return_probs: bool = False,
        raw_ids: bool = False,
    ) -> np.ndarray | Prediction | list[np.ndarray] | list[Prediction]:
        """Label every point of one scan, or of a list of scans run as one batch.

        Args:
            points: ``(N, 4)`` float32 x, y, z, intensity (as the training data stored intensity), or a list.
            ring: ``(N,)`` laser indices (required by ring-row models such as nuScenes ones), or a list.
            return_probs: return :class:`Prediction` with ``(N, K)`` probabilities instead of labels alone.
            raw_ids: dataset ids (SemanticKITTI / nuScenes lidarseg) instead of train ids.

        Returns:
            ``(N,)`` int64 train ids (uint16 / uint8 dataset ids with ``raw_ids``), or :class:`Prediction`; a list
            for a list. Points with non-finite values get the scan's fallback class and are counted (``counts``).
        """
        single = isinstance(points, np.ndarray)
        clouds = [points] if single else list(points)
        rings = [ring] if single else (list(ring) if ring is not None else [None] * len(clouds))
        if len(rings) != len(clouds):
            raise ValueError(f"predict: {len(clouds)} scans but {len(rings)} ring arrays")
        samples = [
            self.pipeline.sample(p, r, i, f"scan {i}", point_inputs=self.point_model, views=self.views)
            for i, (p, r) in enumerate(zip(clouds, rings, strict=True))
        ]
        batch = collate(samples)
        if self.views:
            _, _, scans = segment_views(
                self.forward, batch, self.device, self.num_classes, self.knn, self.point_model,
                self.scores_are_probs, return_probs,
            )  # fmt: skip
            if "point_extra" in batch:
                self.counts.interpolated += int(batch["point_extra"].sum())
        elif self.point_model:
            _, scans = segment_point_batch(
                self.forward, batch, self.device, self.num_classes, return_probs, self.scores_are_probs
            )
            if "point_extra" in batch:  # the interpolated points: their predictions are already dropped
                self.counts.interpolated += int(batch["point_extra"].sum())
        else:
            _, _, scans = segment_batch(
                self.forward, batch, self.device, self.num_classes, self.knn, return_probs,
                self.scores_are_probs,
            )  # fmt: skip
        out: list[Any] = []
        for scan, bad in zip(scans, batch["non_finite"].tolist(), strict=True):
            labels = scan.labels.cpu().numpy()
            labels = self.pipeline.to_raw(labels) if raw_ids else labels
            self.counts.scans += 1
            self.counts.points += len(labels)
            self.counts.non_finite += bad
            self.counts.without_pixel += scan.without_pixel
            if return_probs:
                out.append(Prediction(labels, scan.probs.cpu().numpy(), bad, scan.without_pixel))
            else:
                out.append(labels)
        return out[0] if single else out
