"""Evaluation: kNN post-processing of range-image predictions and segmentation metrics. Knows no training."""

from rangecps.eval.knn import (
    inverse_gaussian_weights,
    knn_numba,
    knn_postprocess,
    knn_reference,
    knn_torch,
)
from rangecps.eval.metrics import ConfusionMatrix, format_table

__all__ = [
    "ConfusionMatrix",
    "format_table",
    "inverse_gaussian_weights",
    "knn_numba",
    "knn_postprocess",
    "knn_reference",
    "knn_torch",
]
