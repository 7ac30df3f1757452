"""Tests of the official label maps and their NumPy lookup tables (rangecps.labels)."""

from __future__ import annotations

import importlib.resources
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import yaml

from rangecps.labels import (
    LABEL_MAPS,
    LabelMap,
    LabelMapError,
    UnknownLabelWarning,
    load_label_map,
)

KITTI_TRAIN_NAMES = [
    "unlabeled", "car", "bicycle", "motorcycle", "truck", "other-vehicle", "person", "bicyclist",
    "motorcyclist", "road", "parking", "sidewalk", "other-ground", "building", "fence", "vegetation", "trunk",
    "terrain", "pole", "traffic-sign",
]  # fmt: skip
NUSCENES_TRAIN_NAMES = [
    "ignore", "barrier", "bicycle", "bus", "car", "construction_vehicle", "motorcycle", "pedestrian",
    "traffic_cone", "trailer", "truck", "driveable_surface", "other_flat", "sidewalk", "terrain", "manmade",
    "vegetation",
]  # fmt: skip


def _yaml_doc(stem: str) -> dict[str, Any]:
    """The installed label-map YAML, parsed independently of the loader under test."""
    resource = importlib.resources.files("rangecps.configs") / "labels" / f"{stem}.yaml"
    return yaml.safe_load(resource.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def kitti() -> LabelMap:
    return load_label_map("semantickitti")


@pytest.fixture(scope="module")
def nusc() -> LabelMap:
    return load_label_map("nuscenes")


def test_dataset_names_resolve_to_shared_cached_maps(kitti: LabelMap, nusc: LabelMap) -> None:
    assert set(LABEL_MAPS) == {"semantickitti", "scribblekitti", "nuscenes"}
    assert load_label_map("scribblekitti") is kitti
    assert load_label_map("semantickitti") is kitti
    assert kitti.name == "semantickitti" and nusc.name == "nuscenes"
    assert kitti.source.endswith("semantickitti.yaml")


def test_semantickitti_official_values(kitti: LabelMap) -> None:
    assert kitti.num_classes == 20
    assert kitti.names == KITTI_TRAIN_NAMES
    # raw id -> train id, spot values of the official learning_map, including merged and moving classes.
    expected = {
        0: 0, 1: 0, 10: 1, 11: 2, 13: 5, 16: 5, 18: 4, 40: 9, 52: 0, 60: 9, 72: 17, 81: 19, 99: 0,
        252: 1, 253: 7, 254: 6, 255: 8, 256: 5, 257: 5, 258: 4, 259: 5,
    }  # fmt: skip
    raw = np.array(list(expected), dtype=np.uint16)
    np.testing.assert_array_equal(kitti.to_train(raw), list(expected.values()))
    assert len(kitti.raw_names) == 34
    assert kitti.raw_names[52] == "other-structure"
    assert kitti.raw_names[259] == "moving-other-vehicle"
    assert kitti.raw_to_train.shape == (260,)
    # The official file stores [b, g, r]: car is [245, 150, 100] there, so RGB (100, 150, 245).
    np.testing.assert_array_equal(kitti.raw_colors[10], [100, 150, 245])
    np.testing.assert_array_equal(kitti.colors[9], [255, 0, 255])  # road: symmetric, raw 40
    np.testing.assert_array_equal(kitti.colors[13], [255, 200, 0])  # building: bgr [0, 200, 255]
    np.testing.assert_array_equal(kitti.ignore, np.arange(20) == 0)


def test_semantickitti_content_sums_official_ratios_per_train_class(kitti: LabelMap) -> None:
    assert kitti.content is not None and kitti.content.shape == (20,) and kitti.content.dtype == np.float64
    # car = car (10) + moving-car (252) in the official content ratios.
    assert kitti.content[1] == pytest.approx(0.040818519255974316 + 0.001789309418528068)
    # road = road (40) + lane-marking (60).
    assert kitti.content[9] == pytest.approx(0.1987493871255525 + 4.7084144280367186e-05)
    assert kitti.content.sum() == pytest.approx(sum(_yaml_doc("semantickitti")["content"].values()))
    assert kitti.content.sum() == pytest.approx(1.0, abs=1e-5)


def test_nuscenes_classes(nusc: LabelMap) -> None:
    assert nusc.num_classes == 17
    assert nusc.names == NUSCENES_TRAIN_NAMES
    assert nusc.content is None
    assert sorted(nusc.raw_names) == list(range(32))
    assert nusc.raw_names[0] == "noise" and nusc.raw_names[31] == "vehicle.ego"
    assert nusc.raw_names[24] == "flat.driveable_surface" and nusc.raw_names[30] == "static.vegetation"
    np.testing.assert_array_equal(nusc.to_train(np.array([17, 24, 29, 30, 31], np.uint8)), [4, 11, 0, 16, 0])


@pytest.mark.parametrize("name", ["semantickitti", "nuscenes"])
def test_train_ids_round_trip_through_raw(name: str) -> None:
    lm = load_label_map(name)
    train = np.arange(lm.num_classes)
    raw = lm.to_raw(train)
    assert raw.dtype == (np.uint16 if name == "semantickitti" else np.uint8)
    assert raw[0] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every raw id written back must be known
        np.testing.assert_array_equal(lm.to_train(raw), train)


@pytest.mark.parametrize("name", ["semantickitti", "nuscenes"])
def test_lookup_arrays_shapes_dtypes_and_read_only(name: str) -> None:
    lm = load_label_map(name)
    size = max(lm.raw_names) + 1
    assert lm.colors.shape == (lm.num_classes, 3) and lm.colors.dtype == np.uint8
    assert lm.raw_colors.shape == (size, 3) and lm.raw_colors.dtype == np.uint8
    assert lm.raw_to_train.shape == (size,) and lm.raw_to_train.dtype == np.int64
    assert lm.train_to_raw.shape == (lm.num_classes,)
    np.testing.assert_array_equal(np.flatnonzero(lm.raw_known), sorted(lm.raw_names))
    # Every train class is reached by at least one raw id.
    np.testing.assert_array_equal(np.unique(lm.raw_to_train[lm.raw_known]), np.arange(lm.num_classes))
    with pytest.raises(ValueError, match="read-only"):
        lm.raw_to_train[0] = 5


@pytest.mark.parametrize("name", ["semantickitti", "nuscenes"])
def test_to_train_big_array_matches_yaml_learning_map(name: str) -> None:
    lm = load_label_map(name)
    learning_map = _yaml_doc(name)["learning_map"]
    rng = np.random.default_rng(0)
    raw = rng.choice(np.array(sorted(learning_map)), size=(64, 2048 * 16)).astype(lm.train_to_raw.dtype)
    train = lm.to_train(raw)
    assert train.shape == raw.shape and train.dtype == np.int64
    for raw_id, train_id in learning_map.items():
        assert (train[raw == raw_id] == train_id).all(), raw_id


def test_unknown_ids_map_to_ignore_with_one_warning_naming_the_source(kitti: LabelMap) -> None:
    raw = np.array([10, 7, 7, 7, 40, 300, 65535, 10], dtype=np.uint16)
    with pytest.warns(UnknownLabelWarning) as record:
        train = kitti.to_train(raw, source="sequences/00/labels/000123.label")
    assert len(record) == 1
    message = str(record[0].message)
    assert "sequences/00/labels/000123.label" in message
    assert "5 points" in message
    assert "7 x3" in message and "300 x1" in message and "65535 x1" in message
    np.testing.assert_array_equal(train, [1, 0, 0, 0, 9, 0, 0, 1])


def test_unknown_id_list_is_truncated(nusc: LabelMap) -> None:
    raw = np.arange(32, 132, dtype=np.int64)  # 100 unknown ids
    with pytest.warns(UnknownLabelWarning, match="and 80 more ids"):
        train = nusc.to_train(raw, source=Path("scan.bin"))
    assert (train == 0).all()


def test_negative_ids_are_unknown_not_wrapped(nusc: LabelMap) -> None:
    with pytest.warns(UnknownLabelWarning, match="-1 x1"):
        train = nusc.to_train(np.array([-1, 17]))
    np.testing.assert_array_equal(train, [0, 4])


def test_known_ids_raise_no_warning(kitti: LabelMap) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kitti.to_train(np.array([0, 1, 10, 259], dtype=np.uint32))


def test_bad_dtypes_and_train_ids_rejected(kitti: LabelMap) -> None:
    with pytest.raises(TypeError, match=r"x\.label.*integer"):
        kitti.to_train(np.array([10.0]), source="x.label")
    with pytest.raises(ValueError, match=r"\[0, 20\)"):
        kitti.to_raw(np.array([3, 20]))
    with pytest.raises(ValueError, match=r"\[0, 20\)"):
        kitti.to_raw(np.array([-1]))


def test_nuscenes_matches_devkit_class_mapper(nusc: LabelMap) -> None:
    utils = pytest.importorskip("nuscenes.eval.lidarseg.utils", reason="nuscenes-devkit is not importable")
    from nuscenes.utils.color_map import get_colormap

    # The devkit lists its colormap in category.json index order (NuScenes sorts it by index on load).
    assert list(get_colormap()) == [nusc.raw_names[i] for i in range(32)]
    # The mapper needs only the fine name -> index table that NuScenes reads from category.json.
    fake_nusc = SimpleNamespace(lidarseg_name2idx_mapping={n: i for i, n in nusc.raw_names.items()})
    mapper = utils.LidarsegClassMapper(fake_nusc)
    fine_to_coarse = mapper.fine_idx_2_coarse_idx_mapping
    assert sorted(fine_to_coarse) == list(range(32))
    np.testing.assert_array_equal(nusc.raw_to_train, [fine_to_coarse[i] for i in range(32)])
    coarse = {idx: name for name, idx in mapper.coarse_name_2_coarse_idx_mapping.items()}
    assert [coarse[t] for t in range(17)] == nusc.names
    assert mapper.ignore_class["index"] == 0
    np.testing.assert_array_equal(nusc.colors, [mapper.coarse_colormap[n] for n in nusc.names])


def test_nuscenes_fine_colours_match_devkit(nusc: LabelMap) -> None:
    color_map = pytest.importorskip("nuscenes.utils.color_map", reason="nuscenes-devkit is not importable")
    colormap = color_map.get_colormap()
    np.testing.assert_array_equal(nusc.raw_colors, [colormap[nusc.raw_names[i]] for i in range(32)])


def test_load_from_path_equals_builtin(tmp_path: Path, kitti: LabelMap) -> None:
    path = tmp_path / "copy.yaml"
    path.write_text(yaml.safe_dump(_yaml_doc("semantickitti")))
    lm = load_label_map(str(path))
    assert lm.source == str(path.resolve())
    assert lm.names == kitti.names
    np.testing.assert_array_equal(lm.raw_to_train, kitti.raw_to_train)
    np.testing.assert_array_equal(lm.colors, kitti.colors)


def test_unknown_name_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown label map 'kitti360'"):
        load_label_map("kitti360")
    with pytest.raises(FileNotFoundError, match=r"absent\.yaml"):
        load_label_map(str(tmp_path / "absent.yaml"))


def _drop(key: str, sub: int | None = None) -> Callable[[dict[str, Any]], None]:
    """A corruption that deletes ``doc[key]`` or ``doc[key][sub]``."""
    return lambda doc: doc.pop(key) if sub is None else doc[key].pop(sub)


def _put(key: str, sub: int | None, value: Any) -> Callable[[dict[str, Any]], None]:
    """A corruption that sets ``doc[key]`` or ``doc[key][sub]`` to ``value``."""
    return lambda doc: doc.__setitem__(key, value) if sub is None else doc[key].__setitem__(sub, value)


@pytest.mark.parametrize(
    ("stem", "corrupt", "message"),
    [
        ("semantickitti", _drop("learning_map_inv"), r"missing required keys \['learning_map_inv'\]"),
        ("semantickitti", _put("learning_map_inv", 1, 11), "inconsistent with learning_map"),
        ("semantickitti", _put("learning_map", 10, 20), r"learning_map\[10\] = 20 is not a train id"),
        ("semantickitti", _put("labels", 70000, "far"), "ids must be integers in"),
        ("semantickitti", _put("color_map", 10, [1, 2]), "a colour is three integers"),
        ("semantickitti", _put("content", 10, -0.5), "non-negative"),
        ("semantickitti", _put("color_order", None, "hsv"), "'color_order' must be 'rgb' or 'bgr'"),
        ("nuscenes", _drop("learning_ignore", 5), "keys must be exactly the train ids 0..16"),
        ("nuscenes", _put("train_labels", 17, "extra"), r"has key 17; ids must be integers in \[0, 16\]"),
        ("nuscenes", _put("learning_map_inv", 3, 99), r"learning_map_inv\[3\] = 99 is not in 'labels'"),
        ("nuscenes", _drop("color_map", 5), r"'color_map' must cover.*missing \[5\]"),
    ],
)
def test_bad_yaml_raises_naming_the_file(
    tmp_path: Path, stem: str, corrupt: Callable[[dict[str, Any]], None], message: str
) -> None:
    doc = _yaml_doc(stem)
    corrupt(doc)
    path = tmp_path / f"broken_{stem}.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(LabelMapError, match=message) as info:
        load_label_map(str(path))
    assert str(path.resolve()) in str(info.value)


def test_invalid_yaml_syntax_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "syntax.yaml"
    path.write_text("labels: [0: unlabeled\n")
    with pytest.raises(LabelMapError, match=r"syntax\.yaml: not a valid UTF-8 YAML file"):
        load_label_map(str(path))
    path2 = tmp_path / "list.yaml"
    path2.write_text("- 1\n- 2\n")
    with pytest.raises(LabelMapError, match=r"list\.yaml: top level must be a mapping"):
        load_label_map(str(path2))
