"""Range-view segmentation networks. They know no data format: a (B, C, H, W) float tensor in, logits out.

Forward contract (the same for every model in ``MODELS``; see ``blocks.RangeSegmentor``):

- ``model(x)`` -> main logits, (B, num_classes, H, W) float, in train and eval mode alike. Use it for evaluation,
  pseudo-labelling and anything else that wants one prediction.
- ``model(x, aux=True)`` -> ``list[Tensor]``: the main logits first, then ``model.num_aux`` auxiliary logit maps
  (CENet: 3, from its 1/2, 1/4, 1/8 stages; FIDNet: none), every one upsampled to (B, num_classes, H, W). Use it
  for training losses. Auxiliary heads are only computed when asked for. Under DDP pass ``aux=True`` to the
  wrapper (``ddp_model(x, aux=True)``) so that DDP's gradient hooks run.

Input sizes need not be divisible by 8: every stage output is interpolated back to exactly (H, W), so 64 x 2048,
64 x 1920, 32 x 1920 (nuScenes) and small CPU crops such as 32 x 120 all work.

Point models (``POINT_MODELS``: FRNet) take points instead of an image: ``model(points, coors, batch_size, grid,
aux)`` (see :mod:`rangecps.models.frnet`); they predict every point directly and need no kNN.

``build_model(name, in_channels, num_classes, width=1.0, seed=None)`` builds one from ``MODELS`` or
``POINT_MODELS``. ``width``
scales every channel count (1.0 = published size; 0.25 trains on a CPU in minutes). ``seed`` initialises the
weights from a private ``torch.Generator`` without consuming the global RNG: the same seed gives identical
weights, different seeds different ones (Cross Pseudo Supervision needs two differently initialised nets).
"""

from __future__ import annotations

import torch

from rangecps.models.blocks import RangeSegmentor, init_weights
from rangecps.models.cenet import CENet
from rangecps.models.fidnet import FIDNet
from rangecps.models.frnet import FRNet

MODELS: dict[str, type[RangeSegmentor]] = {"fidnet": FIDNet, "cenet": CENet}
POINT_MODELS: dict[str, type[FRNet]] = {"frnet": FRNet}


def is_point_model(name: str) -> bool:
    """True for a model that takes points and predicts every point (FRNet), False for an image model."""
    return name in POINT_MODELS


def build_model(
    name: str, in_channels: int, num_classes: int, width: float = 1.0, seed: int | None = None
) -> RangeSegmentor | FRNet:
    """Build ``MODELS[name]`` or ``POINT_MODELS[name]``; ``num_classes`` counts the ignore class 0 (20 for
    SemanticKITTI, 17 for nuScenes).

    With ``seed=None`` the weights are drawn from the global RNG like any torch module. With a seed, module
    construction runs inside ``torch.random.fork_rng`` (so the global CPU RNG state is restored afterwards) and the
    weights are then redrawn from ``torch.Generator().manual_seed(seed)``.
    """
    cls = MODELS.get(name) or POINT_MODELS.get(name)
    if cls is None:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS | POINT_MODELS)}")
    if seed is None:
        return cls(in_channels, num_classes, width)
    with torch.random.fork_rng(devices=[]):
        model = cls(in_channels, num_classes, width)
    generator = torch.Generator().manual_seed(seed)
    if isinstance(model, FRNet):
        model.init_weights(generator)  # the release's own initialisation
    else:
        init_weights(model, generator)
    return model


__all__ = [
    "MODELS",
    "POINT_MODELS",
    "CENet",
    "FIDNet",
    "FRNet",
    "RangeSegmentor",
    "build_model",
    "is_point_model",
]
