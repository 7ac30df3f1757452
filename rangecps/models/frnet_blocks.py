"""FRNet's building blocks: point <-> frustum-pixel scatter/gather, the frustum feature encoder and the
frustum-point fusion backbone. ``rangecps.models.frnet`` assembles them with the heads and documents the model.

Conventions shared by every function here:

- Points are one padding-free concatenation over the batch: ``feats`` (P, C) with ``coors`` (P, 3) int64 holding
  (batch index, row, col) of each point's frustum pixel in the full-resolution (H, W) grid.
- A frustum pixel at stride ``s`` is (batch, row // s, col // s) in a (B, C, h, w) map, with h, w the map's own
  size (``ceil(H / s)``, ``ceil(W / s)`` for the stride-2 3x3 convolutions used here).
- Pixels that no point falls into are zero in every scattered map, as in the release.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Norm settings of the released SemanticKITTI and nuScenes configs: SyncBN(eps=1e-3, momentum=0.01) everywhere.
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


def bn2d(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def bn1d(channels: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def pixel_index(coors: torch.Tensor, size: Sequence[int], stride: int = 1) -> torch.Tensor:
    """(P,) int64 flat index ``b * h * w + (row // stride) * w + col // stride`` into a (B, ., h, w) map."""
    h, w = int(size[0]), int(size[1])
    return (coors[:, 0] * h + coors[:, 1] // stride) * w + coors[:, 2] // stride


def scatter_max(src: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Per-segment maximum: (P, C) values and (P,) segment ids in [0, n) -> (n, C).

    A segment that receives no value is 0 (``include_self=False`` leaves the zero fill of untouched rows alone and
    keeps it out of the maximum of touched rows, so all-negative segments keep their true maximum). The gradient
    goes to the maximal entries of each segment (split evenly between exact ties)."""
    out = src.new_zeros((n, src.shape[1]))
    return out.scatter_reduce(0, index[:, None].expand_as(src), src, reduce="amax", include_self=False)


def scatter_mean(src: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Per-segment mean: (P, C), (P,) ids in [0, n) -> (n, C); empty segments are 0."""
    out = src.new_zeros((n, src.shape[1]))
    return out.scatter_reduce(0, index[:, None].expand_as(src), src, reduce="mean", include_self=False)


def points_to_pixels(
    feats: torch.Tensor, coors: torch.Tensor, batch_size: int, size: Sequence[int], stride: int
) -> torch.Tensor:
    """Max-pool point features (P, C) into their frustum pixels at ``stride``: -> (B, C, h, w), empty pixels 0."""
    h, w = int(size[0]), int(size[1])
    grid = scatter_max(feats, pixel_index(coors, (h, w), stride), batch_size * h * w)
    return grid.view(batch_size, h, w, -1).permute(0, 3, 1, 2).contiguous()


def pixels_to_points(maps: torch.Tensor, coors: torch.Tensor, stride: int) -> torch.Tensor:
    """Each point's feature vector from the (B, C, h, w) map at ``stride``: -> (P, C)."""
    rows = maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1])  # one (B * h * w, C) copy: gathers and
    return rows[
        pixel_index(coors, maps.shape[-2:], stride)
    ]  # its backward are ~2x faster than on (B, C, h, w)


def upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, *size), bilinear with corners aligned as released (a no-op at the same size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, tuple(size), mode="bilinear", align_corners=True)


def point_mlp(in_channels: int, out_channels: int) -> nn.Sequential:
    """Linear (no bias) -> BatchNorm1d -> ReLU on (P, C) point features."""
    return nn.Sequential(nn.Linear(in_channels, out_channels, bias=False), bn1d(out_channels), nn.ReLU(True))


def conv_bn_act(in_channels: int, out_channels: int, act: bool = True) -> nn.Sequential:
    """3x3 conv (no bias) -> BatchNorm2d [-> HSwish]."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        bn2d(out_channels),
    ]
    if act:
        layers.append(nn.Hardswish(True))
    return nn.Sequential(*layers)


class FrustumFeatureEncoder(nn.Module):
    """Per-point MLP over decorated point features, max-pooled into frustum pixels and compressed.

    Each point's input is its ``in_channels`` features (x, y, z, intensity[, ...]), then its distance
    ``||(x, y, z)||`` and its offset ``(x, y, z) - mean`` from the mean (x, y, z) of the points in its frustum pixel:
    ``in_channels + 4`` columns, batch-normalised, then Linear-BN-ReLU layers to ``channels[:-1]`` and a last plain
    Linear (with bias, no norm, no activation) to ``channels[-1]``. The last layer's output is max-pooled per
    frustum pixel and compressed by Linear + ReLU to ``compressed`` channels.

    forward(points (P, in_channels), coors (P, 3), batch_size, (H, W)) ->
    (pixel map (B, compressed, H, W) with empty pixels 0, list of every layer's per-point output (P, channels[i])).
    """

    def __init__(self, in_channels: int, channels: Sequence[int], compressed: int) -> None:
        super().__init__()
        dims = [in_channels + 4, *channels]
        self.pre_norm = bn1d(dims[0])
        layers: list[nn.Module] = [point_mlp(a, b) for a, b in itertools.pairwise(dims[:-1])]
        layers.append(nn.Linear(dims[-2], dims[-1]))
        self.layers = nn.ModuleList(layers)
        self.compress = nn.Sequential(nn.Linear(dims[-1], compressed), nn.ReLU(True))

    def forward(
        self, points: torch.Tensor, coors: torch.Tensor, batch_size: int, size: Sequence[int]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h, w = int(size[0]), int(size[1])
        occupied, inverse = torch.unique(pixel_index(coors, (h, w)), return_inverse=True)
        n = occupied.numel()
        xyz = points[:, :3]
        centre = scatter_mean(xyz, inverse, n)[inverse]
        x = torch.cat([points, xyz.norm(dim=1, keepdim=True), xyz - centre], dim=1)
        x = self.pre_norm(x)
        per_point = []
        for layer in self.layers:
            x = layer(x)
            per_point.append(x)
        pooled = self.compress(scatter_max(x, inverse, n))  # only occupied pixels pass the compression layer
        grid = pooled.new_zeros((batch_size * h * w, pooled.shape[1])).index_copy(0, occupied, pooled)
        return grid.view(batch_size, h, w, -1).permute(0, 3, 1, 2).contiguous(), per_point


class BasicBlock(nn.Module):
    """ResNet BasicBlock with HSwish: conv3x3(stride)-BN-HSwish-conv3x3-BN, plus the shortcut (a strided 1x1
    conv-BN where the stride or channel count changes), then HSwish."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = bn2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = bn2d(out_channels)
        self.act = nn.Hardswish(True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), bn2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))
        return self.act(out + (x if self.downsample is None else self.downsample(x)))


