"""Generate a labeled synthetic dataset in an official on-disk format: the toolkit's built-in default dataset.

``semantickitti`` writes ``<out>/sequences/XX/...`` (SemanticKITTI + ScribbleKITTI; see ``write_kitti``) from
the simulated HDL-64E. Sequences carry official ids so that the official split (train 00-07, 09, 10; val 08)
applies unchanged: ``sequences=N`` writes the first ``N - 1`` training ids in official order (00, 01, ...)
plus validation sequence 08 (``N = 1``: sequence 08 alone, for a quick look; training needs a training sequence
too). Scribbles are written for the training sequences only, as in ScribbleKITTI.

``nuscenes`` writes a ``v1.0-mini`` dataset root (see ``write_nuscenes``) from the simulated HDL-32E. Scenes
carry the names of the official mini scenes so that the devkit's ``mini_train`` / ``mini_val`` splits apply:
``sequences=N`` writes both ``mini_val`` scenes and the first ``N - 2`` ``mini_train`` scenes (``N = 2``: the
validation scenes alone). The devkit's lidarseg evaluation walks every scene of its split, so ``mini_val`` is
always complete, and ``mini_train`` is complete with the default ``N = 10``.

Output is deterministic: one seed gives byte-identical files (tokens are hashed from the seed, timestamps
count from a fixed epoch). The dataset is built in a hidden ``.partial`` folder beside ``out`` and renamed into
place when complete, so an interrupted run never leaves a half-written dataset at ``out``: the staging folder is
removed when generation fails, is interrupted (Ctrl-C) or terminated (SIGTERM); one left by a killed run (SIGKILL,
power loss) is removed by the next run into the same folder. A lock file beside ``out`` makes a second
generation into the same folder refuse at once (or wait, with ``wait=True``) instead of simulating in vain.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no lock; the rename still refuses to replace a finished dataset
    fcntl = None

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
    """Official sequence ids written for ``sequences`` sequences: N - 1 training ids plus 08, sorted (N = 1:
    08 alone)."""
    limit = len(KITTI_TRAIN_SEQUENCES) + 1
    if not 1 <= sequences <= limit:
        raise ValueError(
            f"semantickitti needs 1..{limit} sequences (validation sequence 08 plus N - 1 training ids), "
            f"got {sequences}"
        )
    return sorted([*KITTI_TRAIN_SEQUENCES[: sequences - 1], KITTI_VAL_SEQUENCE])


def nuscenes_scene_names(sequences: int) -> list[str]:
    """Scene names written for ``sequences`` scenes: N - 2 mini_train scenes plus both mini_val scenes."""
    low, limit = len(NUSCENES_MINI_VAL), len(NUSCENES_MINI_TRAIN) + len(NUSCENES_MINI_VAL)
    if not low <= sequences <= limit:
        raise ValueError(
            f"nuscenes needs {low}..{limit} scenes (both mini_val scenes, which the devkit evaluates together, "
            f"plus N - 2 mini_train scenes), got {sequences}"
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

_HOST = socket.gethostname().replace(".", "_")


def _staging_prefix(out: Path) -> str:
    """Names of the staging folders of ``out`` start with this; the host and process id that follow let a later
    run tell a folder whose writer is gone (killed) from one still being written."""
    return f".{out.name}."


def _remove_abandoned(out: Path) -> None:
    """Remove staging folders of ``out`` left by runs on this host whose process no longer exists."""
    prefix = _staging_prefix(out)
    for folder in out.parent.glob(f"{prefix}*.partial"):
        host, _, rest = folder.name[len(prefix) :].partition(".")
        pid = rest.partition(".")[0]
        if host != _HOST or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # alive under another user (EPERM), or cannot tell: leave it
            continue


class _Terminated(BaseException):
    """SIGTERM arrived while a dataset was being written (turned into an exception so the staging folder goes)."""


@contextlib.contextmanager
def _terminate_cleanly() -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`_Terminated` (so ``finally`` and ``except`` blocks run);
    when the block ends after a SIGTERM arrived, however it ends, the signal is delivered again under the default
    handler, so the process ends as a terminated one. Only in the main thread, and only over the default
    handler."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) not in (
        signal.SIG_DFL,
        None,
    ):
        yield
        return
    received = False

    def handler(signum: int, frame: object) -> None:
        nonlocal received
        received = True
        raise _Terminated

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        # The flag, not the exception's type, decides: a handler that runs inside a call from numba's compiled
        # code comes out as a SystemError wrapping _Terminated (seen in CI), which no except clause would match.
        if received:
            signal.raise_signal(signal.SIGTERM)


@contextlib.contextmanager
def _claim(out: Path, wait: bool) -> Iterator[None]:
    """Hold the lock file ``.<name>.lock`` beside ``out`` while the block runs: a second generation into the same
    folder fails at once (or waits, with ``wait``) instead of simulating a dataset it could not place. The lock
    goes with the process (flock), so a killed run leaves no stale lock."""
    if fcntl is None:
        yield
        return
    lock = out.parent / f".{out.name}.lock"
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise FileExistsError(
                f"{out}: another rangecps-prep is writing this folder now; wait for it or choose another folder"
            ) from None
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()


def generate_dataset(
    fmt: str,
    out: Path,
    sequences: int | None = None,
    scans_per_sequence: int | None = None,
    seed: int | None = None,
    progress: bool = True,
    wait: bool = False,
) -> Path:
    """Simulate and write a labeled dataset.

    Args:
        fmt: ``"semantickitti"`` (SemanticKITTI + ScribbleKITTI) or ``"nuscenes"`` (v1.0-mini + lidarseg).
        out: dataset root to create; must not exist or be an empty folder. SemanticKITTI files go under
            ``out/sequences``, nuScenes tables under ``out/v1.0-mini``.
        sequences: number of sequences (KITTI, 1..11) or scenes (nuScenes, 2..10); None takes ``DEFAULTS``.
        scans_per_sequence: scans (keyframes) per sequence, >= 1; None takes ``DEFAULTS``.
        seed: non-negative seed of the scenes, trajectories and scribbles; None takes ``DEFAULTS``.
        progress: show a tqdm progress bar.
        wait: when another process is generating into ``out``, wait for it (and then refuse, as ``out`` is no
            longer empty) instead of refusing at once.

    Raises:
        ValueError: a bad argument. FileExistsError: ``out`` is not an empty folder, or another process is
            writing it (or wrote it first).

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
    _check_free(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # outermost, so that the lock file goes too before a SIGTERM is delivered again
    with _terminate_cleanly(), _claim(out, wait):
        _check_free(out)  # again under the lock: a run that held it may just have finished
        _remove_abandoned(out)
        staging = Path(
            tempfile.mkdtemp(
                prefix=f"{_staging_prefix(out)}{_HOST}.{os.getpid()}.", suffix=".partial", dir=out.parent
            )
        )
        try:
            with tqdm(
                total=sequences * scans, desc=f"simulating {fmt}", unit="scan", disable=not progress
            ) as bar:
                GENERATORS[fmt](staging, sequences, scans, seed, bar)
            _make_readable(staging)
            # rename(2) replaces a missing or empty folder atomically, and refuses a folder with files.
            try:
                os.replace(staging, out)
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                    raise
                raise FileExistsError(
                    f"{out}: another rangecps-prep wrote {out} first; this run's dataset was discarded"
                ) from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return out


def _check_free(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(
            f"{out}: already exists and is not an empty folder; remove it or choose another path"
        )
