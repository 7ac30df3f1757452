"""SemanticKITTI and ScribbleKITTI indexes over the official layout (``<root>/sequences/SS/...``).

The synthetic KITTI datasets that ``rangecps-prep synthetic --format semantickitti`` writes use the same layout and
the same sequence split, and go through these very classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from rangecps.data.index import KITTI_GEOMETRY, DatasetIndex, ScanRecord

TRAIN_SEQUENCES = ("00", "01", "02", "03", "04", "05", "06", "07", "09", "10")
VAL_SEQUENCES = ("08",)
TEST_SEQUENCES = tuple(f"{i:02d}" for i in range(11, 22))


class SemanticKITTI:
    """SemanticKITTI: train 00-07, 09, 10; val 08; test 11-21 (no labels)."""

    name = "semantickitti"
    file_format = "kitti"
    label_map = "semantickitti"
    geometry = KITTI_GEOMETRY
    splits: ClassVar[dict[str, tuple[str, ...]]] = {
        "train": TRAIN_SEQUENCES,
        "val": VAL_SEQUENCES,
        "test": TEST_SEQUENCES,
    }
    train_label_dir = "labels"

    @classmethod
    def label_dir(cls, split: str) -> str | None:
        """Folder of the labels used for ``split`` (None: the split has no labels)."""
        if split == "test":
            return None
        return cls.train_label_dir if split == "train" else "labels"

    @classmethod
    def build_index(cls, root: str | Path) -> DatasetIndex:
        """List every scan of every split found under ``root``; sequences that are absent are simply not listed
        (``rangecps-prep`` reports them)."""
        root = Path(root)
        splits: dict[str, list[ScanRecord]] = {}
        for split, sequences in cls.splits.items():
            records = []
            label_dir = cls.label_dir(split)
            for seq in sequences:
                velodyne = root / "sequences" / seq / "velodyne"
                if not velodyne.is_dir():
                    continue
                for f in sorted(velodyne.glob("*.bin")):
                    labels = f"sequences/{seq}/{label_dir}/{f.stem}.label" if label_dir else None
                    records.append(
                        ScanRecord(f"{seq}/{f.stem}", f"sequences/{seq}/velodyne/{f.name}", labels)
                    )
            splits[split] = records
        return DatasetIndex(dataset=cls.name, root=root, splits=splits)

    @classmethod
    def expected_folders(cls, root: str | Path, split: str) -> list[Path]:
        """Folders the official layout has for ``split``; prep reports the missing ones."""
        root = Path(root)
        label_dir = cls.label_dir(split)
        out = []
        for seq in cls.splits[split]:
            out.append(root / "sequences" / seq / "velodyne")
            if label_dir:
                out.append(root / "sequences" / seq / label_dir)
        return out


class ScribbleKITTI(SemanticKITTI):
    """ScribbleKITTI: SemanticKITTI scans, trained on ``scribbles/`` (~8 % of points), validated on the full
    ``labels/`` of sequence 08. Unlabeled scribble points are 0 and so ignored by the supervised losses."""

    name = "scribblekitti"
    train_label_dir = "scribbles"


class SyntheticKITTI(SemanticKITTI):
    """The simulator's SemanticKITTI-format dataset: only the sequences it wrote exist; labeled shares are always
    drawn by the seeded sampler (the published lists name real scans; see rangecps.data.splits)."""

    name = "synthetic_kitti"

    @classmethod
    def expected_folders(cls, root: str | Path, split: str) -> list[Path]:
        present = {p.name for p in (Path(root) / "sequences").glob("*") if p.is_dir()}
        return [p for p in super().expected_folders(root, split) if p.parent.name in present]


class SyntheticScribbleKITTI(SyntheticKITTI):
    """The simulator's ScribbleKITTI-format dataset (scribbles written beside the full labels)."""

    name = "synthetic_scribblekitti"
    train_label_dir = "scribbles"
