"""kNN post-processing of range-image predictions (RangeNet++ style), exact in three implementations.

``rules`` states the semantics and holds ``knn_reference`` (plain loops, for tests); ``cpu`` holds ``knn_numba``
and ``tensor`` holds ``knn_torch``. Both are tested to return exactly the reference's labels.
``knn_postprocess`` picks the fast one for where the data lives.
"""

from __future__ import annotations

import numpy as np
import torch

from rangecps.eval.knn.cpu import knn_numba
from rangecps.eval.knn.rules import inverse_gaussian_weights, knn_reference
from rangecps.eval.knn.tensor import knn_torch

__all__ = ["inverse_gaussian_weights", "knn_numba", "knn_postprocess", "knn_reference", "knn_torch"]


def knn_postprocess(
    proj_range: np.ndarray | torch.Tensor,
    proj_argmax: np.ndarray | torch.Tensor,
    unproj_range: np.ndarray | torch.Tensor,
    rows: np.ndarray | torch.Tensor,
    cols: np.ndarray | torch.Tensor,
    num_classes: int,
    knn: int = 5,
    search: int = 5,
    sigma: float = 1.0,
    cutoff: float = 1.0,
    wrap: bool = True,
    device: str | torch.device | None = None,
) -> np.ndarray | torch.Tensor:
    """kNN post-processing where it is fastest; arguments as in ``knn_numba``.

    ``device=None`` means where ``proj_range`` lives (NumPy arrays: CPU). On CPU this runs ``knn_numba`` and
    returns what it was given: a NumPy array for NumPy input, a CPU tensor for tensor input. On any other
    device it runs ``knn_torch`` there and returns a tensor on that device.
    """
    is_tensor = isinstance(proj_range, torch.Tensor)
    if device is None:
        device = proj_range.device if is_tensor else torch.device("cpu")
    device = torch.device(device)
    args = (proj_range, proj_argmax, unproj_range, rows, cols)
    params = dict(num_classes=num_classes, knn=knn, search=search, sigma=sigma, cutoff=cutoff, wrap=wrap)
    if device.type == "cpu":
        arrays = [a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a) for a in args]
        labels = knn_numba(*arrays, **params)
        return torch.from_numpy(labels) if is_tensor else labels
    tensors = [torch.as_tensor(a).to(device) for a in args]
    return knn_torch(*tensors, **params)
