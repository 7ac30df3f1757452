"""FIDNet (Zhao, Bai, Huang; "FIDNet: LiDAR Point Cloud Semantic Segmentation with Fully Interpolation
Decoding", IROS 2021): the range-view network of the published semi-supervised range-view tables of LaserMix.

Architecture, as in the authors' ``ResNet_34_point`` + ``SemanticHead`` and LaserMix's range-view copy:
- a per-pixel stem of 1x1 convs in -> 64 -> 128 -> 256 -> 512 (conv with bias, BN, LeakyReLU);
- ResNet-34 BasicBlock stages [3, 4, 6, 3] at 128 channels, strides 1, 2, 2, 2 (1, 1/2, 1/4, 1/8 resolution);
- fully interpolated decoding: stages 2-4 upsampled bilinearly (no parameters) to full resolution and
  concatenated with the stem and stage-1 features (512 + 4 * 128 = 1024 channels);
- a 1x1 head 1024 -> 512 -> 128 (conv with bias, BN, LeakyReLU) -> num_classes.

At width 1.0 and 20 classes it has 6,054,420 parameters with 5 input channels (the authors' range, x, y, z,
remission) and 6,054,484 with 6 (LaserMix's range-view input; ours: range, x, y, z, intensity, mask); both are
the published 6.05 M.
"""

from __future__ import annotations

import torch
from torch import nn

from rangecps.models.blocks import ConvBNAct, RangeSegmentor, ResNet34Point, init_weights, scale_channels


class FIDNet(RangeSegmentor):
    """FIDNet. (B, in_channels, H, W) -> logits (B, num_classes, H, W); it has no auxiliary heads, so
    ``forward(x, aux=True)`` returns ``[logits]``. ``width`` scales every channel count (1.0 = published)."""

    num_aux = 0

    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0) -> None:
        super().__init__(in_channels, num_classes)
        self.backbone = ResNet34Point(in_channels, width)
        mid, low = scale_channels(512, width), scale_channels(128, width)
        self.head = nn.Sequential(
            ConvBNAct(self.backbone.out_channels, mid, 1, bias=True),
            ConvBNAct(mid, low, 1, bias=True),
            nn.Conv2d(low, num_classes, 1),
        )
        init_weights(self)

    def _forward(self, x: torch.Tensor, aux: bool) -> list[torch.Tensor]:
        return [self.head(self.backbone(x))]
