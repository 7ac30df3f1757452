"""Use a trained model anywhere: :class:`Segmenter` (Python), sensor presets, scan sources (files, folders, ROS
bags) for ``rangecps-infer``, and ONNX export (``rangecps-export``)."""

from rangecps.deploy.segmenter import GeometryWarning, Prediction, Segmenter

__all__ = ["GeometryWarning", "Prediction", "Segmenter"]
