"""rangecps: semi-supervised LiDAR semantic segmentation in the range view."""

__version__ = "0.1.0"
