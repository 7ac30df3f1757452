"""Results folders of evaluation and inference: built apart and moved into place whole (:class:`StagedFolder`),
sealed by ``manifest.json`` written last, and refused by readers when incomplete.

``rangecps-eval`` and ``rangecps-infer`` build a folder in a hidden sibling ``.<name>.partial-<pid>`` while holding
the destination's lock (:func:`rangecps.folders.folder_lock`) and move the finished folder into place in one
rename, so a failed or killed run leaves the earlier folder as it was. An evaluation's folder ends with
``manifest.json`` (checkpoint, step, revision, scans, the files, ``"complete": true``); readers of predictions
(:func:`read_manifest`, :func:`check_prediction_file`, ``rangecps-vis dataset``) refuse a rangecps-eval
prediction tree without a complete one, and the submission writers (:mod:`rangecps.eval.submit`) refuse to zip a
tree holding prediction files they did not write (:func:`refuse_strays`).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any

from rangecps.atomic import atomic_write
from rangecps.folders import LOCK_NAME, folder_lock

MANIFEST = "manifest.json"


class IncompleteResults(ValueError):
    """A prediction tree written by rangecps-eval without a complete ``manifest.json``."""


def refuse_strays(folder: Path, tree: str, written: list[str]) -> None:
    """Refuse to zip ``folder`` when it holds an incomplete manifest, or prediction files under ``folder/tree``
    that are not among ``written`` (left by another evaluation: the archive would mix the two)."""
    if (folder / MANIFEST).exists():
        read_manifest(folder)
    mine = set(written)
    strays = sorted(
        rel
        for p in (folder / tree).rglob("*")
        if p.is_file() and (rel := p.relative_to(folder).as_posix()) not in mine
    )
    if strays:
        raise ValueError(
            f"{folder / strays[0]}: not written by this evaluation ({len(strays)} such file(s) under "
            f"{folder / tree}); a submission.zip would mix evaluations, so none was written"
        )


def write_manifest(folder: Path, info: dict[str, Any]) -> Path:
    """Write ``folder/manifest.json``: ``info``, every file of the folder (relative paths, the lock and the
    manifest aside) and ``"complete": true``. Written last: it marks the folder complete."""
    files = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name not in (MANIFEST, LOCK_NAME)
    )
    path = folder / MANIFEST
    with atomic_write(path, "w") as f:
        json.dump({**info, "files": files, "complete": True}, f, indent=1)
    return path


_MANIFESTS: dict[Path, tuple[int, dict[str, Any], frozenset[str]]] = {}
AGAIN = "evaluate again with rangecps-eval --write-predictions"


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The complete ``manifest.json`` of a rangecps-eval results folder; :class:`IncompleteResults` otherwise."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise IncompleteResults(
            f"{folder}: no {MANIFEST}, so its predictions may come from an evaluation that did not finish, or "
            f"mix two (rangecps-eval before manifests); {AGAIN}"
        )
    try:
        stamp = path.stat().st_mtime_ns
        cached = _MANIFESTS.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IncompleteResults(f"{path}: unreadable ({e}); {AGAIN}") from None
    if (
        not isinstance(data, dict)
        or data.get("complete") is not True
        or not isinstance(data.get("files"), list)
    ):
        raise IncompleteResults(f"{path}: does not mark the results complete; {AGAIN}")
    _MANIFESTS[path] = (stamp, data, frozenset(map(str, data["files"])))
    return data


def prediction_root(path: str | Path) -> Path | None:
    """The results folder of a prediction file at rangecps-eval's paths (``sequences/SS/predictions/F.label``,
    ``lidarseg/<set>/F_lidarseg.bin``), else None."""
    p = Path(path).absolute()
    parts = p.parts
    if len(parts) > 4 and parts[-2] == "predictions" and parts[-4] == "sequences":
        return p.parents[3]
    if len(parts) > 3 and parts[-3] == "lidarseg" and p.name.endswith("_lidarseg.bin"):
        return p.parents[2]
    return None


_EVAL_NAME = re.compile(r"^\.?eval_[^/]+$")


def written_by_eval(folder: Path) -> bool:
    """Whether ``folder`` is (or was meant to be) a rangecps-eval results folder: it has a manifest,
    ``metrics.json`` or ``submission.zip``, or the name ``eval_<split>_<net>`` or of a staging folder. A dataset
    root (ground truth at the same paths) or another tool's prediction tree is none of these."""
    return (
        any((folder / name).exists() for name in (MANIFEST, "metrics.json", "submission.zip"))
        or bool(_EVAL_NAME.match(folder.name))
        or ".partial-" in folder.name
    )


