"""Training runs small enough for the tests: a 64x128 image, FIDNet at 1/8 width, one scan a step, no workers."""

from pathlib import Path

from rangecps.config import Config, load_config

TINY = [
    "data.width=128",
    "model.width=0.125",
    "data.num_workers=0",
    "data.batch_size=1",
    "data.unlabeled_batch_size=1",
    "train.log_every=1",
    "train.val_every=1000",
    "data.labels=50%",
]


def tiny(root: Path, *extra: str) -> Config:
    """The tiny config on the dataset at ``root``, with ``section.key=value`` overrides."""
    return load_config(None, [f"data.root={root}", *TINY, *extra])
