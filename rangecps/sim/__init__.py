"""Built-in LiDAR simulator: procedural streets, raycast by Velodyne HDL-64E / HDL-32E models.

``simulate_sequence(sensor, num_scans, seed, sequence)`` yields ``Frame`` objects; the writers in this package
turn them into SemanticKITTI, ScribbleKITTI and nuScenes-lidarseg files.
"""

from rangecps.sim.classes import SIM_CLASSES, SimClass
from rangecps.sim.scene import Scene
from rangecps.sim.sensors import SENSORS, SensorModel
from rangecps.sim.simulate import Frame, sequence_scene, simulate_sequence

__all__ = [
    "SENSORS",
    "SIM_CLASSES",
    "Frame",
    "Scene",
    "SensorModel",
    "SimClass",
    "sequence_scene",
    "simulate_sequence",
]
