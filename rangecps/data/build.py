"""From a config to datasets: the one place that turns ``data:`` settings into what training and evaluation read."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from rangecps.config import AugmentConfig, Config
from rangecps.data import DATASETS
from rangecps.data.augment import build_augment
from rangecps.data.cache import cache_key, cache_mismatch
from rangecps.data.dataset import InputStats, RangeDataset
from rangecps.data.index import DatasetIndex, Geometry
from rangecps.data.prep import load_prepared, note, prep_dir
from rangecps.data.scan_mixing import SphericalImage, build_mixing, interpolation_image
from rangecps.data.splits import LabeledSplit, make_split
from rangecps.data.tta import View
from rangecps.labels import LabelMap, load_label_map
from rangecps.models import is_point_model

# Synthetic datasets that `rangecps-train` makes on first use, and the simulator format of each.
SYNTHETIC_FORMATS = {
    "synthetic_kitti": "semantickitti",
    "synthetic_scribblekitti": "semantickitti",
    "synthetic_nuscenes": "nuscenes",
}


@dataclass
class DataBundle:
    """Everything a run knows about its data. ``num_classes`` counts the ignore class 0.

    ``split`` (the labeled / unlabeled partition of ``labels`` at ``split_seed``) is made when first asked for:
    training asks, and is refused with a message naming the root when the train or the val split is empty;
    evaluation never asks, so a root that holds only the validation sequence evaluates.
    """

    dataset_cls: type
    root: Path
    index: DatasetIndex
    stats: InputStats
    label_map: LabelMap
    geometry: Geometry
    labels: str = "100%"  # data.labels
    split_seed: int = 0  # data.split_seed
    encoding: str = "normalised"  # data.input
    prep_dir: Path | None = None  # data.prep_dir; None: <root>/rangecps
    # Evaluation-time RangeInterpolation of a point model trained with it (see eval_interpolation); None: none.
    interpolation: SphericalImage | None = None
    _split: LabeledSplit | None = field(default=None, init=False, repr=False)
    _cache_checked: bool = field(default=False, init=False, repr=False)
    _cache_folder: Path | None = field(default=None, init=False, repr=False)

    @property
    def num_classes(self) -> int:
        return self.label_map.num_classes

    def require(self, *splits: str, purpose: str = "training") -> None:
        """Refuse, naming the root, when one of ``splits`` holds no scans."""
        for split in splits:
            if not self.index.splits.get(split):
                needs = " and the ".join(splits)
                raise ValueError(
                    f"{self.root}: no scans in the {split} split ({self.dataset_cls.describe_split(split)}); "
                    f"{purpose} needs the {needs} split"
                )

    @property
    def split(self) -> LabeledSplit:
        """The labeled / unlabeled partition of the training split (training needs train and val scans)."""
        if self._split is None:
            self.require("train", "val")
            self._split = make_split(
                self.dataset_cls.name, self.index.ids("train"), self.labels, self.split_seed
            )
        return self._split

    def records(self, ids: tuple[str, ...] | list[str], split: str = "train") -> list:
        wanted = set(ids)
        return [r for r in self.index.split(split) if r.scan_id in wanted]

    def dataset(
        self,
        split: str,
        ids: tuple[str, ...] | None = None,
        labels: bool = True,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        with_points: bool = True,
        point_inputs: bool = False,
        interpolate: bool = False,
        views: tuple[View, ...] = (),
    ) -> RangeDataset:
        """A :class:`RangeDataset` of ``split`` (restricted to ``ids``), with labels, train-time augmentation and
        per-point arrays when asked. ``point_inputs``: also the points and the batch keys of point-based networks
        (FRNet; see :mod:`rangecps.data.sample`); such a dataset reads the scans, never the range-image cache.
        ``augment``'s FRNet options (:mod:`rangecps.data.scan_mixing`) mix scans of this very dataset (``ids``).
        ``interpolate``: an evaluation dataset of point inputs gets the run's :attr:`interpolation` (nothing when
        the run has none); validation and ``rangecps-eval`` ask for it, training never does. ``views``: the
        test-time augmentation views each sample also carries (:mod:`rangecps.data.tta`)."""
        records = self.records(ids, split) if ids is not None else self.index.split(split)
        native = self.dataset_cls.geometry
        mixing = build_mixing(augment, self.label_map, self.geometry, native) if augment is not None else None
        if interpolate and (not point_inputs or augment is not None):
            raise ValueError("DataBundle.dataset: interpolate is for evaluation datasets of point inputs")
        return RangeDataset(
            self.root,
            records,
            self.dataset_cls.file_format,
            self.geometry,
            self.label_map if labels else None,
            self.stats,
            build_augment(augment) if augment is not None else None,
            seed,
            with_points=with_points,
            cache_dir=None if point_inputs else self.cache_dir(),
            encoding=self.encoding,
            roll=augment is not None and augment.roll,
            point_inputs=point_inputs,
            mixing=mixing,
            interpolation=self.interpolation if interpolate else None,
            views=views,
        )

    def cache_dir(self) -> Path | None:
        """The cached range images of ``rangecps-prep --cache``, when they exist and were made from this run's
        data at its range image (see :func:`rangecps.data.cache.cache_mismatch`); when they exist but were made
        from something else, a note says once why they are not used."""
        if not self._cache_checked:
            self._cache_checked = True
            folder = prep_dir(self.root, self.prep_dir) / "cache"
            if not folder.is_dir():
                return None
            native = self.dataset_cls.geometry
            if self.geometry != native:
                reason = (
                    f"this run's range image {self.geometry.height}x{self.geometry.width} is not the cached "
                    f"{native.height}x{native.width}"
                )
            else:
                reason = cache_mismatch(folder, cache_key(self.dataset_cls, self.root, self.index))
            if reason is not None:
                note(f"{folder}: cached range images not used: {reason}")
            else:
                self._cache_folder = folder
        return self._cache_folder


def resolve_geometry(dataset_cls: type, height: int | None, width: int | None) -> Geometry:
    """The dataset's native range image, with the config's size overrides (CPU-sized runs)."""
    native: Geometry = dataset_cls.geometry
    if native.rings and height not in (None, native.height):
        raise ValueError(
            f"{dataset_cls.name}: rows are rings, so data.height must be {native.height} (got {height})"
        )
    return replace(native, height=height or native.height, width=width or native.width)


def eval_interpolation(cfg: Config) -> SphericalImage | None:
    """The image evaluation interpolates a run's scans on: RangeInterpolation's (the dataset's full-resolution
    range image, ``data.augment.frustum_fov`` when set) for a point model trained with
    ``data.augment.range_interpolation``, as the FRNet release's val and test pipelines apply the step its train
    pipeline applies; None for image models and point models trained without it. Needs no dataset root."""
    if not is_point_model(cfg.model.name) or cfg.data.dataset not in DATASETS:
        return None
    return interpolation_image(cfg.data.augment, DATASETS[cfg.data.dataset].geometry)


def ensure_synthetic(dataset: str, root: Path, progress: bool = True) -> None:
    """Make the default synthetic dataset at ``root`` if it is not there (so one command shows training work).
    When another process is making it at the same time, wait for it and use its dataset."""
    if dataset in SYNTHETIC_FORMATS and not root.exists():
        from rangecps.sim.generate import generate_dataset

        try:
            generate_dataset(SYNTHETIC_FORMATS[dataset], root, progress=progress, wait=True)
        except FileExistsError:
            if not (root.is_dir() and any(root.iterdir())):
                raise


def build_data(cfg: Config, progress: bool = True) -> DataBundle:
    """Index (preparing the root on first use), statistics, label map, geometry and labeled split of a config."""
    if cfg.data.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {cfg.data.dataset!r}; choose one of {sorted(DATASETS)}")
    dataset_cls = DATASETS[cfg.data.dataset]
    root = Path(cfg.data.root)
    folder = Path(cfg.data.prep_dir) if cfg.data.prep_dir is not None else None
    ensure_synthetic(cfg.data.dataset, root, progress)
    index, stats = load_prepared(dataset_cls, root, folder, progress=progress)
    return DataBundle(
        dataset_cls=dataset_cls,
        root=root,
        index=index,
        stats=stats,
        label_map=load_label_map(dataset_cls.label_map),
        geometry=resolve_geometry(dataset_cls, cfg.data.height, cfg.data.width),
        labels=cfg.data.labels,
        split_seed=cfg.data.split_seed,
        encoding=cfg.data.input,
        prep_dir=folder,
        interpolation=eval_interpolation(cfg),
    )
