"""FRNet (Xu, Kong, Shuai, Liu; "FRNet: Frustum-Range Networks for Scalable LiDAR Segmentation"), rebuilt in
plain PyTorch from the authors' released model code and configs (no compiled scatter extension). Unlike the
image-in models in ``MODELS`` it works on points: it predicts one label per point, and its auxiliary heads predict
one label per frustum pixel.

Interface::

    model = FRNet(in_channels=4, num_classes=20, width=1.0)
    out = model(points, coors, batch_size, grid, aux=False)

- ``points``: (P, in_channels) float, every scan of the batch concatenated without padding; columns
  x, y, z, intensity [, more]. The first three must be x, y, z (distance and frustum-centre offsets come from them).
- ``coors``: (P, 3) int64, each point's (batch index, row, col) in the full-resolution frustum grid, i.e. its
  range-image pixel (the RangeNet++ spherical projection: ``rangecps.projection``). Points need not be sorted
  by batch index; a scan may have no points (its maps stay zero).
- ``batch_size``: B; ``grid``: (H, W), e.g. (64, 512) for SemanticKITTI, (32, 480) for nuScenes as released.
  Any H, W >= 1 work; with H, W divisible by 8 every stride matches the release exactly.
- returns a dict: ``"point_logits"`` (P, num_classes); with ``aux=True`` also ``"frustum_logits"``, a list of four
  (B, num_classes, H, W) maps from the auxiliary frustum heads, in the release's order: the fused full-resolution
  head map, then the outputs of ResNet stages 2, 3, 4 (strides 2, 4, 8, bilinearly upsampled; the stride-1 stage 1
  has no head). Train and eval mode return the same shapes; only batch-norm behaviour differs.

``num_classes`` counts the toolkit's ignore class 0, like every model here: the net outputs that many logits and
class 0 is simply never a training target. The release has the same count (SemanticKITTI 20, nuScenes 17; its
ignore class is the last index instead of 0), so the parameter count matches: 10,029,572 at width 1.0 with
``in_channels=4, num_classes=20`` (the README's "10.0 M"), 10,027,829 with 17 classes.

Architecture, as ``configs/_base_/models/frnet.py`` of the release sets it (SemanticKITTI and nuScenes share it;
only the grid, field of view and class count differ):

- frustum feature encoder: points decorated with distance and offset from their frustum's mean xyz
  (in_channels + 4 columns), BN, Linear-BN-ReLU 64 -> 128 -> 256, plain Linear 256, max-pooled per frustum
  pixel, Linear + ReLU compression to 16 channels;
- backbone: 3x3 conv-BN-HSwish stem 16 -> 64 -> 128 -> 128, ResNet-34 BasicBlock stages (3, 4, 6, 3) at 128
  channels, strides 1, 2, 2, 2, with frustum-to-point and point-to-frustum fusion plus residual attention at the
  stem and after each stage, and two fusion layers (256, 128) over the concatenated full-resolution maps (and
  over the concatenated point features);
- point head: the fused map sampled at every point, Linear-BN-ReLU 128 -> 256 -> 128 -> 64 with residual adds
  of the backbone's point features and the encoder's 256-, 128-, 64-channel point features, Linear -> classes;
- auxiliary frustum heads: 1x1 convs 128 -> classes.
- Norms: BatchNorm (eps 1e-3, momentum 0.01; the release's SyncBN). Activations: HSwish in the convolutional
  layers, ReLU in the point layers. Dropout: none (ratio 0).

``width`` scales every channel count (1.0 = released size; 0.25 for CPU runs). Weights are initialised as in
the release: PyTorch's defaults for convolutions, linears and norms, and N(0, 0.01) with zero bias for the
classifiers; ``init_weights(generator)`` redraws all of them from a private generator.

The release's losses (``configs/frnet/frnet-*_seg.py``): the point head takes cross-entropy (weight 1.0); each
of the four frustum heads takes cross-entropy 1.0, Lovasz-softmax 1.5 and boundary loss 1.0 against per-pixel
majority labels of its points (``frustum_labels``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn

from rangecps.models.blocks import scale_channels
from rangecps.models.frnet_blocks import (
    FRNetBackbone,
    FrustumFeatureEncoder,
    pixel_index,
    pixels_to_points,
    point_mlp,
)

# The columns of ``points`` the data path gives FRNet (``RangeDataset(point_inputs=True)``): as read, not normalised.
POINT_CHANNELS = ("x", "y", "z", "intensity")
# Released channel counts (configs/_base_/models/frnet.py), before the width factor.
ENCODER_CHANNELS = (64, 128, 256, 256)
COMPRESSED_CHANNELS = 16
STEM_CHANNELS = 128
STAGE_CHANNELS = (128, 128, 128, 128)
FUSE_CHANNELS = (256, 128)
HEAD_CHANNELS = (128, 256, 128, 64)
# Which backbone maps the auxiliary frustum heads read ("indices" in the release): 0 is the fused head map,
# 1..4 the outputs of stages 1..4 at full resolution.
AUX_MAPS = (0, 2, 3, 4)


class PointHead(nn.Module):
    """The release's point decoder (FRHead): per-point Linear-BN-ReLU layers, each output plus a skip feature,
    then a Linear classifier. forward(sampled (P, in), skips [(P, channels[i])] ...) -> (P, num_classes)."""

    def __init__(self, in_channels: int, channels: Sequence[int], num_classes: int) -> None:
        super().__init__()
        dims = [in_channels, *channels]
        self.mlps = nn.ModuleList(point_mlp(a, b) for a, b in itertools.pairwise(dims))
        self.classifier = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        for mlp, skip in zip(self.mlps, skips, strict=True):
            x = mlp(x) + skip
        return self.classifier(x)


class FRNet(nn.Module):
    """FRNet on points: see the module docstring for the interface, shapes and architecture."""

    num_aux = len(AUX_MAPS)

    def __init__(self, in_channels: int = 4, num_classes: int = 20, width: float = 1.0) -> None:
        super().__init__()
        if in_channels < 3:
            raise ValueError(f"in_channels must be >= 3 (x, y, z first), got {in_channels}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (class 0 is the ignore class), got {num_classes}")
        self.in_channels, self.num_classes, self.width = in_channels, num_classes, width
        enc = [scale_channels(c, width) for c in ENCODER_CHANNELS]
        stem = scale_channels(STEM_CHANNELS, width)
        stages = [scale_channels(c, width) for c in STAGE_CHANNELS]
        fuse = [scale_channels(c, width) for c in FUSE_CHANNELS]
        head = [scale_channels(c, width) for c in HEAD_CHANNELS]
        compressed = scale_channels(COMPRESSED_CHANNELS, width)
        # The head adds the backbone's point features to its first layer's output, then the encoder's per-point
        # outputs (all but the last, deepest first) to the next ones.
        skip_channels = [fuse[-1], *enc[-2::-1]]
        if head != skip_channels:
            raise ValueError(f"head channels {head} do not match the skip features {skip_channels}")
        self.encoder = FrustumFeatureEncoder(in_channels, enc, compressed)
        self.backbone = FRNetBackbone(compressed, enc[-1], stem, stages, fuse)
        self.head = PointHead(fuse[-1], head, num_classes)
        map_channels = [fuse[-1], *stages]
        self.aux_heads = nn.ModuleList(nn.Conv2d(map_channels[i], num_classes, 1) for i in AUX_MAPS)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """The release's initialisation, drawn from ``generator`` (the global RNG when None): PyTorch's default
        for every Linear and Conv2d (Kaiming-uniform with a = sqrt(5), bias U(+-1/sqrt(fan_in))), norms at weight 1,
        bias 0 and fresh running statistics, and the classifiers (point and frustum heads) N(0, 0.01), bias 0."""
        classifiers = {self.head.classifier, *self.aux_heads}
        for m in self.modules():
            if m in classifiers:
                nn.init.normal_(m.weight, 0.0, 0.01, generator=generator)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear | nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                if m.bias is not None:
                    bound = 1.0 / math.sqrt(m.weight[0].numel())
                    nn.init.uniform_(m.bias, -bound, bound, generator=generator)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_parameters()

    def forward(
        self,
        points: torch.Tensor,
        coors: torch.Tensor,
        batch_size: int,
        grid: Sequence[int],
        aux: bool = False,
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """points (P, in_channels) float, coors (P, 3) int64 (batch, row, col), batch_size B, grid (H, W) ->
        {"point_logits": (P, K)} and, with ``aux``, "frustum_logits": four (B, K, H, W) maps."""
        self._check(points, coors, batch_size, grid)
        pixels, encoder_points = self.encoder(points, coors, batch_size, grid)
        maps, backbone_points = self.backbone(pixels, encoder_points[-1], coors)
        sampled = pixels_to_points(maps[0], coors, 1)
        out: dict[str, torch.Tensor | list[torch.Tensor]] = {
            "point_logits": self.head(sampled, [backbone_points, *encoder_points[-2::-1]])
        }
        if aux:
            out["frustum_logits"] = [head(maps[i]) for head, i in zip(self.aux_heads, AUX_MAPS, strict=True)]
        return out

    def _check(self, points: torch.Tensor, coors: torch.Tensor, batch_size: int, grid: Sequence[int]) -> None:
        if points.dim() != 2 or points.shape[1] != self.in_channels or not points.is_floating_point():
            raise ValueError(
                f"points must be float (P, {self.in_channels}), got {points.dtype} {tuple(points.shape)}"
            )
        if coors.shape != (points.shape[0], 3) or coors.dtype != torch.int64:
            raise ValueError(
                f"coors must be int64 ({points.shape[0]}, 3), got {coors.dtype} {tuple(coors.shape)}"
            )
        if points.shape[0] == 0:
            raise ValueError("FRNet needs at least one point")
        h, w = (int(v) for v in grid)
        if batch_size < 1 or h < 1 or w < 1:
            raise ValueError(f"batch_size and grid must be positive, got {batch_size} and {tuple(grid)}")
        lo, hi = coors.amin(0).tolist(), coors.amax(0).tolist()
        if min(lo) < 0 or hi[0] >= batch_size or hi[1] >= h or hi[2] >= w:
            raise ValueError(
                f"coors out of range: (batch, row, col) span {lo}..{hi} for batch_size {batch_size}, grid {(h, w)}"
            )


def frustum_labels(
    labels: torch.Tensor, coors: torch.Tensor, batch_size: int, grid: Sequence[int], num_classes: int
) -> torch.Tensor:
    """Targets of the frustum heads, as the release makes them: each pixel takes the most frequent label of its
    points, the ignore class 0 counting as a label; pixels without points are 0.

    labels (P,) int64 in [0, num_classes), coors (P, 3) -> (B, H, W) int64. Ties go to the lowest real class and
    ignore wins only a strict majority (the release's argmax gives ties to the lowest index, and its ignore index
    is the last one)."""
    h, w = (int(v) for v in grid)
    n = batch_size * h * w
    counts = torch.bincount(pixel_index(coors, (h, w)) * num_classes + labels, minlength=n * num_classes)
    counts = counts.view(n, num_classes)
    order = torch.arange(1, num_classes + 1, device=labels.device) % num_classes  # 1, 2, ..., K-1, 0
    winner = order[counts[:, order].argmax(dim=1)]
    winner[counts.sum(dim=1) == 0] = 0
    return winner.view(batch_size, h, w)


__all__ = ["AUX_MAPS", "POINT_CHANNELS", "FRNet", "PointHead", "frustum_labels"]
