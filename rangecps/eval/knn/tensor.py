"""kNN post-processing in vectorised torch, on any device; returns ``knn_reference``'s labels."""

from __future__ import annotations

import math

import torch

from rangecps.eval.knn.rules import INDEX_BITS, check_inputs, inverse_gaussian_weights


def knn_torch(
    proj_range: torch.Tensor,
    proj_argmax: torch.Tensor,
    unproj_range: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    num_classes: int,
    knn: int = 5,
    search: int = 5,
    sigma: float = 1.0,
    cutoff: float = 1.0,
    wrap: bool = True,
    chunk: int = 1 << 16,
) -> torch.Tensor:
    """kNN post-processing in vectorised torch on the tensors' device; same arguments as ``knn_numba``.

    Works on ``chunk`` points at a time, to bound scratch memory to about ``chunk * S*S * 90`` bytes (150 MB
    at the default chunk for ``S = 5``). Returns ``(N,) int64`` on the input device.
    """
    device = proj_range.device
    proj_range = proj_range.to(torch.float32)
    proj_argmax = proj_argmax.to(device=device, dtype=torch.int64)
    unproj_range = unproj_range.to(device=device, dtype=torch.float32)
    rows = rows.to(device=device, dtype=torch.int64)
    cols = cols.to(device=device, dtype=torch.int64)
    check_inputs(proj_range, proj_argmax, unproj_range, rows, cols, num_classes, knn, search, sigma, cutoff)
    h, w = proj_range.shape
    pad, area = search // 2, search * search
    weights = torch.from_numpy(inverse_gaussian_weights(search, sigma)).to(device)
    offsets = torch.arange(area, device=device)
    d_row, d_col = offsets // search - pad, offsets % search - pad
    flat_range, flat_label = proj_range.reshape(-1), proj_argmax.reshape(-1)
    limit = torch.tensor(cutoff, dtype=torch.float32, device=device)
    out = torch.zeros(len(unproj_range), dtype=torch.int64, device=device)
    for start in range(0, len(unproj_range), chunk):
        sl = slice(start, start + chunk)
        has_pixel = rows[sl] >= 0
        r, c, rp = rows[sl][has_pixel], cols[sl][has_pixel], unproj_range[sl][has_pixel]
        rr = r[:, None] + d_row  # (n, S*S)
        cc = c[:, None] + d_col
        if wrap:
            cc = torch.remainder(cc, w)
        inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        flat = rr.clamp(0, h - 1) * w + cc.clamp(0, w - 1)
        nr = flat_range[flat]
        nr[:, area // 2] = rp  # the centre uses the point's own range
        valid = inside & (nr >= 0)
        valid[:, area // 2] = True
        dist = (nr - rp[:, None]).abs() * weights
        dist = torch.where(valid, dist, torch.full_like(dist, math.inf))
        # Non-negative float32 values order like their int32 bit patterns; appending the window index makes
        # every key unique, so topk's choice is exactly "smallest distance, then lowest window index".
        key = (dist.view(torch.int32).to(torch.int64) << INDEX_BITS) | offsets
        _, pick = torch.topk(key, knn, dim=1, largest=False, sorted=False)
        votes_ok = valid.gather(1, pick)
        if cutoff > 0:
            votes_ok &= dist.gather(1, pick) <= limit
        labels = flat_label[flat.gather(1, pick)]
        labels = torch.where(votes_ok, labels, torch.zeros_like(labels))  # bin 0 collects non-votes
        counts = torch.zeros(len(r), num_classes, dtype=torch.int32, device=device)
        counts.scatter_add_(1, labels, torch.ones_like(labels, dtype=torch.int32))
        top, winner = counts[:, 1:].max(dim=1)  # first maximum = lowest class id among ties
        own = flat_label[r * w + c]
        out[sl][has_pixel] = torch.where(top > 0, winner + 1, own)
    return out
