"""Typed run configuration: flat YAML files loaded into dataclasses.

A config file holds the sections below; it may name at most one ``base:`` file (a path relative to itself), whose
values it overrides section by section. The base may not have a base of its own: one level, no chains.

Every key is checked: an unknown or misspelled key is a :class:`ConfigError` naming the key and the file (with a
suggestion), every value is checked against the dataclass field's type and then against its allowed range
(:func:`check_config`: batch sizes and intervals >= 1, dropout in [0, 1), thresholds in [0, 1], loss weights >= 0,
lr > 0, ...), all refused keys named in one line. ``--set section.key=value`` overrides
go through the same checks. Values that follow from others (the number of classes from the label map, the total
number of steps from the epochs) are not configurable: they are computed where they are needed and written into the
resolved config that every run records (:func:`to_dict`).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from rangecps.config_ranges import range_problems

Dataset = Literal[
    "semantickitti",
    "scribblekitti",
    "nuscenes",
    "synthetic_kitti",
    "synthetic_scribblekitti",
    "synthetic_nuscenes",
]


class ConfigError(ValueError):
    """A config file or override that does not fit the schema. The message names the file and the key."""


@dataclass
class AugmentConfig:
    """Train-time augmentations, applied in this order: minimum distance, drop, flip, scale, rotate, translate,
    point noise (to the points, before projection; the LaserMix release's order), then FRNet's FrustumMix,
    InstanceCopy and RangeInterpolation (the FRNet release's order), then the column roll (to the range image)."""

    min_distance: float = 0.0  # drop points nearer than this (m, horizontal): the nuScenes release's 0.9
    dropout: float = 0.0  # drop a share drawn from U[0, dropout) of the points (the release: 0.1)
    flip: bool = True  # mirror x and y each with probability 1/2 (= one of none, x, y, both)
    # Scale factor: "uniform" draws U(scale[0], scale[1]); "up_or_inverse" draws U(1, scale[1]) and with
    # probability 1/2 uses 1 / scale[1] instead (the KITTI release); "up_or_reciprocal" draws U(1, scale[1]) and
    # with probability 1/2 uses its reciprocal (the nuScenes release).
    scale: tuple[float, float] = (0.95, 1.05)
    scale_mode: Literal["uniform", "up_or_inverse", "up_or_reciprocal"] = "uniform"
    scale_z: bool = True  # scale z as well (the KITTI release scales x and y only)
    rotate: bool = True  # yaw drawn uniformly from a full turn
    translate: float = (
        0.0  # std (m) of one global shift of the scan per axis, clipped at 3 std (release "jitter")
    )
    point_noise: float = 0.0  # std (m) of independent gaussian noise on every point's x, y, z
    roll: bool = False  # roll the range image by a random number of columns in [100, W - 100] (the release)
    # FRNet release (configs/_base_/datasets/*_seg.py; rangecps.data.frnet_augment, wired in
    # rangecps.data.scan_mixing): after the point transforms above, FrustumMix, InstanceCopy, RangeInterpolation.
    # The two mixings draw a fresh scan of the same labeled dataset, put through the point transforms above, and
    # apply to labeled scans only; RangeInterpolation to every training scan. All off by default.
    frustum_mix: float = 0.0  # probability of FrustumMix with a second scan (the release: 1.0)
    # Numbers of vertical bands a vertical FrustumMix draws from (the release: 3, 4, 5, 6); each <= the image height.
    frustum_mix_areas: list[int] = field(default_factory=lambda: [3, 4, 5, 6])
    instance_copy: float = 0.0  # probability of InstanceCopy from a second scan (the release: 1.0)
    # Train ids whose points InstanceCopy appends; empty: the release's list for the dataset's label map
    # (frnet_augment.KITTI_INSTANCE_CLASSES: 11 classes, not car; NUSCENES_INSTANCE_CLASSES: the 10 things).
    instance_classes: list[int] = field(default_factory=list)
    # Fill one-pixel horizontal gaps of the dataset's native range image (64x2048 KITTI, 32x1920 nuScenes, as the
    # release; not data.height/width, which size the network's image) with interpolated points.
    range_interpolation: bool = False
    # (fov_up, fov_down) in degrees of the spherical images FrustumMix and RangeInterpolation bin points in; null:
    # the range image's (3 / -25 on KITTI, as the release; 10.67 / -30.67 on nuScenes, where the release uses 10 / -30).
    frustum_fov: tuple[float, float] | None = None


@dataclass
class DataConfig:
    dataset: Dataset = "synthetic_kitti"
    root: str = "data/synthetic_kitti"
    # Where rangecps-prep's files live (index, statistics, split lists, cache); None: <root>/rangecps. Set it to a
    # writable folder when the dataset root is read-only.
    prep_dir: str | None = None
    labels: str = (
        "10%"  # labeled share: the published list on real datasets at 1/10/20/50 %, else seeded sampler
    )
    split_seed: int = 0
    batch_size: int = 2  # labeled scans per step and process
    unlabeled_batch_size: int = 2  # unlabeled scans per step and process (CPS methods)
    num_workers: int = 2
    # None: the dataset's native range image (64x2048 KITTI, 32x1920 nuScenes).
    height: int | None = None
    width: int | None = None
    # Input channels (range, x, y, z, intensity, mask). "normalised": (value - mean) / std of the training scans,
    # 0 where empty. "released": the LaserMix release's encoding: KITTI formats range/80, x/50, y/50, z/3,
    # intensity; nuScenes formats raw values with the horizontal range; empty pixels hold -1 before the scaling.
    input: Literal["normalised", "released"] = "normalised"
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ModelConfig:
    name: Literal["fidnet", "cenet", "frnet"] = "fidnet"  # frnet: a point model (rangecps.models)
    width: float = 1.0  # channel multiplier of the backbone (1.0 = 128 channels, the published size)


@dataclass
class LossConfig:
    # "released": the LaserMix range-view release's formulas (CE averaged over all pixels, Dice over the batch,
    # Lovasz over the local batch, its boundary loss); "rangecps": CE and Lovasz over labelled projected pixels,
    # each a mean over scans, and the boundary loss with theta dilation. See rangecps.losses.
    recipe: Literal["released", "rangecps"] = "rangecps"
    ce: float = 1.0
    dice: float = 0.0  # the Dice term of the release's CrossEntropyDiceLoss
    lovasz: float = 3.0
    boundary: float = 0.0
    aux: float = 1.0  # weight of each auxiliary head's loss (CENet; the CENet release's lamda)
    class_weights: bool = True  # CE weights 1 / (frequency + eps) from the training labels
    cps: float = 1.0  # lambda of the cross pseudo supervision term
    cps_threshold: float = 0.0  # pseudo-labels below this confidence are ignored (0 keeps all)


@dataclass
class SemiConfig:
    """The teacher and the mixing of the semi-supervised methods (``mean_teacher``, ``lasermix``,
    ``cps_lasermix``). Defaults: the LaserMix release on SemanticKITTI (configs/lasermix/*semantickitti_10.py)."""

    ema_momentum: float = 0.01  # teacher = (1 - m) teacher + m student after every optimiser step
    consistency: float = 250.0  # weight of the MSE between student and teacher softmax (mmdet.MSELoss weight)
    consistency_rampup: int = 0  # steps of the sigmoid ramp-up exp(-5 (1 - t)^2) of that weight; 0: none
    pseudo_threshold: float = 0.9  # LaserMix targets: pseudo-labels below this softmax confidence are ignored
    mix: float = 1.0  # weight of the supervised loss on the mixed scans (the release's unsup_weight)
    mix_bands: list[int] = field(default_factory=lambda: [4, 5, 6, 7, 8])  # numbers of bands, drawn uniformly
    # Inclination range (deg) the bands split; None: the range image's vertical field of view (fov_down, fov_up).
    mix_pitch: tuple[float, float] | None = None
    # cps, cps_lasermix: "joint" runs each net once on the labeled + unlabeled (+ mixed) scans concatenated;
    # "separate" once per batch, as TorchSemiSeg (the CPS reference) does, so that batch norm in train mode
    # normalises the labeled and the unlabeled scans apart. The losses are the same either way without batch norm.
    cps_forwards: Literal["joint", "separate"] = "joint"


@dataclass
class OptimConfig:
    lr: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    eps: float = 1e-6  # AdamW epsilon (the release's; torch's default is 1e-8)
    pct_start: float = 0.2
    div_factor: float = 25.0
    final_div_factor: float = 100.0
    grad_clip: float = 0.0  # max gradient norm; 0 disables clipping
    # Cycle AdamW's beta1 against the learning rate (0.95 -> 0.85 -> 0.95, torch's OneCycleLR): the LaserMix
    # range-view release does (its trainer.py uses torch's OneCycleLR); FRNet's does not (mmengine's OneCycleLR
    # schedules lr only, so beta1 stays betas[0]).
    cycle_momentum: bool = True


@dataclass
class TrainConfig:
    method: Literal["sup_only", "mean_teacher", "cps", "lasermix", "cps_lasermix"] = "cps"
    epochs: int = 50
    # Epochs per labeled share (keys as data.labels, e.g. "10%"), overriding ``epochs`` for that share.
    epochs_by_labels: dict[str, int] = field(default_factory=dict)
    # Total optimiser steps of an iteration-based schedule (FRNet's release: 50k, 150k on nuScenes); the one-cycle
    # schedule spans them and ``epochs`` is then unused. None: epochs x steps per epoch.
    steps: int | None = None
    max_steps: int | None = (
        None  # stop early (CPU-sized runs); total steps still follow from epochs (or steps) otherwise
    )
    # Micro-batches of data.batch_size (+ unlabeled) scans per optimiser step, their gradients averaged as DDP
    # averages its processes': a one-process stand-in for N processes that is exact but for batch norm, which
    # normalises each micro-batch alone (SyncBN would see them all). Global batch: world x batch x accumulate.
    accumulate: int = 1
    seed: int = 0
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    channels_last: bool = True
    compile: bool = False
    val_every: int = 1000
    log_every: int = 20
    ckpt_every: int = 1000


@dataclass
class EvalConfig:
    knn: bool = True
    knn_k: int = 5
    knn_search: int = 5
    knn_sigma: float = 1.0
    knn_cutoff: float = 1.0
    # Test-time augmentation: the number of views rangecps-eval averages (0: off). Views follow the FRNet
    # release's tta_pipeline: no flip, flip x, flip y, both (cycled), each with a seeded random yaw, scale and
    # translation (rangecps.data.tta). Validation during training never uses it.
    tta: int = 0
    tta_seed: int = 0


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    semi: SemiConfig = field(default_factory=SemiConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def _suggest(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(options)})"


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` converted to ``tp`` where that is lossless (int -> float, list -> tuple), else raise."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads off / on / no / yes as booleans: take the word back
            words = [w for w in (("off", "no", "false") if not value else ("on", "yes", "true")) if w in args]
            value = words[0] if words else value
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} does not fit {tp}")
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(
            _check_type(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_check_type(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {
            _check_type(k, args[0], f"{where} key"): _check_type(v, args[1], f"{where}[{k!r}]")
            for k, v in value.items()
        }
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not (
        isinstance(value, tp) and not (tp is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, values: dict[str, Any], source: str, prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from a nested dict, checking every key and value."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or '<top>'}' must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        where = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{source}: unknown key '{where}'{_suggest(str(key), names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, source, f"{where}.")
        else:
            kwargs[key] = _check_type(value, tp, f"{source}: {where}")
    return cls(**kwargs)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of sections")
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``section.key=value`` into the key path and the YAML-parsed value (``0.01`` -> float, ``true``)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _check_share(value: str, where: str) -> str:
    from rangecps.data.splits import canonical_share  # no import cycle: splits imports no config

    return canonical_share(value, where)


def check_config(cfg: Config, source: str = "<config>", set_keys: Collection[str] = ()) -> Config:
    """Refuse values outside their allowed range, in one line naming every such key and the range; return the
    config with ``data.labels`` and the keys of ``train.epochs_by_labels`` written as percentages (``"10%"``).

    ``source`` names where the values came from; a key in ``set_keys`` came from ``--set``."""

    def origin(key: str) -> str:
        return "--set" if any(key == s or key.startswith(s + ".") for s in set_keys) else source

    problems = [f"{origin(k)}: {k}: {msg}" for k, msg in range_problems(cfg)]
    try:
        labels = _check_share(cfg.data.labels, "data.labels")
    except ValueError as e:
        problems.append(f"{origin('data.labels')}: {e}")
        labels = cfg.data.labels
    by_labels = {}
    for share, epochs in cfg.train.epochs_by_labels.items():
        try:
            by_labels[_check_share(share, "train.epochs_by_labels key")] = epochs
        except ValueError as e:
            problems.append(f"{origin('train.epochs_by_labels')}: {e}")
    if problems:
        raise ConfigError("; ".join(problems))
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, labels=labels),
        train=dataclasses.replace(cfg.train, epochs_by_labels=by_labels),
    )


def load_config(path: str | os.PathLike | None = None, overrides: list[str] = ()) -> Config:
    """Load ``path`` (and its one ``base:``), apply ``--set`` overrides, and return the checked :class:`Config`.

    ``path`` None gives the defaults. Errors name the file (``--set`` for overrides) and the offending key.
    """
    values: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        source = str(path)
        values = _read_yaml(path)
        base = values.pop("base", None)
        if base is not None:
            base_path = (path.parent / str(base)).resolve()
            base_values = _read_yaml(base_path)
            if "base" in base_values:
                raise ConfigError(
                    f"{base_path}: a base config may not name a base of its own (one level only)"
                )
            _build(Config, base_values, str(base_path))
            values = _merge(base_values, values)
    config = _build(Config, values, source)
    for text in overrides:
        keys, value = parse_override(text)
        nested: Any = value
        for key in reversed(keys):
            nested = {key: nested}
        config = _build(Config, _merge(to_dict(config), nested), "--set")
    set_keys = {".".join(parse_override(text)[0]) for text in overrides}
    return check_config(config, source, set_keys)


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain YAML-able data (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))


def from_dict(values: dict[str, Any], source: str = "<checkpoint>") -> Config:
    """Rebuild a :class:`Config` from :func:`to_dict` output (e.g. the copy saved in a checkpoint)."""
    return check_config(_build(Config, values, source), source)


def dump_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False)
