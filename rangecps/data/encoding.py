"""The network's input encoding: how the six range-image channels (range, x, y, z, intensity, mask) are scaled.

Two encodings (``data.input``):

- ``"normalised"``: ``(value - mean) / std`` with the training scans' statistics (``stats.json``); 0 at empty
  pixels.
- ``"released"``: what the LaserMix range-view release feeds its networks (19f55e2,
  ``data/semantickitti/semantickitti.py`` and ``data/nuscenes/{utils,dataset_rv}.py``). KITTI formats: range / 80,
  x / 50, y / 50, z / 3, intensity as stored; nuScenes: raw values, with the *horizontal* range
  ``sqrt(x^2 + y^2)`` in the range channel. Empty pixels hold -1 in every channel before the scaling (so -1/80,
  -1/50, -1/50, -1/3, -1 on KITTI), as the release fills its images with -1. The mask channel is 1 or 0.

The release orders its channels x, y, z, intensity, range, mask; rangecps keeps range first. For a network trained
from scratch a permutation of input channels is the same model (the first convolution's weights are drawn
independently), and every other part of rangecps (statistics, cache, strips) reads range first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rangecps.projection import Projection, gather_channels

# The release's divisors (range, x, y, z, intensity) for the KITTI formats.
RELEASED_KITTI_SCALE = (80.0, 50.0, 50.0, 3.0, 1.0)


@dataclass(frozen=True)
class InputEncoding:
    """Filled pixels hold ``(value - offset) / scale`` per channel, empty pixels ``empty``; the range channel is
    the horizontal range when ``horizontal_range``. Each tuple has 5 values: range, x, y, z, intensity."""

    offset: tuple[float, ...]
    scale: tuple[float, ...]
    empty: tuple[float, ...] = (0.0,) * 5
    horizontal_range: bool = False

    @classmethod
    def make(
        cls, kind: str, file_format: str, mean: tuple[float, ...], std: tuple[float, ...]
    ) -> InputEncoding:
        """The encoding ``kind`` ("normalised" or "released") for a dataset of ``file_format``."""
        if kind == "normalised":
            return cls(tuple(mean), tuple(std))
        if kind != "released":
            raise ValueError(f"data.input: unknown input encoding {kind!r}; choose normalised or released")
        scale = (1.0,) * 5 if file_format == "nuscenes" else RELEASED_KITTI_SCALE
        return cls((0.0,) * 5, scale, tuple(-1.0 / s for s in scale), file_format == "nuscenes")

    def _fix(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Apply the horizontal range and the empty value to an image whose filled pixels are encoded."""
        o = np.asarray(self.offset, np.float32)
        s = np.asarray(self.scale, np.float32)
        if self.horizontal_range:
            x, y = image[1] * s[1] + o[1], image[2] * s[2] + o[2]
            image[0] = np.where(mask, (np.hypot(x, y) - o[0]) / s[0], 0.0)
        if any(self.empty):
            empty = np.asarray(self.empty, np.float32).reshape(5, 1, 1)
            image[:5] = np.where(mask, image[:5], empty)
        return image

    def __call__(self, points: np.ndarray, proj: Projection) -> np.ndarray:
        """``(6, H, W) float32`` encoded input of ``points (N, >=4)`` projected as ``proj``."""
        image = gather_channels(points, proj, self.offset, self.scale)
        return self._fix(image, proj.mask)

    def encode_raw(self, image: np.ndarray) -> np.ndarray:
        """Encode, in place, a ``(6, H, W)`` image of raw values (0 where empty), e.g. a cached one."""
        mask = image[5] > 0
        o = np.asarray(self.offset, np.float32).reshape(5, 1, 1)
        inv = (1.0 / np.asarray(self.scale, np.float32)).reshape(5, 1, 1)
        image[:5] = (image[:5] - o) * inv * mask
        return self._fix(image, mask)
