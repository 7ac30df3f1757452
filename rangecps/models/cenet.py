"""CENet (Cheng, Han, Xiao; "CENet: Toward Concise and Efficient LiDAR Semantic Segmentation for Autonomous
Driving", ICME 2022), as in the authors' ``ResNet_34`` and LaserMix's range-view copy:
- a stem of 3x3 conv-BN-LeakyReLU in -> 64 -> 128 -> 128 (no conv bias);
- the ResNet-34 BasicBlock stages [3, 4, 6, 3] at 128 channels, strides 1, 2, 2, 2;
- stages 2-4 upsampled bilinearly to full resolution and concatenated with the stem and stage 1 (640 channels);
- a fused head of 3x3 conv-BN-LeakyReLU 640 -> 256 -> 128 and a 1x1 conv -> num_classes;
- training-time auxiliary heads, one 1x1 conv 128 -> num_classes on each of the 1/2, 1/4, 1/8 stage outputs.

The reference applies each auxiliary 1x1 conv after upsampling its features; here it runs at the stage's own
resolution and the logits are upsampled instead. Both give the same result, because bilinear weights sum to 1
and a 1x1 conv is affine per pixel, but the latter costs 4-64x fewer operations. The reference softmaxes its
outputs inside the network; ours returns logits, and the losses take it from there.
"""

from __future__ import annotations

import torch
from torch import nn

from rangecps.models.blocks import (
    RESNET34_DEPTHS,
    STAGE_CHANNELS,
    ConvBNAct,
    RangeSegmentor,
    ResidualStages,
    fuse_full_resolution,
    init_weights,
    scale_channels,
    upsample_to,
)


class CENet(RangeSegmentor):
    """CENet. (B, in_channels, H, W) -> logits (B, num_classes, H, W); ``forward(x, aux=True)`` returns
    ``[main, aux_1/2, aux_1/4, aux_1/8]``, all at (H, W). ``width`` scales every channel count."""

    num_aux = 3

    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0) -> None:
        super().__init__(in_channels, num_classes)
        c64, c128, c256 = (scale_channels(c, width) for c in (64, 128, 256))
        stage_channels = scale_channels(STAGE_CHANNELS, width)
        self.stem = nn.Sequential(
            ConvBNAct(in_channels, c64, 3), ConvBNAct(c64, c128, 3), ConvBNAct(c128, c128, 3)
        )
        self.stages = ResidualStages(c128, stage_channels)
        fused = c128 + len(RESNET34_DEPTHS) * stage_channels
        self.head = nn.Sequential(
            ConvBNAct(fused, c256, 3), ConvBNAct(c256, c128, 3), nn.Conv2d(c128, num_classes, 1)
        )
        self.aux_heads = nn.ModuleList(nn.Conv2d(stage_channels, num_classes, 1) for _ in range(self.num_aux))
        init_weights(self)

    def _forward(self, x: torch.Tensor, aux: bool) -> list[torch.Tensor]:
        stem = self.stem(x)
        stages = self.stages(stem)
        outputs = [self.head(fuse_full_resolution(stem, stages))]
        if aux:
            size = x.shape[-2:]
            outputs += [upsample_to(h(f), size) for h, f in zip(self.aux_heads, stages[1:], strict=True)]
        return outputs
