"""Shared fixtures: small synthetic datasets, made once per test session by the built-in simulator."""

from pathlib import Path

import pytest

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
