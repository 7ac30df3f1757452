"""Generate a labeled synthetic dataset in an official on-disk format: the toolkit's built-in default dataset.

``semantickitti`` writes ``<out>/sequences/XX/...`` (SemanticKITTI + ScribbleKITTI; see ``write_kitti``) from
the simulated HDL-64E. Sequences carry official ids so that the official split (train 00-07, 09, 10; val 08)
applies unchanged: ``sequences=N`` writes the first ``N - 1`` training ids in official order (00, 01, ...)
plus validation sequence 08. Scribbles are written for the training sequences only, as in ScribbleKITTI.

``nuscenes`` writes a ``v1.0-mini`` dataset root (see ``write_nuscenes``) from the simulated HDL-32E. Scenes
carry the names of the official mini scenes so that the devkit's ``mini_train`` / ``mini_val`` splits apply:
``sequences=N`` writes both ``mini_val`` scenes and the first ``N - 2`` ``mini_train`` scenes. The devkit's
lidarseg evaluation walks every scene of its split, so ``mini_val`` is always complete, and ``mini_train`` is
complete with the default ``N = 10``.

Output is deterministic: one seed gives byte-identical files (tokens are hashed from the seed, timestamps
count from a fixed epoch). The dataset is built in a hidden folder beside ``out`` and renamed into place when
complete, so an interrupted run never leaves a half-written dataset at ``out``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from tqdm import tqdm

from rangecps.data.kitti import TRAIN_SEQUENCES, VAL_SEQUENCES
from rangecps.sim import Frame, simulate_sequence
from rangecps.sim.write_kitti import write_kitti_sequence
from rangecps.sim.write_nuscenes import NuScenesWriter

# The official SemanticKITTI split, defined once in the dataset index.
KITTI_TRAIN_SEQUENCES = TRAIN_SEQUENCES
(KITTI_VAL_SEQUENCE,) = VAL_SEQUENCES
# nuscenes.utils.splits.mini_train / mini_val of nuscenes-devkit 1.2.0.
NUSCENES_MINI_TRAIN = (
    "scene-0061", "scene-0553", "scene-0655", "scene-0757",
    "scene-0796", "scene-1077", "scene-1094", "scene-1100",
)  # fmt: skip
NUSCENES_MINI_VAL = ("scene-0103", "scene-0916")

SENSOR = {"semantickitti": "hdl64", "nuscenes": "hdl32"}
# Small datasets that train and evaluate end to end in minutes on a CPU: four training sequences plus the
# validation sequence for KITTI; the ten official mini scenes for nuScenes, so both mini splits are complete.
DEFAULTS: dict[str, dict[str, int]] = {
    "semantickitti": {"sequences": 5, "scans_per_sequence": 20, "seed": 0},
    "nuscenes": {"sequences": 10, "scans_per_sequence": 10, "seed": 0},
}


def kitti_sequence_ids(sequences: int) -> list[str]:
    """Official sequence ids written for ``sequences`` sequences: N - 1 training ids plus 08, sorted."""
    limit = len(KITTI_TRAIN_SEQUENCES) + 1
    if not 2 <= sequences <= limit:
        raise ValueError(f"semantickitti needs 2..{limit} sequences (training ids plus 08), got {sequences}")
    return sorted([*KITTI_TRAIN_SEQUENCES[: sequences - 1], KITTI_VAL_SEQUENCE])


def nuscenes_scene_names(sequences: int) -> list[str]:
    """Scene names written for ``sequences`` scenes: N - 2 mini_train scenes plus both mini_val scenes."""
    limit = len(NUSCENES_MINI_TRAIN) + len(NUSCENES_MINI_VAL)
    if not 3 <= sequences <= limit:
        raise ValueError(
            f"nuscenes needs 3..{limit} scenes (mini_train scenes plus both mini_val), got {sequences}"
        )
    return [*NUSCENES_MINI_TRAIN[: sequences - 2], *NUSCENES_MINI_VAL]


def _frames(sensor: str, scans: int, seed: int, sequence: int, bar: tqdm) -> Iterator[Frame]:
    for frame in simulate_sequence(sensor, scans, seed, sequence=sequence):
        yield frame
        bar.update(1)


def _generate_kitti(root: Path, sequences: int, scans: int, seed: int, bar: tqdm) -> None:
    for seq in kitti_sequence_ids(sequences):
        bar.set_postfix_str(f"sequence {seq}")
        frames = _frames(SENSOR["semantickitti"], scans, seed, int(seq), bar)
        scribble_seed = None if seq == KITTI_VAL_SEQUENCE else (seed, int(seq))
        write_kitti_sequence(root / "sequences" / seq, frames, scribble_seed)


def _generate_nuscenes(root: Path, sequences: int, scans: int, seed: int, bar: tqdm) -> None:
    writer = NuScenesWriter(root, seed)
    for name in nuscenes_scene_names(sequences):
        bar.set_postfix_str(name)
        number = int(name.removeprefix("scene-"))
        frames: Iterable[Frame] = _frames(SENSOR["nuscenes"], scans, seed, number, bar)
        writer.write_scene(
            name, frames, description=f"Simulated HDL-32E drive (rangecps simulator, seed {seed})"
        )
    writer.finish()


def _make_readable(root: Path) -> None:
    """Give the staging folder the permissions of an ordinary new folder (mkdtemp makes it private); what lies
    inside was created with ordinary permissions already."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(root, 0o777 & ~umask)


