"""ROS 2 glue without ROS: the contents of ``PoseWithCovarianceStamped`` and a TF transform
(message decoding: :mod:`vloc.io.rosmsg`). ``scripts/ros2_localizer_node.py`` uses them; the tests
run them on plain objects, no ROS install needed.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from vloc.io.poses import world_pose_covariance


def fill_pose_with_covariance(msg: Any, result: Any, stamp: Any, frame_id: str = "map") -> Any:
    """Set a ``geometry_msgs/PoseWithCovarianceStamped``'s fields from a localized result."""
    world_from_cam = result.cam_from_world.inverse()
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    p, o = msg.pose.pose.position, msg.pose.pose.orientation
    p.x, p.y, p.z = map(float, world_from_cam.translation)
    o.x, o.y, o.z, o.w = map(float, world_from_cam.rotation.quat)  # pycolmap and ROS: x, y, z, w
    cov = (world_pose_covariance(result.cam_from_world, result.covariance) if result.covariance is not None
           else np.full((6, 6), 0.0))
    msg.pose.covariance = [float(v) for v in cov.ravel()]
    return msg


def fill_transform(msg: Any, result: Any, stamp: Any, frame_id: str = "map", child_frame_id: str = "camera") -> Any:
    """Set a ``geometry_msgs/TransformStamped`` (map -> camera) from a localized result."""
    world_from_cam = result.cam_from_world.inverse()
    msg.header.stamp, msg.header.frame_id, msg.child_frame_id = stamp, frame_id, child_frame_id
    t, r = msg.transform.translation, msg.transform.rotation
    t.x, t.y, t.z = map(float, world_from_cam.translation)
    r.x, r.y, r.z, r.w = map(float, world_from_cam.rotation.quat)
    return msg