def check_prediction_file(path: str | Path) -> None:
    """Refuse a prediction file of a rangecps-eval tree without a complete manifest, or not listed in it."""
    root = prediction_root(path)
    if root is None or not written_by_eval(root):
        return
    read_manifest(root)
    listed = _MANIFESTS[root / MANIFEST][2]
    rel = Path(path).absolute().relative_to(root).as_posix()
    if rel not in listed:
        raise IncompleteResults(
            f"{path}: not among the files {root / MANIFEST} lists, so not from that evaluation; {AGAIN}"
        )


def check_out_folder(out: Path, replace: bool, options: str, keep: list[tuple[str, Path]]) -> bool:
    """Check that ``out`` may become a results folder; returns whether it holds earlier results.

    Refused: a file; a folder that holds one of ``keep`` (``(what, path)`` pairs: the checkpoint, the inputs, the
    current folder; a results folder is replaced as a whole); a folder holding anything (its lock aside) unless
    ``replace`` (FileExistsError naming what it holds and ``options``)."""
    from rangecps.folders import refuse_earlier_results

    if not out.exists():
        return False
    if not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder; choose another --out")
    target = out.resolve()
    for what, path in keep:
        path = Path(path).resolve()
        if path == target or target in path.parents:
            raise ValueError(
                f"{out}: holds {what} {path}; a results folder is replaced as a whole, so choose one of its own"
            )
    held = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)
    if held and not replace:
        refuse_earlier_results(out, tuple(held[:5]), "earlier results", options)
    return bool(held)


class StagedFolder:
    """A results folder built in a hidden sibling and moved into place, whole, by :meth:`publish`.

    ``with StagedFolder(out, "evaluation") as stage:`` locks ``out`` (creating it; a second writer gets
    :class:`rangecps.folders.FolderInUse`), removes staging folders that killed runs left, and makes the empty
    ``stage.path`` (``<parent>/.<name>.partial-<pid>``). :meth:`publish` replaces ``out`` by it (two renames).
    Leaving the block without publishing removes the staging folder, and ``out`` too if this created it: a failed
    or killed run leaves ``out`` as it was. An ``OSError`` creating either names ``out``.
    """

    def __init__(self, out: str | os.PathLike, what: str) -> None:
        self.out = Path(out)
        self.what = what
        self.path = self.out.parent / f".{self.out.name}.partial-{os.getpid()}"
        self.published = False
        self.created = False

    def _siblings(self, kind: str) -> list[Path]:
        return list(self.out.parent.glob(f".{glob.escape(self.out.name)}.{kind}-*"))

    def __enter__(self) -> StagedFolder:
        self.created = not self.out.exists()
        self._lock = folder_lock(self.out, self.what)
        try:
            self._lock.__enter__()
        except OSError as e:
            raise OSError(
                e.errno,
                f"cannot write the results folder ({e.strerror or e}); choose another --out",
                str(self.out),
            ) from None
        try:
            for stale in self._siblings("partial") + self._siblings("old"):  # left by killed runs
                shutil.rmtree(stale, ignore_errors=True)
            self.path.mkdir()
        except OSError as e:
            self._cleanup()
            raise OSError(
                e.errno, f"cannot write beside the results folder ({e.strerror or e}); choose another --out",
                str(self.out),
            ) from None  # fmt: skip
        except BaseException:
            self._cleanup()
            raise
        return self

    def publish(self) -> None:
        """Replace ``out`` by the staging folder (``out``'s earlier content is deleted)."""
        old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
        had = self.out.exists()
        if had:
            os.rename(self.out, old)
        try:
            os.rename(self.path, self.out)
        except BaseException:
            if had:
                os.rename(old, self.out)
            raise
        self.published = True
        shutil.rmtree(old, ignore_errors=True)

    def _cleanup(self) -> None:
        try:
            shutil.rmtree(self.path, ignore_errors=True)
            if self.created and not self.published and self.out.is_dir():
                if [p.name for p in self.out.iterdir()] in ([], [LOCK_NAME]):
                    shutil.rmtree(self.out, ignore_errors=True)
        finally:
            self._lock.__exit__(None, None, None)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._cleanup()
