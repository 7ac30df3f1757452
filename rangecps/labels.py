"""Official label maps: raw dataset ids <-> train ids, class names and colours, as NumPy lookup tables.

A label map is read once from ``configs/labels/<name>.yaml`` (installed as ``rangecps.configs``) and turned
into lookup arrays, so converting a scan's labels is one gather, never a per-point Python loop. Train id 0 is
always the ignore class; ``num_classes`` counts it.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

# Dataset name -> label-map file stem. ScribbleKITTI annotates SemanticKITTI scans with the same raw ids.
LABEL_MAPS: dict[str, str] = {
    "semantickitti": "semantickitti",
    "scribblekitti": "semantickitti",
    "nuscenes": "nuscenes",
}

# Raw ids must fit the 16 bits that SemanticKITTI `.label` files give them (nuScenes lidarseg uses 8).
MAX_RAW_ID = 0xFFFF
_REQUIRED_KEYS = (
    "name",
    "color_order",
    "labels",
    "color_map",
    "learning_map",
    "learning_map_inv",
    "learning_ignore",
)
_MAX_LISTED_UNKNOWN = 20


class LabelMapError(ValueError):
    """A label-map YAML file is malformed; the message names the file."""


class UnknownLabelWarning(UserWarning):
    """Raw label ids that the label map does not know were mapped to ignore (train id 0)."""


def _readonly(a: np.ndarray) -> np.ndarray:
    # A LabelMap is cached and shared by every caller; a write into one of its tables would corrupt them all.
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class LabelMap:
    """Lookup tables between raw dataset ids and train ids for one dataset.

    ``R`` = largest raw id + 1, ``K`` = ``num_classes`` (including the ignore class 0). Arrays are read-only.

    Attributes:
        name: label-map name, e.g. ``"semantickitti"``.
        source: the YAML file it was read from.
        names: ``K`` train class names; ``names[0]`` is the ignore class ("unlabeled" / "ignore").
        raw_names: raw id -> official raw class name.
        raw_to_train: ``(R,) int64`` train id of each raw id; 0 where the raw id is not in the map.
        raw_known: ``(R,) bool`` whether each raw id is in the map.
        train_to_raw: ``(K,)`` raw id written for each train id; uint8 when every raw id fits (nuScenes),
            else uint16 (SemanticKITTI).
        colors: ``(K, 3) uint8`` RGB colour of each train id.
        raw_colors: ``(R, 3) uint8`` RGB colour of each raw id; black where the raw id is not in the map.
        ignore: ``(K,) bool`` the official ``learning_ignore`` flags.
        content: ``(K,) float64`` fraction of all points per train class, summed over its raw ids from the
            official content ratios (for class weights); ``None`` when the dataset publishes none (nuScenes).
    """

    name: str
    source: str
    names: list[str]
    raw_names: dict[int, str]
    raw_to_train: np.ndarray
    raw_known: np.ndarray
    train_to_raw: np.ndarray
    colors: np.ndarray
    raw_colors: np.ndarray
    ignore: np.ndarray
    content: np.ndarray | None

    @property
    def num_classes(self) -> int:
        """Number of train classes including the ignore class 0 (20 for SemanticKITTI, 17 for nuScenes)."""
        return len(self.names)

    def to_train(self, raw: np.ndarray, source: str | os.PathLike | None = None) -> np.ndarray:
        """Map raw ids to train ids.

        Args:
            raw: integer array of raw ids, any shape, e.g. ``(N,) uint16`` from a `.label` file.
            source: where ``raw`` came from (a file path); named in the warning about unknown ids.

        Returns:
            ``int64`` array of train ids, same shape as ``raw``. Raw ids not in the map become 0 (ignore),
            and one ``UnknownLabelWarning`` lists them with their point counts.
        """
        raw = np.asarray(raw)
        if not np.issubdtype(raw.dtype, np.integer):
            where = f"{os.fspath(source)}: " if source is not None else ""
            raise TypeError(f"{where}raw label ids must be an integer array, got dtype {raw.dtype}")
        size = self.raw_to_train.shape[0]
        in_range = (raw >= 0) & (raw < size)
        # Out-of-range ids index raw id 0 here and are overwritten below; this keeps the lookup one gather.
        safe = np.where(in_range, raw, 0)
        train = self.raw_to_train[safe]
        known = in_range & self.raw_known[safe]
        if not known.all():
            unknown = ~known
            train[unknown] = 0
            self._warn_unknown(raw[unknown], source)
        return train

    def to_raw(self, train: np.ndarray) -> np.ndarray:
        """Map train ids to raw ids (train id 0 -> raw id 0).

        Args:
            train: integer array of train ids in ``[0, num_classes)``, any shape.

        Returns:
            raw ids, same shape, dtype of ``train_to_raw`` (uint16 for SemanticKITTI, uint8 for nuScenes).
        """
        train = np.asarray(train)
        if not np.issubdtype(train.dtype, np.integer):
            raise TypeError(f"train ids must be an integer array, got dtype {train.dtype}")
        if train.size and (train.min() < 0 or train.max() >= self.num_classes):
            raise ValueError(
                f"train ids must lie in [0, {self.num_classes}) for label map {self.name!r}, "
                f"got values in [{train.min()}, {train.max()}]"
            )
        return self.train_to_raw[train]

    def _warn_unknown(self, unknown_raw: np.ndarray, source: str | os.PathLike | None) -> None:
        ids, counts = np.unique(unknown_raw, return_counts=True)
        shown = zip(ids[:_MAX_LISTED_UNKNOWN], counts[:_MAX_LISTED_UNKNOWN], strict=True)
        listed = ", ".join(f"{i} x{c}" for i, c in shown)
        if len(ids) > _MAX_LISTED_UNKNOWN:
            listed += f", ... and {len(ids) - _MAX_LISTED_UNKNOWN} more ids"
        where = os.fspath(source) if source is not None else "<array without source>"
        warnings.warn(
            f"{where}: {int(counts.sum())} points carry raw label ids unknown to label map {self.name!r}; "
            f"mapped to 0 (ignore). Unknown id x point count: {listed}",
            UnknownLabelWarning,
            stacklevel=3,
        )

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str] | Traversable) -> LabelMap:
        """Read and validate a label-map YAML file (uncached; prefer ``load_label_map``).

        Raises ``LabelMapError`` (a ``ValueError`` naming the file) for malformed content.
        """
        resource = path if hasattr(path, "read_text") else Path(path)
        where = str(resource)
        try:
            doc = yaml.safe_load(resource.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise LabelMapError(f"{where}: not a valid UTF-8 YAML file: {e}") from e
        return _build(doc, where)


def _id_dict(doc: dict[str, Any], key: str, where: str, lo: int, hi: int) -> dict[int, Any]:
    """``doc[key]`` as a dict whose keys are ints in ``[lo, hi]``."""
    value = doc[key]
    if not isinstance(value, dict) or not value:
        raise LabelMapError(f"{where}: '{key}' must be a non-empty mapping of id -> value")
    for k in value:
        # bool is an int subclass; a YAML `true:` key is a typo, not id 1.
        if not isinstance(k, int) or isinstance(k, bool) or not lo <= k <= hi:
            raise LabelMapError(f"{where}: '{key}' has key {k!r}; ids must be integers in [{lo}, {hi}]")
    return value


def _color(value: Any, key: str, k: int, where: str) -> list[int]:
    ok = isinstance(value, list) and len(value) == 3
    ok = ok and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)
    if not ok:
        raise LabelMapError(f"{where}: '{key}'[{k}] = {value!r}; a colour is three integers in [0, 255]")
    return value


def _build(doc: Any, where: str) -> LabelMap:
    """Validate a parsed label-map YAML document and turn it into lookup arrays."""
    if not isinstance(doc, dict):
        raise LabelMapError(f"{where}: top level must be a mapping, got {type(doc).__name__}")
    missing = [k for k in _REQUIRED_KEYS if k not in doc]
    if missing:
        raise LabelMapError(f"{where}: missing required keys {missing}")
    if doc["color_order"] not in ("rgb", "bgr"):
        raise LabelMapError(f"{where}: 'color_order' must be 'rgb' or 'bgr', got {doc['color_order']!r}")

    labels = _id_dict(doc, "labels", where, 0, MAX_RAW_ID)
    raw_ids = set(labels)
    for key in ("color_map", "learning_map", *(("content",) if "content" in doc else ())):
        got = set(_id_dict(doc, key, where, 0, MAX_RAW_ID))
        if got != raw_ids:
            raise LabelMapError(
                f"{where}: '{key}' must cover exactly the raw ids of 'labels'; "
                f"missing {sorted(raw_ids - got)}, extra {sorted(got - raw_ids)}"
            )

    inv = _id_dict(doc, "learning_map_inv", where, 0, MAX_RAW_ID)
    num_classes = len(inv)
    if set(inv) != set(range(num_classes)):
        raise LabelMapError(f"{where}: 'learning_map_inv' keys must be the train ids 0..{num_classes - 1}")
    learning_map = doc["learning_map"]
    for raw_id, train_id in learning_map.items():
        if not isinstance(train_id, int) or isinstance(train_id, bool) or not 0 <= train_id < num_classes:
            raise LabelMapError(
                f"{where}: learning_map[{raw_id}] = {train_id!r} is not a train id in [0, {num_classes})"
            )
    for train_id, raw_id in inv.items():
        if raw_id not in raw_ids:
            raise LabelMapError(f"{where}: learning_map_inv[{train_id}] = {raw_id!r} is not in 'labels'")
        if learning_map[raw_id] != train_id:
            raise LabelMapError(
                f"{where}: learning_map_inv is inconsistent with learning_map: "
                f"learning_map_inv[{train_id}] = {raw_id} but learning_map[{raw_id}] = {learning_map[raw_id]}"
            )

    train_keys = set(range(num_classes))
    for key in ("learning_ignore", *(k for k in ("train_labels", "train_color_map") if k in doc)):
        if set(_id_dict(doc, key, where, 0, num_classes - 1)) != train_keys:
            raise LabelMapError(f"{where}: '{key}' keys must be exactly the train ids 0..{num_classes - 1}")
    if not all(isinstance(v, bool) for v in doc["learning_ignore"].values()):
        raise LabelMapError(f"{where}: 'learning_ignore' values must be true/false")

    # Tables over raw ids.
    size = max(raw_ids) + 1
    order = sorted(raw_ids)
    ids = np.array(order, dtype=np.int64)
    raw_to_train = np.zeros(size, dtype=np.int64)
    raw_to_train[ids] = [learning_map[i] for i in order]
    raw_known = np.zeros(size, dtype=bool)
    raw_known[ids] = True
    flip = slice(None, None, -1) if doc["color_order"] == "bgr" else slice(None)
    raw_colors = np.zeros((size, 3), dtype=np.uint8)
    raw_colors[ids] = np.array([_color(doc["color_map"][i], "color_map", i, where) for i in order])[:, flip]

    # Tables over train ids. Without explicit train names/colours (SemanticKITTI) a train class takes those of
    # its representative raw id, as the official semantic-kitti-api does.
    raw_dtype = np.uint8 if max(raw_ids) <= np.iinfo(np.uint8).max else np.uint16
    train_to_raw = np.array([inv[t] for t in range(num_classes)], dtype=raw_dtype)
    if "train_labels" in doc:
        names = [str(doc["train_labels"][t]) for t in range(num_classes)]
    else:
        names = [str(labels[inv[t]]) for t in range(num_classes)]
    if "train_color_map" in doc:
        tcm = doc["train_color_map"]
        colors = np.array([_color(tcm[t], "train_color_map", t, where) for t in range(num_classes)], np.uint8)
        colors = np.ascontiguousarray(colors[:, flip])
    else:
        colors = raw_colors[train_to_raw.astype(np.int64)]

    content = None
    if "content" in doc:
        ratios = doc["content"]
        numbers = [isinstance(v, (int, float)) and not isinstance(v, bool) for v in ratios.values()]
        if not all(numbers) or min(ratios.values()) < 0:
            raise LabelMapError(f"{where}: 'content' values must be non-negative numbers")
        content = np.zeros(num_classes, dtype=np.float64)
        np.add.at(content, raw_to_train[ids], [float(ratios[i]) for i in order])
        content = _readonly(content)

    ignore = np.array([doc["learning_ignore"][t] for t in range(num_classes)], dtype=bool)
    return LabelMap(
        name=str(doc["name"]),
        source=where,
        names=names,
        raw_names={i: str(labels[i]) for i in order},
        raw_to_train=_readonly(raw_to_train),
        raw_known=_readonly(raw_known),
        train_to_raw=_readonly(train_to_raw),
        colors=_readonly(colors),
        raw_colors=_readonly(raw_colors),
        ignore=_readonly(ignore),
        content=content,
    )


def load_label_map(name_or_path: str | os.PathLike[str]) -> LabelMap:
    """The label map of a dataset (a key of ``LABEL_MAPS``) or of a label-map YAML file.

    Results are cached: datasets sharing a map (SemanticKITTI, ScribbleKITTI) get the same object, and a file
    edited after its first load is not re-read in the same process.
    """
    if isinstance(name_or_path, str) and name_or_path in LABEL_MAPS:
        return _load_builtin(LABEL_MAPS[name_or_path])
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        raise ValueError(
            f"unknown label map {name_or_path!r}: give one of {sorted(LABEL_MAPS)} or a path to a .yaml file"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: label-map file not found")
    return _load_file(path.resolve())


@functools.lru_cache(maxsize=8)
def _load_builtin(stem: str) -> LabelMap:
    return LabelMap.from_yaml(importlib.resources.files("rangecps.configs") / "labels" / f"{stem}.yaml")


@functools.lru_cache(maxsize=32)
def _load_file(path: Path) -> LabelMap:
    return LabelMap.from_yaml(path)
