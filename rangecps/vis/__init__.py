"""Visualisation: Open3D views and renders of scans, range-image strips, and plots of training runs.

| module | holds |
|---|---|
| ``images`` | point colours (official label colours, errors, viridis for range / intensity), PNG writer, range strips |
| ``scans`` | scan, label and prediction files read into train ids; dataset splits with a run's predictions |
| ``viewer`` | Open3D: off-screen renders and the interactive window with its keys |
| ``runplots`` | training curves and the confusion matrix of a run's newest evaluation |
| ``main`` | the ``rangecps-vis`` command, ``vis_main`` |

Open3D and matplotlib are the ``vis`` extra; they are imported inside the functions that need them.
"""

from rangecps.vis.images import point_colors, range_strip, strip_bands, write_png
from rangecps.vis.main import vis_main
from rangecps.vis.runplots import plot_confusion, plot_curves, plot_run, read_confusion, read_metrics
from rangecps.vis.scans import ViewScan, load_scan, open_dataset, read_predictions
from rangecps.vis.viewer import RenderSettings, Stepper, build_viewer, render_scan, show

__all__ = [
    "RenderSettings",
    "Stepper",
    "ViewScan",
    "build_viewer",
    "load_scan",
    "open_dataset",
    "plot_confusion",
    "plot_curves",
    "plot_run",
    "point_colors",
    "range_strip",
    "read_confusion",
    "read_metrics",
    "read_predictions",
    "render_scan",
    "show",
    "strip_bands",
    "vis_main",
    "write_png",
]
