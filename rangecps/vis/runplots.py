"""Plots of a training run: curves from ``metrics.jsonl`` and the confusion matrix of its newest evaluation.

``metrics.jsonl`` lines are ``{"step": 10, "train/loss": ..., "train/lr": ..., ...}`` and
``{"step": 50, "val/miou_a": ...}`` (see :mod:`rangecps.train`). An evaluation is ``<run>/eval_*/metrics.json`` as
:mod:`rangecps.eval.evaluate` writes it: ``class_names``, ``headline`` and ``levels.<level>.confusion_matrix``
(rows = ground truth). Figures are drawn by matplotlib (the ``vis`` extra, Agg backend) and written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from rangecps.atomic import atomic_write


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """The records of a run's ``metrics.jsonl`` (``{"step": int, "train/loss": float, ...}`` per line).

    A last line without its newline (a run still writing) is skipped; any other unreadable line raises ValueError
    naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: metrics file not found (is this a rangecps-train run folder?)")
    text = path.read_text()
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("not an object with an integer 'step'")
        except ValueError as e:
            if number == len(lines) and not text.endswith("\n"):
                break
            raise ValueError(f"{path}: line {number} is not a metrics record: {e}") from e
        records.append(record)
    return records


def _series(records: list[dict[str, float]], key: str) -> tuple[list[int], list[float]]:
    pairs = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pairs], [float(p[1]) for p in pairs]


# Logged training values that are not losses: the schedule, the epoch, and LaserMix's bookkeeping.
NOT_LOSSES = ("train/lr", "train/epoch", "train/ramp", "train/pseudo_share", "train/bands")


def plot_curves(records: list[dict[str, float]], out: str | Path, title: str = "") -> Path:
    """One PNG of training losses, learning rate and validation scores against the step.

    Panels: every ``train/*`` loss (log scale when all positive), ``train/lr``, the consistency ramp and the share
    of unlabeled pixels given a pseudo-label (Mean Teacher, LaserMix), and every ``val/*`` key; a panel without
    data is left out. Returns ``out``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for r in records for k in r if k != "step"})
    groups = {
        "training losses": [k for k in keys if k.startswith("train/") and k not in NOT_LOSSES],
        "learning rate": [k for k in keys if k == "train/lr"],
        "semi-supervised schedule": [k for k in keys if k in ("train/ramp", "train/pseudo_share")],
        "validation (range-pixel mIoU)": [k for k in keys if k.startswith("val/")],
    }
    groups = {name: ks for name, ks in groups.items() if ks}
    if not groups:
        raise ValueError(f"{out}: the metrics hold no train/ or val/ values to plot")
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.2), squeeze=False)
    for ax, (name, ks) in zip(axes[0], groups.items(), strict=True):
        positive = True
        for k in ks:
            steps, values = _series(records, k)
            positive &= all(v > 0 for v in values)
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, ms=3, label=k.split("/", 1)[1])
        if name == "training losses" and positive:
            ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, out, 100)
    return Path(out)


def latest_evaluation(run_dir: str | Path) -> Path | None:
    """The newest ``<run>/eval_*/metrics.json`` (written by ``rangecps-eval``), or None."""
    found = [p for p in Path(run_dir).glob("eval_*/metrics.json") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def read_confusion(path: str | Path, level: str | None = None) -> tuple[np.ndarray, list[str], str]:
    """The ``(K, K)`` confusion matrix (rows ground truth), class names and title of an evaluation's metrics.

    ``level`` picks ``point_knn``, ``point`` or ``range_pixel``; None takes the file's ``headline``.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
        levels, names = doc["levels"], list(doc["class_names"])
        level = level or doc["headline"]
        entry = levels[level]
        matrix = np.asarray(entry["confusion_matrix"], dtype=np.int64)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: no confusion matrix to read ({type(e).__name__}: {e})") from e
    if matrix.shape != (len(names), len(names)):
        raise ValueError(f"{path}: confusion matrix {matrix.shape} does not match {len(names)} class names")
    title = f"{entry.get('description', level)}, {doc.get('split', '?')} split, net {doc.get('net', '?')}"
    return matrix, names, title


def plot_confusion(matrix: np.ndarray, names: list[str], out: str | Path, title: str = "") -> Path:
    """PNG of the row-normalised confusion matrix (each ground-truth row sums to 1; rows = ground truth).

    The ignore class 0 is left out when nothing was counted in its row or column (rangecps never predicts it and
    never counts its ground truth). Returns ``out``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix, dtype=np.float64)
    keep = np.arange(len(names))
    if matrix[0].sum() == 0 and matrix[:, 0].sum() == 0:
        keep = keep[1:]
    matrix = matrix[np.ix_(keep, keep)]
    rows = matrix.sum(axis=1, keepdims=True)
    norm = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    shown = [names[i] for i in keep]
    size = 2.5 + 0.42 * len(shown)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(shown)), shown, rotation=90, fontsize=8)
    ax.set_yticks(range(len(shown)), shown, fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    for i in range(len(shown)):
        for j in range(len(shown)):
            if norm[i, j] >= 0.005:
                color = "white" if norm[i, j] > 0.5 else "black"
                ax.text(j, i, f"{100 * norm[i, j]:.0f}", ha="center", va="center", fontsize=6, color=color)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the ground-truth class")
    ax.set_title(title or "confusion matrix (row-normalised)", fontsize=9)
    fig.tight_layout()
    _save(fig, out, 110)
    return Path(out)


def _save(fig: Any, out: str | Path, dpi: int) -> None:
    """Write ``fig`` as a PNG atomically and close it; an ``OSError`` (read-only folder, full disk) names ``out``."""
    import matplotlib.pyplot as plt

    try:
        with atomic_write(out, "wb") as f:
            fig.savefig(f, format="png", dpi=dpi)
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), str(out)) from None
    finally:
        plt.close(fig)


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> tuple[list[Path], list[str]]:
    """``curves.png`` from ``metrics.jsonl`` and ``confusion.png`` from the newest evaluation, in ``out_dir``
    (default ``<run>/plots``). Returns the files written and notes (e.g. that no evaluation was found)."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "plots"
    records = read_metrics(run_dir / "metrics.jsonl")
    written = [plot_curves(records, out_dir / "curves.png", title=run_dir.name)]
    notes = []
    metrics = latest_evaluation(run_dir)
    if metrics is None:
        notes.append(f"{run_dir}: no eval_*/metrics.json (run rangecps-eval first); plotted curves only")
    else:
        matrix, names, title = read_confusion(metrics)
        written.append(plot_confusion(matrix, names, out_dir / "confusion.png", f"{title}\n{metrics.parent}"))
    return written, notes
