"""SemanticKITTI and ScribbleKITTI indexes over the official layout (``<root>/sequences/SS/...``).

The synthetic KITTI datasets that ``rangecps-prep synthetic --format semantickitti`` writes use the same layout and
the same sequence split, and go through these very classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from rangecps.data.index import KITTI_GEOMETRY, DatasetIndex, ScanRecord, records_digest

TRAIN_SEQUENCES = ("00", "01", "02", "03", "04", "05", "06", "07", "09", "10")
VAL_SEQUENCES = ("08",)
TEST_SEQUENCES = tuple(f"{i:02d}" for i in range(11, 22))


def compact_sequences(sequences: list[str] | tuple[str, ...]) -> str:
    """``00, 01, 02, 05`` -> ``00-02, 05``: runs of consecutive sequence ids shortened."""
    runs: list[list[str]] = []
    for seq in sorted(sequences):
        if runs and seq.isdigit() and runs[-1][-1].isdigit() and int(seq) == int(runs[-1][-1]) + 1:
            runs[-1].append(seq)
        else:
            runs.append([seq])
    return ", ".join(r[0] if len(r) == 1 else f"{r[0]}-{r[-1]}" if len(r) > 2 else ", ".join(r) for r in runs)


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
    def present(cls, root: str | Path) -> set[str]:
        """Sequences whose scans are there (``sequences/SS/velodyne``). Roots often hold only some: the
        validation sequence alone to evaluate a model, or the labels of every sequence but few scans."""
        return {p.parent.name for p in (Path(root) / "sequences").glob("*/velodyne") if p.is_dir()}

    @classmethod
    def expected_folders(cls, root: str | Path, split: str) -> list[Path]:
        """Folders the official layout has for the sequences of ``split`` that are there (see :meth:`present`);
        prep reports the missing ones (a sequence's labels)."""
        root = Path(root)
        label_dir = cls.label_dir(split)
        present = cls.present(root)
        out = []
        for seq in cls.splits[split]:
            if seq not in present:
                continue
            out.append(root / "sequences" / seq / "velodyne")
            if label_dir:
                out.append(root / "sequences" / seq / label_dir)
        return out

    @classmethod
    def layout_notes(cls, root: str | Path) -> list[str]:
        """One line naming the sequences of the official split that are not there (their scans are simply not
        indexed), or nothing when every sequence is there."""
        present = cls.present(root)
        missing = []
        for split, sequences in cls.splits.items():
            absent = [s for s in sequences if s not in present]
            if absent:
                everything = " (the whole split)" if len(absent) == len(sequences) else ""
                missing.append(f"{split} {compact_sequences(absent)}{everything}")
        if not missing:
            return []
        return [
            f"{Path(root)}: sequences not there (no velodyne folder), left out of the index: {'; '.join(missing)}"
        ]

    @classmethod
    def describe_split(cls, split: str) -> str:
        """Where ``split``'s scans come from, for messages: ``sequences 00-07, 09, 10``."""
        sequences = cls.splits.get(split, ())
        return f"sequences {compact_sequences(sequences)}" if sequences else f"no {split} split"

    @classmethod
    def layout_stamp(cls, root: str | Path) -> str:
        """A digest of which scans and label files the root holds (listing folders is cheap on KITTI)."""
        return records_digest(cls.build_index(root).splits)


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
    def layout_notes(cls, root: str | Path) -> list[str]:
        # the simulator writes only some sequences (--sequences): the others are not missing
        return []


class SyntheticScribbleKITTI(SyntheticKITTI):
    """The simulator's ScribbleKITTI-format dataset (scribbles written beside the full labels)."""

    name = "synthetic_scribblekitti"
    train_label_dir = "scribbles"