GENERATORS: dict[str, Callable[[Path, int, int, int, tqdm], None]] = {
    "semantickitti": _generate_kitti,
    "nuscenes": _generate_nuscenes,
}


def generate_dataset(
    fmt: str,
    out: Path,
    sequences: int | None = None,
    scans_per_sequence: int | None = None,
    seed: int | None = None,
    progress: bool = True,
) -> Path:
    """Simulate and write a labeled dataset.

    Args:
        fmt: ``"semantickitti"`` (SemanticKITTI + ScribbleKITTI) or ``"nuscenes"`` (v1.0-mini + lidarseg).
        out: dataset root to create; must not exist or be an empty folder. SemanticKITTI files go under
            ``out/sequences``, nuScenes tables under ``out/v1.0-mini``.
        sequences: number of sequences (KITTI, 2..11) or scenes (nuScenes, 3..10); None takes ``DEFAULTS``.
        scans_per_sequence: scans (keyframes) per sequence, >= 1; None takes ``DEFAULTS``.
        seed: non-negative seed of the scenes, trajectories and scribbles; None takes ``DEFAULTS``.
        progress: show a tqdm progress bar.

    Returns:
        ``out``, the dataset root.
    """
    if fmt not in GENERATORS:
        raise ValueError(f"unknown dataset format {fmt!r}; choose one of {sorted(GENERATORS)}")
    defaults = DEFAULTS[fmt]
    sequences = defaults["sequences"] if sequences is None else sequences
    scans = defaults["scans_per_sequence"] if scans_per_sequence is None else scans_per_sequence
    seed = defaults["seed"] if seed is None else seed
    if scans < 1:
        raise ValueError(f"scans_per_sequence must be >= 1, got {scans}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    # Check the count before any work, so a bad argument fails fast.
    (kitti_sequence_ids if fmt == "semantickitti" else nuscenes_scene_names)(sequences)

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(
            f"{out}: already exists and is not an empty folder; remove it or choose another path"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        with tqdm(
            total=sequences * scans, desc=f"simulating {fmt}", unit="scan", disable=not progress
        ) as bar:
            GENERATORS[fmt](staging, sequences, scans, seed, bar)
        _make_readable(staging)
        # rename(2) replaces a missing or empty folder atomically.
        os.replace(staging, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staging)
        raise
    return out
