"""nuScenes lidarseg index, built through nuscenes-devkit from its own tables and split definitions.

Only keyframes (samples) are listed. Split names follow the devkit (``train``, ``val``, ``test``, ``mini_train``,
``mini_val``); a root that holds only ``v1.0-mini`` (the simulator writes one) also answers ``train`` and ``val``
with the mini splits, so that the same configs run on it.
"""

from __future__ import annotations

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
            nusc = DevkitNuScenes(version=version, dataroot=str(root), verbose=False)
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
