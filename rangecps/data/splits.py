"""Labeled / unlabeled partitions of a training split.

On the real datasets the labeled shares of the published benchmark (1, 10, 20, 50 %) are the shipped lists in
``data_prep/splits/`` (installed as ``rangecps.splits``), so that results compare with the published tables scan for
scan. Any other share, and every synthetic dataset, uses a seeded uniform sampler whose lists are nested: the
labeled scans at a smaller share are a subset of those at a larger one. The unlabeled set is always the rest of the
training split.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Which shipped lists a dataset uses: ScribbleKITTI reuses SemanticKITTI's (the published lists are identical).
PUBLISHED_LISTS = {"semantickitti": "semantickitti", "scribblekitti": "semantickitti", "nuscenes": "nuscenes"}
PUBLISHED_PERCENTS = (1, 10, 20, 50)


class SplitError(ValueError):
    """A labeled list that does not fit the dataset it is used with."""


@dataclass(frozen=True)
class LabeledSplit:
    """The partition of a training split.

    Attributes:
        labeled: scan ids with labels, in the order of the training split.
        unlabeled: the remaining training scan ids, in the order of the training split.
        ratio: the labeled share asked for (0 < ratio <= 1).
        source: where the labeled list came from: a shipped list's file name, or ``sampler(seed=S)``.
    """

    labeled: tuple[str, ...]
    unlabeled: tuple[str, ...]
    ratio: float
    source: str


def _read_share(text: str | float, where: str) -> tuple[float, str]:
    """The labeled share ``text`` as a ratio in (0, 1] and as a percentage (``"10%"``); ValueError naming
    ``where`` otherwise. A bare number is a fraction only below 1: ``"0.1"`` is 10 %, while ``"10"`` (10 %? 1000 %?)
    and ``"1"`` (1 %? 100 %?) are refused as ambiguous."""
    if isinstance(text, bool):
        raise ValueError(f"{where} {text!r}: expected a percentage such as 10%")
    if isinstance(text, int | float):
        value, percent = float(text), float(text) * 100.0
    else:
        s = str(text).strip()
        try:
            number = float(s[:-1]) if s.endswith("%") else float(s)
        except ValueError:
            raise ValueError(f"{where} {text!r}: expected a percentage such as 10%") from None
        if s.endswith("%"):
            value, percent = number / 100.0, number
        elif number >= 1.0:  # "1", "10", "50": a percentage without its sign, or a fraction above 1?
            example = "1% or 100%" if number == 1.0 else f"{number:g}%"
            raise ValueError(
                f"{where} {s}: a bare number is ambiguous; write the labeled share as a percentage such as "
                f"{example} (a bare number below 1 is a fraction: 0.1 means 10%)"
            )
        else:
            value, percent = number, number * 100.0
    if not 0.0 < value <= 1.0:  # "not" so that NaN is refused too
        raise ValueError(f"{where} {text}: the labeled share must lie in (0%, 100%]")
    return value, f"{round(percent, 6):g}%"


def parse_ratio(text: str | float, where: str = "labeled share") -> float:
    """``"10%"`` -> 0.1, ``"0.1"`` -> 0.1, ``"100%"`` -> 1.0. Raises ValueError outside (0, 1] and for a bare
    number >= 1 in text (``"10"``, ``"1"``: ambiguous); the message names ``where`` (e.g. ``--labels``)."""
    return _read_share(text, where)[0]


def canonical_share(text: str | float, where: str = "labeled share") -> str:
    """The labeled share as a percentage (``"0.1"``, ``" 10 %"``, ``"10.0%"`` -> ``"10%"``), as ``data.labels``
    and the keys of ``train.epochs_by_labels`` are recorded and compared; ValueError as :func:`parse_ratio`."""
    return _read_share(text, where)[1]


def published_list_name(dataset: str, ratio: float) -> str | None:
    """File name of the shipped list for ``dataset`` at ``ratio``, or None if there is none."""
    prefix = PUBLISHED_LISTS.get(dataset)
    percent = round(ratio * 100, 6)
    if prefix is None or percent not in PUBLISHED_PERCENTS:
        return None
    return f"{prefix}_{int(percent)}pct.txt"


def read_published_list(name: str) -> list[str]:
    """The scan ids of a shipped list (``SS/NNNNNN`` for the KITTI datasets, sample tokens for nuScenes)."""
    resource = importlib.resources.files("rangecps.splits") / name
    if not resource.is_file():
        raise SplitError(f"shipped split list {name} not found in rangecps.splits (data_prep/splits/)")
    return [line.strip() for line in resource.read_text().splitlines() if line.strip()]


def sample_nested(train_ids: Sequence[str], ratio: float, seed: int) -> list[str]:
    """A uniform random sample of ``ceil(ratio * N)`` ids (at least one), nested across ratios for one seed.

    Nesting comes from ranking every id by a seeded hash once and taking a prefix of that ranking; ranking by
    hash rather than by position also keeps a scan's rank unchanged when other scans are added to the split.
    """
    if not train_ids:
        raise SplitError("the training split is empty: nothing to sample labeled scans from")
    keys = [hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8] for i in train_ids]
    order = sorted(range(len(train_ids)), key=keys.__getitem__)
    count = max(1, int(np.ceil(ratio * len(train_ids) - 1e-9)))
    return [train_ids[i] for i in order[:count]]


def make_split(dataset: str, train_ids: Sequence[str], labels: str | float, seed: int = 0) -> LabeledSplit:
    """Partition ``train_ids`` into labeled and unlabeled scans for ``labels`` (e.g. ``"10%"``).

    Real datasets at a published share use the shipped list; a list that names scans missing from the training
    split raises :class:`SplitError` saying how many and which.
    """
    ratio = parse_ratio(labels)
    name = published_list_name(dataset, ratio)
    if name is not None:
        wanted = read_published_list(name)
        present = set(train_ids)
        missing = [s for s in wanted if s not in present]
        if missing:
            shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise SplitError(
                f"{name}: {len(missing)} of {len(wanted)} labeled scans are not in the {dataset} training split "
                f"({len(train_ids)} scans found): {shown}"
            )
        labeled_set = set(wanted)
        source = name
    else:
        labeled_set = set(sample_nested(train_ids, ratio, seed))
        source = f"sampler(seed={seed})"
    labeled = tuple(s for s in train_ids if s in labeled_set)
    unlabeled = tuple(s for s in train_ids if s not in labeled_set)
    return LabeledSplit(labeled=labeled, unlabeled=unlabeled, ratio=ratio, source=source)
