"""Building blocks shared by the range-view networks: conv-BN-act, the ResNet BasicBlock, the four residual
stages of ResNet-34, full-resolution feature fusion, FIDNet's ResNet34-point backbone and seeded initialisation.

All tensors are (B, C, H, W) float feature maps. Every channel count goes through ``scale_channels`` so that one
``width`` multiplier shrinks a network uniformly (width 1.0 is the published size).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal, overload

import torch
import torch.nn.functional as F
from torch import nn

# ResNet-34 block counts per stage; every stage keeps 128 channels in FIDNet and CENet.
RESNET34_DEPTHS: tuple[int, int, int, int] = (3, 4, 6, 3)
STAGE_CHANNELS = 128


def scale_channels(channels: int, width: float) -> int:
    """Channel count of a layer with ``channels`` channels at the published size, scaled by ``width``."""
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    return max(1, round(channels * width))


class ConvBNAct(nn.Sequential):
    """Conv2d -> BatchNorm2d -> LeakyReLU (the activation of FIDNet and CENet, slope 0.01).

    ``bias`` is kept configurable because FIDNet's 1x1 stem and head convolutions carry a bias before their BN
    (it is redundant, but it is part of the published parameter count) while CENet's 3x3 convolutions do not.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        bias: bool = False,
        act: bool = True,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=bias),
            nn.BatchNorm2d(out_channels),
        ]
        if act:
            layers.append(nn.LeakyReLU())
        super().__init__(*layers)


class BasicBlock(nn.Module):
    """ResNet BasicBlock: two 3x3 conv-BN with a residual connection and LeakyReLU.

    The stride sits on the first 3x3 conv; a 1x1 conv-BN projects the shortcut whenever the stride or the channel
    count changes. (B, in_channels, H, W) -> (B, out_channels, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act = nn.LeakyReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = ConvBNAct(in_channels, out_channels, 1, stride, bias=False, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class ResidualStages(nn.Module):
    """The four BasicBlock stages of ResNet-34 at strides 1, 2, 4, 8 relative to the input.

    Input (B, in_channels, H, W); output a list of four maps with ``channels`` channels each, of spatial sizes
    (H, W), ceil(H/2) x ceil(W/2), ceil(H/4) x ceil(W/4) and ceil(H/8) x ceil(W/8). Sizes need not be divisible by
    anything: a stride-2 3x3 conv with padding 1 maps n to ceil(n / 2).
    """

    def __init__(self, in_channels: int, channels: int, depths: Sequence[int] = RESNET34_DEPTHS) -> None:
        super().__init__()
        stages = []
        for i, depth in enumerate(depths):
            blocks = [BasicBlock(in_channels, channels, stride=1 if i == 0 else 2)]
            blocks += [BasicBlock(channels, channels) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            in_channels = channels
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def upsample_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Parameter-free bilinear upsampling of (B, C, h, w) to (B, C, *size), corners aligned as in FIDNet/CENet."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def fuse_full_resolution(stem: torch.Tensor, stages: Sequence[torch.Tensor]) -> torch.Tensor:
    """FIDNet's fully interpolated decoding: every stage output bilinearly upsampled to the stem's (H, W) and
    concatenated with the stem features. (B, C_stem, H, W) + stage maps -> (B, C_stem + sum C_stage, H, W)."""
    size = stem.shape[-2:]
    return torch.cat([stem, *(upsample_to(f, size) for f in stages)], dim=1)


class ResNet34Point(nn.Module):
    """FIDNet's "ResNet_34_point" backbone: a per-pixel (1x1) stem in -> 64 -> 128 -> 256 -> 512 (conv with bias,
    BN, LeakyReLU), the four ResNet-34 stages at 128 channels, and full-resolution fusion.

    (B, in_channels, H, W) float -> (B, out_channels, H, W) with out_channels = 512 + 4 * 128 = 1024 at width 1.
    """

    def __init__(self, in_channels: int, width: float = 1.0) -> None:
        super().__init__()
        dims = [in_channels] + [scale_channels(c, width) for c in (64, 128, 256, 512)]
        self.stem = nn.Sequential(*(ConvBNAct(a, b, 1, bias=True) for a, b in itertools.pairwise(dims)))
        stage_channels = scale_channels(STAGE_CHANNELS, width)
        self.stages = ResidualStages(dims[-1], stage_channels)
        self.out_channels = dims[-1] + len(RESNET34_DEPTHS) * stage_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.stem(x)
        return fuse_full_resolution(stem, self.stages(stem))


@torch.no_grad()
def init_weights(module: nn.Module, generator: torch.Generator | None = None) -> None:
    """Kaiming-normal convolutions (fan_out, as FIDNet and torchvision's ResNet), zero conv biases, BN weight 1
    and bias 0. With a ``generator`` the draws come from it alone and the global RNG is left untouched, so two
    networks built from different seeds differ (as Cross Pseudo Supervision needs) and equal seeds give equal
    weights."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class RangeSegmentor(nn.Module):
    """Base of the range-view networks; fixes the forward contract shared by every model in ``MODELS``.

    ``forward(x)`` -> main logits (B, num_classes, H, W), in train and eval mode alike.
    ``forward(x, aux=True)`` -> list ``[main, *aux]`` of ``1 + num_aux`` logit maps, each (B, num_classes, H, W);
    it is the call to use for training losses (pass ``aux=True`` through a DDP wrapper so its gradient hooks run).
    Subclasses implement ``_forward(x, aux)`` and skip the auxiliary heads when ``aux`` is False.
    """

    num_aux: int = 0

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (class 0 is the ignore class), got {num_classes}")
        self.in_channels = in_channels
        self.num_classes = num_classes

    def _forward(self, x: torch.Tensor, aux: bool) -> list[torch.Tensor]:
        # The base class is a contract only: every model in MODELS defines its own _forward.
        raise TypeError(f"{type(self).__name__} does not define _forward(x, aux); subclass a model in MODELS")

    @overload
    def forward(self, x: torch.Tensor, aux: Literal[False] = False) -> torch.Tensor: ...

    @overload
    def forward(self, x: torch.Tensor, aux: Literal[True]) -> list[torch.Tensor]: ...

    def forward(self, x: torch.Tensor, aux: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """x: (B, in_channels, H, W) float range image; any H, W >= 1."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects input (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        outputs = self._forward(x, aux)
        return outputs if aux else outputs[0]
