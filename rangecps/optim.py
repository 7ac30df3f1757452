"""The optimiser and learning-rate schedule of every run: AdamW and a cosine one-cycle schedule per trained net,
as the LaserMix and FRNet releases train (``optim`` section of the config: lr, betas, weight decay, eps, pct_start,
the two div factors, and whether beta1 cycles).

The two releases differ in one thing: the LaserMix range-view trainer uses torch's ``OneCycleLR``, which also
cycles AdamW's beta1 between 0.95 and 0.85 against the learning rate; FRNet's mmengine ``OneCycleLR`` schedules the
learning rate only, so beta1 stays ``betas[0]`` (``optim.cycle_momentum``)."""

from __future__ import annotations

import torch
from torch import nn

from rangecps.config import OptimConfig


def make_optimisers(
    cfg: OptimConfig, nets: list[nn.Module], total_steps: int
) -> tuple[list[torch.optim.AdamW], list[torch.optim.lr_scheduler.OneCycleLR]]:
    """One AdamW and one OneCycleLR (cosine, ``total_steps`` long) per trained net: CPS's two nets each have
    their own, so that each one's state is its own, as two separately trained networks would have."""
    opts = [
        torch.optim.AdamW(
            n.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, eps=cfg.eps
        )
        for n in nets
    ]
    scheds = [
        torch.optim.lr_scheduler.OneCycleLR(
            o,
            max_lr=cfg.lr,
            total_steps=total_steps,
            pct_start=cfg.pct_start,
            anneal_strategy="cos",
            div_factor=cfg.div_factor,
            final_div_factor=cfg.final_div_factor,
            cycle_momentum=cfg.cycle_momentum,
        )
        for o in opts
    ]
    return opts, scheds
