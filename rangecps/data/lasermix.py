"""LaserMix (Kong et al., CVPR 2023) in the range view.

LaserMix partitions two scans into the same inclination bands and takes alternate bands from each. Range-image
rows are inclination bands already (rows follow the pitch for the KITTI projection and the ring for nuScenes), so
mixing points by inclination and then projecting equals mixing the projected images row band by row band. Doing
it on the images lets the training step mix inputs, labels and pseudo-labels with one mask and no re-projection.
"""

from __future__ import annotations

import torch

# LaserMix draws the number of inclination bands from this set for every mixed pair.
BAND_CHOICES = (2, 3, 4, 5, 6)


def band_rows(
    height: int, num_bands: int, first_from_a: bool, device: torch.device | None = None
) -> torch.Tensor:
    """(height,) bool: True for rows taken from scan ``a``. Bands split the rows evenly, top to bottom, and
    alternate between the scans starting with ``a`` when ``first_from_a``."""
    band = torch.arange(height, device=device) * num_bands // height
    return (band % 2 == 0) == first_from_a


def lasermix_masks(
    batch: int, height: int, generator: torch.Generator, device: torch.device | None = None
) -> torch.Tensor:
    """(batch, height) bool row masks, one random LaserMix partition per pair (True: row from scan ``a``)."""
    masks = []
    for _ in range(batch):
        n = BAND_CHOICES[int(torch.randint(len(BAND_CHOICES), (1,), generator=generator))]
        first = bool(torch.randint(2, (1,), generator=generator))
        masks.append(band_rows(height, n, first, device))
    return torch.stack(masks)


def mix_rows(a: torch.Tensor, b: torch.Tensor, rows_from_a: torch.Tensor) -> torch.Tensor:
    """Mix two batches of images row by row.

    Args:
        a, b: (B, ..., H, W) tensors of one shape (inputs (B, C, H, W), labels or masks (B, H, W)).
        rows_from_a: (B, H) bool.

    Returns:
        (B, ..., H, W): rows of ``a`` where ``rows_from_a``, else rows of ``b``.
    """
    if a.shape != b.shape:
        raise ValueError(f"mix_rows: shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    shape = [a.shape[0]] + [1] * (a.dim() - 3) + [a.shape[-2], 1]
    return torch.where(rows_from_a.view(shape), a, b)
