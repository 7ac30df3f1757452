"""From a config to datasets: the one place that turns ``data:`` settings into what training and evaluation read."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from rangecps.config import AugmentConfig, Config
from rangecps.data import DATASETS
from rangecps.data.augment import build_augment
from rangecps.data.dataset import InputStats, RangeDataset
from rangecps.data.index import DatasetIndex, Geometry
from rangecps.data.prep import load_prepared, prep_dir
from rangecps.data.splits import LabeledSplit, make_split
from rangecps.labels import LabelMap, load_label_map

# Synthetic datasets that `rangecps-train` makes on first use, and the simulator format of each.
SYNTHETIC_FORMATS = {
    "synthetic_kitti": "semantickitti",
    "synthetic_scribblekitti": "semantickitti",
    "synthetic_nuscenes": "nuscenes",
}


@dataclass
class DataBundle:
    """Everything a run knows about its data. ``num_classes`` counts the ignore class 0."""

    dataset_cls: type
    root: Path
    index: DatasetIndex
    stats: InputStats
    label_map: LabelMap
    geometry: Geometry
    split: LabeledSplit
    encoding: str = "normalised"  # data.input

    @property
    def num_classes(self) -> int:
        return self.label_map.num_classes

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
    ) -> RangeDataset:
        """A :class:`RangeDataset` of ``split`` (restricted to ``ids``), with labels, train-time augmentation and
        per-point arrays when asked."""
        records = self.records(ids, split) if ids is not None else self.index.split(split)
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
            cache_dir=self.cache_dir(),
            encoding=self.encoding,
            roll=augment is not None and augment.roll,
        )

    def cache_dir(self) -> Path | None:
        """The cached range images of ``rangecps-prep --cache``, when they exist at this run's geometry."""
        folder = prep_dir(self.root) / "cache"
        return folder if folder.is_dir() and self.geometry == self.dataset_cls.geometry else None


def resolve_geometry(dataset_cls: type, height: int | None, width: int | None) -> Geometry:
    """The dataset's native range image, with the config's size overrides (CPU-sized runs)."""
    native: Geometry = dataset_cls.geometry
    if native.rings and height not in (None, native.height):
        raise ValueError(
            f"{dataset_cls.name}: rows are rings, so data.height must be {native.height} (got {height})"
        )
    return replace(native, height=height or native.height, width=width or native.width)


def ensure_synthetic(dataset: str, root: Path, progress: bool = True) -> None:
    """Make the default synthetic dataset at ``root`` if it is not there (so one command shows training work)."""
    if dataset in SYNTHETIC_FORMATS and not root.exists():
        from rangecps.sim.generate import generate_dataset

        generate_dataset(SYNTHETIC_FORMATS[dataset], root, progress=progress)


def build_data(cfg: Config, progress: bool = True) -> DataBundle:
    """Index (preparing the root on first use), statistics, label map, geometry and labeled split of a config."""
    if cfg.data.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {cfg.data.dataset!r}; choose one of {sorted(DATASETS)}")
    dataset_cls = DATASETS[cfg.data.dataset]
    root = Path(cfg.data.root)
    ensure_synthetic(cfg.data.dataset, root, progress)
    index, stats = load_prepared(dataset_cls, root, progress=progress)
    split = make_split(dataset_cls.name, index.ids("train"), cfg.data.labels, cfg.data.split_seed)
    return DataBundle(
        dataset_cls=dataset_cls,
        root=root,
        index=index,
        stats=stats,
        label_map=load_label_map(dataset_cls.label_map),
        geometry=resolve_geometry(dataset_cls, cfg.data.height, cfg.data.width),
        split=split,
        encoding=cfg.data.input,
    )
