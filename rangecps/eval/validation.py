"""Validation during training: range-pixel mIoU of every net under the dataset's official convention."""

from __future__ import annotations

import torch
from torch import nn

from rangecps import dist
from rangecps.data.build import DataBundle
from rangecps.data.dataset import collate
from rangecps.device import to_device
from rangecps.eval.metrics import ConfusionMatrix, official_convention


@torch.no_grad()
def validate(
    nets: list[nn.Module],
    names: tuple[str, ...],
    data: DataBundle,
    device: torch.device,
    amp: torch.dtype | None,
    info: dist.DistInfo,
    batch_size: int,
    num_workers: int,
) -> dict[str, float]:
    """Range-pixel mIoU of every net (``miou_<name>``) on the validation split (fast; point-level figures come from
    evaluation), under the dataset's official convention (semantic-kitti-api or nuscenes-devkit).

    Each process takes every ``world``-th scan; confusion matrices are summed over processes.
    """
    ds = data.dataset("val", with_points=False)
    ds.records = ds.records[info.rank :: info.world]
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, num_workers=num_workers, collate_fn=collate
    )
    cms = [ConfusionMatrix(data.num_classes) for _ in nets]
    for net in nets:
        net.eval()
    for batch in loader:
        batch = to_device(batch, device, False)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            for net, cm in zip(nets, cms, strict=True):
                pred = net(batch["input"])[:, 1:].argmax(1) + 1  # class 0 (ignore) is never predicted
                cm.update(batch["label"][batch["mask"]], pred[batch["mask"]])
    for net in nets:
        net.train()
    out = {}
    for name, cm in zip(names, cms, strict=True):
        cm.all_reduce(device)
        out[f"miou_{name}"] = cm.get_mean_iou(official_convention(data.dataset_cls.name))
    return out
