"""ROS bags written with rosbags' own writers from synthetic points, for the tests that read bags."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLOUD = "sensor_msgs/msg/PointCloud2"


def cloud_bytes(
    points: np.ndarray, ring: np.ndarray, *, width: int, point_step: int, row_pad: int, big_endian: bool
) -> bytes:
    """x, y, z, intensity float32 at 0..12 and ring uint16 at 16 in records of point_step bytes, rows padded."""
    e = ">" if big_endian else "<"
    dtype = np.dtype(
        {
            "names": ["x", "y", "z", "intensity", "ring"],
            "formats": [e + "f4"] * 4 + [e + "u2"],
            "offsets": [0, 4, 8, 12, 16],
            "itemsize": point_step,
        }
    )
    rec = np.zeros(len(points), dtype=dtype)
    for col, name in enumerate(["x", "y", "z", "intensity"]):
        rec[name] = points[:, col]
    rec["ring"] = ring
    rows = rec.view(np.uint8).reshape(-1, width * point_step)
    pad = np.full((len(rows), row_pad), 0xAB, dtype=np.uint8)  # junk, so padding that is read shows up
    return np.concatenate([rows, pad], axis=1).tobytes()


def cloud_msg(ts, points, ring, stamp_ns, *, height=1, point_step=18, row_pad=0, big_endian=False):
    """A typestore PointCloud2 of height x (N / height) points."""
    types = ts.types
    field = types["sensor_msgs/msg/PointField"]
    fields = [
        field(name=n, offset=4 * i, datatype=7, count=1) for i, n in enumerate(["x", "y", "z", "intensity"])
    ]
    fields.append(field(name="ring", offset=16, datatype=4, count=1))
    width = len(points) // height
    stamp = types["builtin_interfaces/msg/Time"](sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
    header_type = types["std_msgs/msg/Header"]
    extra = {"seq": 0} if "seq" in header_type.__dataclass_fields__ else {}  # ROS 1 headers carry a seq
    data = cloud_bytes(
        points, ring, width=width, point_step=point_step, row_pad=row_pad, big_endian=big_endian
    )
    return types[CLOUD](
        header=header_type(stamp=stamp, frame_id="lidar", **extra),
        height=height,
        width=width,
        fields=fields,
        is_bigendian=big_endian,
        point_step=point_step,
        row_step=width * point_step + row_pad,
        data=np.frombuffer(data, dtype=np.uint8),
        is_dense=False,
    )


def write_bag(path: Path, topics: dict, ros: int = 2, storage: str | None = None, **cloud) -> None:
    """Write {topic: [(points, ring, stamp_ns), ...]} (or {topic: "string"} for a non-cloud topic)."""
    from rosbags.typesys import Stores, get_typestore

    if ros == 1:
        from rosbags.rosbag1 import Writer

        ts = get_typestore(Stores.ROS1_NOETIC)
        writer, serialize = Writer(path), ts.serialize_ros1
    else:
        from rosbags.rosbag2 import StoragePlugin, Writer

        ts = get_typestore(Stores.ROS2_HUMBLE)
        kwargs = {"storage_plugin": StoragePlugin[storage]} if storage else {}
        writer, serialize = Writer(path, version=9, **kwargs), ts.serialize_cdr
    with writer:
        for topic, msgs in topics.items():
            if isinstance(msgs, str):
                conn = writer.add_connection(topic, "std_msgs/msg/String", typestore=ts)
                msg = ts.types["std_msgs/msg/String"](data=msgs)
                writer.write(conn, 1, serialize(msg, "std_msgs/msg/String"))
                continue
            conn = writer.add_connection(topic, CLOUD, typestore=ts)
            for pts, ring, stamp in msgs:
                writer.write(conn, stamp + 5, serialize(cloud_msg(ts, pts, ring, stamp, **cloud), CLOUD))
