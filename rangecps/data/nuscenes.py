"""nuScenes lidarseg index, built through nuscenes-devkit from its own tables and split definitions.

Only keyframes (samples) are listed. Split names follow the devkit (``train``, ``val``, ``test``, ``mini_train``,
``mini_val``); a root that holds only ``v1.0-mini`` (the simulator writes one) also answers ``train`` and ``val``
with the mini splits, so that the same configs run on it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from rangecps.data.index import NUSCENES_GEOMETRY, DatasetIndex, ScanRecord

# Which devkit splits each version folder carries.
VERSION_SPLITS = {
    "v1.0-trainval": ("train", "val"),
    "v1.0-test": ("test",),
    "v1.0-mini": ("mini_train", "mini_val"),
}


class NuScenes:
    """nuScenes lidarseg: 28,130 train and 6,019 val keyframes; test without labels."""

    name = "nuscenes"
    file_format = "nuscenes"
    label_map = "nuscenes"
    geometry = NUSCENES_GEOMETRY

    @classmethod
    def versions(cls, root: str | Path) -> list[str]:
        return [v for v in VERSION_SPLITS if (Path(root) / v).is_dir()]

    @classmethod
    def build_index(cls, root: str | Path) -> DatasetIndex:
        """Load every version folder under ``root`` with the devkit and list its keyframes per split."""
        try:
            from nuscenes.nuscenes import NuScenes as DevkitNuScenes
            from nuscenes.utils.splits import create_splits_scenes
        except ImportError as e:
            raise ImportError("nuScenes needs nuscenes-devkit: pip install 'rangecps[nuscenes]'") from e
        root = Path(root)
        versions = cls.versions(root)
        if not versions:
            raise FileNotFoundError(f"{root}: no nuScenes version folder ({', '.join(VERSION_SPLITS)})")
        scene_splits = create_splits_scenes()
        splits: dict[str, list[ScanRecord]] = {}
        for version in versions:
            cls._check_label_files(root, version)
            try:
                nusc = DevkitNuScenes(version=version, dataroot=str(root), verbose=False)
            except (AssertionError, OSError, ValueError, KeyError, TypeError) as e:
                from rangecps.data.prep import DatasetProblems

                what = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                raise DatasetProblems(
                    root, [f"{root / version}: nuscenes-devkit cannot load this version ({what})"], cls.name
                ) from e
            has_labels = bool(getattr(nusc, "lidarseg", []))
            scene_names = {s["token"]: s["name"] for s in nusc.scene}
            for split in VERSION_SPLITS[version]:
                wanted = set(scene_splits[split])
                records = []
                for sample in nusc.sample:
                    if scene_names[sample["scene_token"]] not in wanted:
                        continue
                    sd_token = sample["data"]["LIDAR_TOP"]
                    points = nusc.get("sample_data", sd_token)["filename"]
                    labels = (
                        nusc.get("lidarseg", sd_token)["filename"] if has_labels and split != "test" else None
                    )
                    records.append(ScanRecord(sample["token"], points, labels, sd_token))
                splits[split] = records
        if "train" not in splits and "mini_train" in splits:
            splits["train"], splits["val"] = splits["mini_train"], splits["mini_val"]
        return DatasetIndex(dataset=cls.name, root=root, splits=splits)

    @classmethod
    def _check_label_files(cls, root: Path, version: str) -> None:
        """Refuse, naming them, lidarseg files that ``lidarseg.json`` lists but the root lacks, and files the
        folder holds beyond the table (the devkit only asserts that the two counts agree)."""
        from rangecps.data.prep import DatasetProblems

        table = root / version / "lidarseg.json"
        if not table.is_file():
            return
        folder = root / "lidarseg" / version
        try:
            listed = [str(rec["filename"]) for rec in json.loads(table.read_text())]
        except (OSError, ValueError, KeyError, TypeError) as e:
            problem = f"{table}: cannot read the lidarseg table ({type(e).__name__}: {e})"
            raise DatasetProblems(root, [problem], cls.name) from e
        try:
            present = {n for n in os.listdir(folder) if n.endswith((".bin", ".npz"))}
        except OSError as e:
            problem = (
                f"{folder}: missing or unreadable lidarseg folder ({e.strerror or e}; {table} lists files)"
            )
            raise DatasetProblems(root, [problem], cls.name) from e
        problems = [
            f"{root / f}: lidarseg label file not found (listed in {table})"
            for f in listed
            if Path(f).name not in present
        ]
        extra = sorted(present - {Path(f).name for f in listed})
        if extra:
            shown = ", ".join(extra[:5]) + (", ..." if len(extra) > 5 else "")
            problems.append(f"{folder}: {len(extra)} label file(s) that {table.name} does not list: {shown}")
        if problems:
            raise DatasetProblems(root, problems, cls.name)

    @classmethod
    def layout_stamp(cls, root: str | Path) -> str:
        """A digest of the devkit tables (size and modification time of every ``v1.0-*/*.json``): they define
        which scans the root holds."""
        root = Path(root)
        h = hashlib.sha256()
        for version in cls.versions(root):
            for table in sorted((root / version).glob("*.json")):
                st = table.stat()
                h.update(f"{version}/{table.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    @classmethod
    def layout_notes(cls, root: str | Path) -> list[str]:
        return []

    @classmethod
    def describe_split(cls, split: str) -> str:
        """Where ``split``'s scans come from, for messages."""
        versions = [v for v, names in VERSION_SPLITS.items() if split in names]
        if split in ("train", "val"):
            versions.append("v1.0-mini")
        return f"the devkit's {split} scenes of {' or '.join(versions)}" if versions else f"no {split} split"

    @classmethod
    def expected_folders(cls, root: str | Path, split: str) -> list[Path]:
        root = Path(root)
        versions = cls.versions(root) or ["v1.0-trainval"]
        out = [root / v for v in versions] + [root / "samples" / "LIDAR_TOP"]
        if split != "test":
            out += [root / "lidarseg" / v for v in versions if v != "v1.0-test"]
        return out


class SyntheticNuScenes(NuScenes):
    """The simulator's nuScenes-format dataset (a ``v1.0-mini`` with the official mini scene names)."""

    name = "synthetic_nuscenes"
