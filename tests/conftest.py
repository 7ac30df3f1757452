"""Shared fixtures: small synthetic datasets, made once per test session by the built-in simulator, and a
one-thread setting for tests of tiny tensors."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def synthetic_kitti(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SemanticKITTI-format root: train sequence 00 and val sequence 08, 3 scans each, with scribbles."""
    from rangecps.sim.generate import generate_dataset

    return generate_dataset(
        "semantickitti", tmp_path_factory.mktemp("kitti") / "root", 2, 3, seed=0, progress=False
    )


@pytest.fixture(scope="session")
def synthetic_nuscenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A nuScenes-format v1.0-mini root: the two mini_val scenes and one mini_train scene, 2 keyframes each."""
    from rangecps.sim.generate import generate_dataset

    return generate_dataset(
        "nuscenes", tmp_path_factory.mktemp("nusc") / "root", 3, 2, seed=0, progress=False
    )


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run a test on one intra-op thread: for tiny tensors, on a loaded machine, two spinning threads per op
    made small nets tens of times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
