"""Validation during training: every net's mIoU on the validation split under the dataset's official convention.

Which number depends on the model: image models (FIDNet, CENet) are scored on range pixels, as the published
semi-supervised range-view tables are; point models (FRNet) on points, which they predict natively.
"""

from __future__ import annotations

import torch
from torch import nn

from rangecps import dist
from rangecps.data.build import DataBundle
from rangecps.data.sample import collate
from rangecps.device import to_device
from rangecps.eval.metrics import ConfusionMatrix, official_convention
from rangecps.eval.predict_points import is_point_net, point_net_forward, segment_point_batch


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
    """mIoU of every net (``miou_<name>``) on the validation split, under the dataset's official convention
    (semantic-kitti-api or nuscenes-devkit).

    - Image nets: range-pixel mIoU (every occupied pixel's label vs its prediction; fast, the number the
      published semi-supervised range-view tables report; point-level figures come from evaluation).
    - Point nets (FRNet): point-level mIoU, every point of the scans read with ``point_inputs=True``: a point
      takes its own prediction, a point without a pixel the scan's most frequent predicted class. This is
      ``rangecps-eval``'s ``point`` level for that net. A point model trained with RangeInterpolation sees the
      scans densified as in training (``data.interpolation``, the release's val pipeline); only the scans' own
      points are scored.

    A run's nets are all of one kind; a mix is refused. Each process takes every ``world``-th scan; confusion
    matrices are summed over processes.
    """
    points = {is_point_net(net) for net in nets}
    if len(points) > 1:
        raise ValueError(f"validate: nets {', '.join(names)} mix point and image models")
    point_model = points == {True}
    ds = data.dataset("val", with_points=False, point_inputs=point_model, interpolate=point_model)
    ds.records = ds.records[info.rank :: info.world]
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, num_workers=num_workers, collate_fn=collate
    )
    cms = [ConfusionMatrix(data.num_classes) for _ in nets]
    forwards = [point_net_forward([net], amp) for net in nets]
    for net in nets:
        net.eval()
    try:
        for batch in loader:
            if point_model:
                for forward, cm in zip(forwards, cms, strict=True):
                    _, scans = segment_point_batch(forward, batch, device, data.num_classes)
                    for b, scan in enumerate(scans):
                        n = int(batch["num_points"][b])
                        cm.update(batch["point_label"][b, :n].to(device), scan.plain)
                continue
            batch = to_device(batch, device, False)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                for net, cm in zip(nets, cms, strict=True):
                    pred = net(batch["input"])[:, 1:].argmax(1) + 1  # class 0 (ignore) is never predicted
                    cm.update(batch["label"][batch["mask"]], pred[batch["mask"]])
    finally:
        for net in nets:
            net.train()
    out = {}
    for name, cm in zip(names, cms, strict=True):
        cm.all_reduce(device)
        out[f"miou_{name}"] = cm.get_mean_iou(official_convention(data.dataset_cls.name))
    return out
