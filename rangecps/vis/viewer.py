"""Open3D views of a scan: off-screen renders to pictures, and the interactive window with its keys.

Keys: N next scan, P previous, G ground truth, R prediction, E errors, D range, I intensity, Q/Esc quit (mouse:
Open3D's usual orbit / pan / zoom). Off screen, the legacy ``Visualizer`` renders through EGL when no display is
available (Mesa on a machine without a GPU) and the picture is read back with ``capture_screen_float_buffer``.
Open3D (the ``vis`` extra) is imported where needed. Its window library looks for a Wayland display first and
prints ``error: XDG_RUNTIME_DIR is invalid or not set in the environment.`` when that variable is missing, even for
a render that then succeeds; :func:`runtime_dir` gives each window a private one where it is missing or invalid.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from rangecps.vis.scans import COLOR_MODES, ViewScan

# Driving direction in each format's sensor frame: KITTI's Velodyne x forward; nuScenes' LIDAR_TOP y forward.
FORWARD = {"kitti": (1.0, 0.0, 0.0), "nuscenes": (0.0, 1.0, 0.0)}
BACKGROUNDS = {"black": (0.0, 0.0, 0.0), "white": (1.0, 1.0, 1.0)}
KEYS = {
    "N": "next",
    "P": "previous",
    "G": "labels",
    "R": "pred",
    "E": "errors",
    "D": "range",
    "I": "intensity",
}


def has_display() -> bool:
    """Whether a window can open: an X11 or Wayland display is named in the environment."""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def usable_runtime_dir(path: str | None) -> bool:
    """Whether ``path`` is a usable ``XDG_RUNTIME_DIR``: an absolute path to a folder of this user that only this
    user may enter (mode 0700, as the XDG base directory specification asks)."""
    if not path or not os.path.isabs(path):
        return False
    try:
        info = os.stat(path)
    except OSError:
        return False
    return (
        stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) & 0o077 == 0
    )


@contextmanager
def runtime_dir() -> Iterator[None]:
    """Set ``XDG_RUNTIME_DIR`` to a private temporary folder while the block runs, when it is unset or invalid
    (a usable one is left alone); the variable and the folder are restored / removed afterwards."""
    before = os.environ.get("XDG_RUNTIME_DIR")
    if usable_runtime_dir(before):
        yield
        return
    folder = tempfile.mkdtemp(prefix="rangecps-xdg-")  # mode 0700
    os.environ["XDG_RUNTIME_DIR"] = folder
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("XDG_RUNTIME_DIR", None)
        else:
            os.environ["XDG_RUNTIME_DIR"] = before
        shutil.rmtree(folder, ignore_errors=True)


def _open3d() -> Any:
    try:
        import open3d as o3d
    except ImportError as e:
        raise ImportError(
            f"3D views need Open3D: pip install 'rangecps[vis]' (on Debian/Ubuntu also apt-get install "
            f"libusb-1.0-0); import failed: {e}"
        ) from e
    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
    return o3d


@dataclass(frozen=True)
class RenderSettings:
    """Window / image size in pixels, camera (``chase``: behind and above the sensor, looking ahead; ``bev``:
    straight down, driving direction up), ``radius`` = half the visible height at the look-at point (m)."""

    width: int = 1600
    height: int = 900
    view: str = "chase"
    radius: float = 30.0
    point_size: float = 2.0
    background: str = "black"


def _finite(scan: ViewScan, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """``(M, 3) float64`` finite points and their ``(M, 3) float64`` colours in [0, 1] (Open3D's types)."""
    keep = np.isfinite(scan.points[:, :3]).all(axis=1)
    return scan.points[keep, :3].astype(np.float64), scan.colors(mode)[keep].astype(np.float64) / 255.0


def _set_camera(vis: Any, xyz: np.ndarray, file_format: str, settings: RenderSettings) -> None:
    forward, up = np.array(FORWARD[file_format]), np.array([0.0, 0.0, 1.0])
    if settings.view == "bev":
        front, cam_up, lookat = up, forward, forward * 0.3 * settings.radius
    elif settings.view == "chase":
        front = -forward + 0.75 * up  # towards the camera from the look-at point
        cam_up, lookat = up, forward * 0.5 * settings.radius
    else:
        raise ValueError(f"unknown view {settings.view!r}; choose chase or bev")
    ctl = vis.get_view_control()
    ctl.set_lookat(lookat)
    ctl.set_front(front / np.linalg.norm(front))
    ctl.set_up(cam_up)
    # Open3D's zoom scales the bounding box's largest extent to half the visible height (60 deg field of view).
    extent = float((xyz.max(axis=0) - xyz.min(axis=0)).max()) if len(xyz) else 1.0
    ctl.set_zoom(float(np.clip(settings.radius / max(extent, 1e-6), 0.02, 2.0)))


def _style(vis: Any, settings: RenderSettings) -> None:
    if settings.background not in BACKGROUNDS:
        raise ValueError(f"unknown background {settings.background!r}; choose black or white")
    opt = vis.get_render_option()
    opt.background_color = np.array(BACKGROUNDS[settings.background])
    opt.point_size = settings.point_size


def _capture(vis: Any, settings: RenderSettings) -> np.ndarray:
    vis.poll_events()
    vis.update_renderer()
    buffer = np.asarray(vis.capture_screen_float_buffer(do_render=True))
    if buffer.shape != (settings.height, settings.width, 3):
        raise RuntimeError(
            f"Open3D rendered a {buffer.shape} image, not ({settings.height}, {settings.width}, 3)"
        )
    return np.round(np.clip(buffer, 0.0, 1.0) * 255.0).astype(np.uint8)


def _window(o3d: Any, cls: Any, settings: RenderSettings, visible: bool, title: str) -> Any:
    vis = cls()
    with runtime_dir():  # the display connection is made here; the variable is not read later
        created = vis.create_window(
            window_name=title, width=settings.width, height=settings.height, visible=visible
        )
    if not created:
        raise RuntimeError(
            "Open3D could not create a window or an off-screen (EGL) context: without a display it needs "
            "Mesa's EGL (libegl1) or a GPU driver"
        )
    return vis


def render_scan(scan: ViewScan, mode: str, settings: RenderSettings = RenderSettings()) -> np.ndarray:
    """Render ``scan`` coloured by ``mode`` off screen. Returns the ``(height, width, 3) uint8`` picture."""
    o3d = _open3d()
    xyz, colors = _finite(scan, mode)
    vis = _window(o3d, o3d.visualization.Visualizer, settings, False, scan.name)
    try:
        cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz))
        cloud.colors = o3d.utility.Vector3dVector(colors)
        vis.add_geometry(cloud)
        _style(vis, settings)
        _set_camera(vis, xyz, scan.file_format, settings)
        return _capture(vis, settings)
    finally:
        vis.destroy_window()


