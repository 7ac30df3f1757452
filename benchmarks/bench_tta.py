"""Benchmark test-time augmentation per scan: ``Segmenter.predict`` with N views against the same Segmenter without.

One scan is what ``rangecps-infer`` does for it (the file already read): project and encode the scan (once per view
under TTA), run the network (once per view), average the views' softmax per point, and label every point (the kNN
vote on the averaged result for FIDNet; FRNet predicts every point itself). The nets are ``bench_infer``'s: seeded
random weights with BatchNorm statistics measured on one validation scan of ``data/synthetic_kitti`` (made on
first use), in the Segmenter ``bench_infer`` builds for torch (``Segmenter.from_checkpoint``'s forward and
precision). The in-run baseline is the same Segmenter with TTA off, timed on the same scans in the same process.

Reports per size the median ms per scan without TTA and with N views, their ratio (TTA / plain: the cost), and the
share of points whose label TTA changed on the timed scans. The label change says the path does something; it is
not the accuracy effect, which needs a trained net: ``rangecps-eval RUN --tta N`` against ``--tta 0`` measures it.

    python benchmarks/bench_tta.py [--sizes small frnet-small] [--views 4] [--repeats 5] [--threads 1]
        [--json benchmarks/results/tta.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench_infer import make_segmenter, set_threads
from common import write_result
from infer_models import DEFAULT_ROOT, SIZES, load_scans, prepare_models

from rangecps.data.tta import tta_views
from rangecps.io import read_kitti_points


def time_size(
    size_name: str, views: int, repeats: int, threads: int, root: Path, folder: Path, backend: str = "torch"
) -> dict[str, Any]:
    """Median ms per scan of ``Segmenter.predict`` at ``size_name`` without and with ``views`` views;
    ``backend``: ``torch`` (CPU) or ``torch-cuda`` (``bench_infer``'s)."""
    set_threads(threads)
    size = SIZES[size_name]
    pipeline, paths, knn = load_scans(size.width_px, root)
    device = "cuda" if backend.endswith("-cuda") else "cpu"
    models = prepare_models(size_name, root, folder, onnx=False, device=device)
    plain, info = make_segmenter(backend, size, pipeline, knn, models["weights"], None, threads, "auto")
    tta = replace(plain, views=tta_views(views, seed=0))
    scans = [read_kitti_points(paths[i % len(paths)]) for i in range(repeats)]
    plain.predict(scans[0]), tta.predict(scans[0])  # warm-up: numba caches, allocator
    runs: dict[str, list[float]] = {"plain": [], "tta": []}
    changed, points = 0, 0
    for points_i in scans:  # alternate, so that a change of machine load touches both alike
        labels = {}
        for name, seg in (("plain", plain), ("tta", tta)):
            start = time.perf_counter()
            labels[name] = seg.predict(points_i)
            runs[name].append(1000 * (time.perf_counter() - start))
        changed += int((labels["plain"] != labels["tta"]).sum())
        points += len(points_i)
    ms = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "size": size_name,
        "backend": backend,
        "model": size.describe(),
        "views": views,
        "knn": knn is not None and not size.points,
        "plain_ms": ms["plain"],
        "tta_ms": ms["tta"],
        "tta_over_plain": ms["tta"] / ms["plain"],
        "labels_changed_share": changed / max(points, 1),
        "points_per_scan": points / len(scans),
        "runs_ms": runs,
        "threads": threads,
        **info,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=["small", "frnet-small"])
    parser.add_argument("--views", type=int, default=4, help="test-time views (the FRNet release: 4)")
    parser.add_argument("--repeats", type=int, default=5, help="timed scans per size, each with and without")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "tta.json")
    args = parser.parse_args()
    if args.views < 1 or args.repeats < 1:
        print("error: --views and --repeats must be >= 1", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for size_name in args.sizes:
            r = time_size(size_name, args.views, args.repeats, args.threads, args.root, Path(folder))
            results.append(r)
            print(
                f"{r['model']:<32} plain {r['plain_ms']:8.1f} ms  TTA x{r['views']} {r['tta_ms']:8.1f} ms  "
                f"ratio {r['tta_over_plain']:.2f}x  labels changed {100 * r['labels_changed_share']:.1f} %"
            )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_result(
        args.json, {"benchmark": "tta", "views": args.views, "repeats": args.repeats, "results": results}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
