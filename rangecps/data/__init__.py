"""Datasets: indexes over the official layouts, labeled splits, augmentations and semi-supervised loaders."""

from rangecps.data.index import DatasetIndex, Geometry, ScanRecord, read_scan
from rangecps.data.kitti import ScribbleKITTI, SemanticKITTI, SyntheticKITTI, SyntheticScribbleKITTI
from rangecps.data.nuscenes import NuScenes, SyntheticNuScenes

# Config name -> dataset class. Every entry answers: name, file_format, label_map, geometry,
# build_index(root), expected_folders(root, split), layout_notes(root) (what the root lacks, as notes),
# layout_stamp(root) (a cheap digest of which scans the root holds) and describe_split(split) (for messages).
DATASETS = {
    cls.name: cls
    for cls in (
        SemanticKITTI,
        ScribbleKITTI,
        NuScenes,
        SyntheticKITTI,
        SyntheticScribbleKITTI,
        SyntheticNuScenes,
    )
}

__all__ = ["DATASETS", "DatasetIndex", "Geometry", "ScanRecord", "read_scan"]