class Stepper:
    """What the viewer shows: which scan of a sequence and which colouring. No Open3D here, so the key logic is
    testable without a window. ``load(i)`` reads scan ``i`` of ``count``."""

    def __init__(
        self, count: int, load: Callable[[int], ViewScan], mode: str = "labels", start: int = 0
    ) -> None:
        if count < 1:
            raise ValueError("nothing to show: no scans")
        if not 0 <= start < count:
            raise ValueError(f"start scan {start} is not in 0..{count - 1}")
        self.count, self.load, self.index = count, load, start
        self.scan = load(start)
        self.mode = mode if self.scan.has(mode) else self._fallback()

    def _fallback(self) -> str:
        return "labels" if self.scan.has("labels") else "range"

    def step(self, delta: int) -> bool:
        """Move ``delta`` scans (clamped to the sequence); True when the scan changed."""
        index = min(max(self.index + delta, 0), self.count - 1)
        if index == self.index:
            return False
        self.index, self.scan = index, self.load(index)
        if not self.scan.has(self.mode):
            print(f"{self.scan.name}: no {self.mode} for this scan; showing {self._fallback()}")
            self.mode = self._fallback()
        return True

    def set_mode(self, mode: str) -> bool:
        """Switch colouring; False (and a message) when this scan lacks what ``mode`` shows."""
        if mode not in COLOR_MODES:
            raise ValueError(f"unknown colour mode {mode!r}")
        if not self.scan.has(mode):
            print(f"{self.scan.name}: no {'labels and predictions' if mode == 'errors' else mode} to show")
            return False
        self.mode = mode
        return True

    def key(self, action: str) -> bool:
        """Apply one of the actions of :data:`KEYS`; True when the picture must change."""
        if action in ("next", "previous"):
            return self.step(1 if action == "next" else -1)
        return self.set_mode(action)

    def describe(self) -> str:
        return f"[{self.index + 1}/{self.count}] {self.scan.name}: {self.mode}"


def build_viewer(
    stepper: Stepper, settings: RenderSettings, visible: bool = True
) -> tuple[Any, dict[str, Callable[[Any], bool]]]:
    """An Open3D ``VisualizerWithKeyCallback`` showing ``stepper``, and its key callbacks by key letter.

    ``visible=False`` makes it off screen (tests drive the callbacks and capture the screen)."""
    o3d = _open3d()
    vis = _window(o3d, o3d.visualization.VisualizerWithKeyCallback, settings, visible, "rangecps-vis")
    xyz, colors = _finite(stepper.scan, stepper.mode)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz))
    cloud.colors = o3d.utility.Vector3dVector(colors)
    vis.add_geometry(cloud)
    _style(vis, settings)
    _set_camera(vis, xyz, stepper.scan.file_format, settings)

    def on_key(action: str) -> Callable[[Any], bool]:
        def callback(v: Any) -> bool:
            if not stepper.key(action):
                return False
            # keep the camera where the user left it: update the cloud in place instead of re-adding it
            new_xyz, new_colors = _finite(stepper.scan, stepper.mode)
            cloud.points = o3d.utility.Vector3dVector(new_xyz)
            cloud.colors = o3d.utility.Vector3dVector(new_colors)
            v.update_geometry(cloud)
            print(stepper.describe())
            return True

        return callback

    callbacks = {letter: on_key(action) for letter, action in KEYS.items()}
    for letter, callback in callbacks.items():
        vis.register_key_callback(ord(letter), callback)
    return vis, callbacks


def show(stepper: Stepper, settings: RenderSettings) -> None:
    """Open the interactive window (blocks until it is closed)."""
    vis, _ = build_viewer(stepper, settings, visible=True)
    print("keys: " + ", ".join(f"{k} {a}" for k, a in KEYS.items()) + ", Q quit")
    print(stepper.describe())
    try:
        vis.run()
    finally:
        vis.destroy_window()
