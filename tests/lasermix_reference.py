"""Independent references for the LaserMix tests: band edges by counting, as the release's linspace places them."""

import numpy as np


def expected_bands(pitch: np.ndarray, low: float, high: float, n: int) -> np.ndarray:
    """Band of each inclination, 0 at the top: band k holds (edges[k + 1], edges[k]] with edges the N + 1 values
    of linspace(high, low); values outside [low, high] join the nearest band. Counts the inner edges at or above
    the inclination, so it shares no formula with ``LaserMix.row_bands``."""
    edges = np.linspace(high, low, n + 1)
    return (edges[None, 1:n] >= np.asarray(pitch, np.float64)[:, None]).sum(1)


def edge_distance(pitch: np.ndarray, low: float, high: float, n: int) -> float:
    """Smallest distance of any inclination to an inner band edge (the tests keep it away from float ties)."""
    edges = np.linspace(high, low, n + 1)[1:n]
    return float(np.abs(np.asarray(pitch)[:, None] - edges[None]).min())
