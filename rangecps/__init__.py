"""rangecps: semi-supervised LiDAR semantic segmentation in the range view."""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # `from rangecps import Segmenter` without importing torch on every `import rangecps`.
    if name == "Segmenter":
        from rangecps.deploy import Segmenter

        return Segmenter
    raise AttributeError(f"module 'rangecps' has no attribute {name!r}")