class FRNetBackbone(nn.Module):
    """Range-view ResNet-34 stages with frustum-point fusion at the stem and after every stage.

    Stem: 3x3 conv-BN-HSwish ``in -> stem/2 -> stem -> stem``. Then, at the stem and after each stage (strides
    1, 2, 4, 8):

    1. frustum-to-point: each point takes its pixel's features, concatenated with its own, through
       Linear-BN-ReLU to the stage's channels (the new point features);
    2. point-to-frustum: those point features max-pooled into the pixels at the stage's stride, concatenated
       with the map, through 3x3 conv-BN-HSwish (the stem ends here: this is its output);
    3. (stages only) residual attention: ``x = fused * sigmoid(BN(conv(HSwish(BN(conv(fused)))))) + x``.

    Finally the five maps, upsampled bilinearly (corners aligned) to (H, W), are concatenated and fused by two
    3x3 conv-BN-HSwish layers (``fuse_channels``); the five point-feature sets likewise by two Linear-BN-ReLU.

    forward(pixels (B, in, H, W), point_feats (P, point_in), coors (P, 3)) ->
    (list of five (B, C, H, W) maps: [fused head map, stage 1, stage 2, stage 3, stage 4], fused point features
    (P, fuse_channels[-1])).
    """

    depths = (3, 4, 6, 3)  # ResNet-34
    strides = (1, 2, 2, 2)

    def __init__(
        self,
        in_channels: int,
        point_in_channels: int,
        stem_channels: int,
        stage_channels: Sequence[int],
        fuse_channels: Sequence[int],
    ) -> None:
        super().__init__()
        c = stem_channels
        self.stem = nn.Sequential(conv_bn_act(in_channels, c // 2), conv_bn_act(c // 2, c), conv_bn_act(c, c))
        self.point_stem = point_mlp(c + point_in_channels, c)
        self.fusion_stem = conv_bn_act(2 * c, c)
        self.stages = nn.ModuleList()
        self.point_fusion = nn.ModuleList()
        self.pixel_fusion = nn.ModuleList()
        self.attention = nn.ModuleList()
        inplanes = c
        for depth, stride, planes in zip(self.depths, self.strides, stage_channels, strict=True):
            blocks = [BasicBlock(inplanes, planes, stride)]
            blocks += [BasicBlock(planes, planes) for _ in range(depth - 1)]
            self.stages.append(nn.Sequential(*blocks))
            self.point_fusion.append(point_mlp(inplanes + planes, planes))
            self.pixel_fusion.append(conv_bn_act(2 * planes, planes))
            self.attention.append(
                nn.Sequential(
                    conv_bn_act(planes, planes), conv_bn_act(planes, planes, act=False), nn.Sigmoid()
                )
            )
            inplanes = planes
        self.fuse = nn.ModuleList()
        self.point_fuse = nn.ModuleList()
        fused = c + sum(stage_channels)
        for channels in fuse_channels:
            self.fuse.append(conv_bn_act(fused, channels))
            self.point_fuse.append(point_mlp(fused, channels))
            fused = channels

    def forward(
        self, x: torch.Tensor, point_feats: torch.Tensor, coors: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        batch_size = x.shape[0]
        x = self.stem(x)
        point_feats = self.point_stem(torch.cat([pixels_to_points(x, coors, 1), point_feats], dim=1))
        pooled = points_to_pixels(point_feats, coors, batch_size, x.shape[-2:], 1)
        x = self.fusion_stem(torch.cat([pooled, x], dim=1))
        maps, points = [x], [point_feats]
        total_stride = 1
        for i, stage in enumerate(self.stages):
            total_stride *= self.strides[i]
            x = stage(x)
            point_feats = self.point_fusion[i](
                torch.cat([pixels_to_points(x, coors, total_stride), point_feats], dim=1)
            )
            pooled = points_to_pixels(point_feats, coors, batch_size, x.shape[-2:], total_stride)
            fused = self.pixel_fusion[i](torch.cat([pooled, x], dim=1))
            x = fused * self.attention[i](fused) + x
            maps.append(x)
            points.append(point_feats)
        size = maps[0].shape[-2:]
        maps = [upsample(m, size) for m in maps]
        head_map, head_points = torch.cat(maps, dim=1), torch.cat(points, dim=1)
        for fuse, point_fuse in zip(self.fuse, self.point_fuse, strict=True):
            head_map, head_points = fuse(head_map), point_fuse(head_points)
        maps[0] = head_map
        return maps, head_points
