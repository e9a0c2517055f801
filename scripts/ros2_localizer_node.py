"""ROS 2 node: subscribe to images, publish camera poses from a vloc map.

    python scripts/ros2_localizer_node.py --map maps/scene [--topic /camera/image_raw]
        [--camera-info /camera/camera_info] [--camera 'PINHOLE w h fx fy cx cy'] [--frames DIR]

With rclpy (a ROS 2 install; not a vloc dependency) it subscribes to ``sensor_msgs/Image``
(every encoding of :data:`vloc.io.rosmsg.ENCODINGS`, through ``cv_bridge`` when installed; an
encoding it cannot decode is logged as an error naming it, never guessed) and to
``sensor_msgs/CameraInfo`` for the intrinsics (``--camera`` overrides; without either the focal
length is estimated per frame), and publishes for every localized frame a
``geometry_msgs/PoseWithCovarianceStamped`` on ``~/pose`` (the camera in the map frame, with the
6x6 covariance in ROS order) and the TF transform ``map`` -> ``--child-frame``, using a
:class:`vloc.localization.tracking.Tracker` so consecutive frames use the prior. Without rclpy it
runs the same Tracker over an image folder given by ``--frames`` and prints the poses.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from vloc.io.cameras import camera_from_text
from vloc.localization.localizer import Localizer
from vloc.localization.tracking import Tracker, iter_frames
from vloc.io.rosmsg import (camera_from_info, fill_pose_with_covariance, fill_transform, image_from_msg,
                           map_from_camera)

logger = logging.getLogger("vloc.ros2")


def run_ros(tracker: Tracker, topic: str, info_topic: str, child_frame: str) -> None:
    import rclpy
    from geometry_msgs.msg import PoseWithCovarianceStamped, TransformStamped
    from rclpy.node import Node
    from sensor_msgs.msg import CameraInfo, Image
    from tf2_ros import TransformBroadcaster

    class LocalizerNode(Node):
        def __init__(self):
            super().__init__("vloc_localizer")
            self.pub = self.create_publisher(PoseWithCovarianceStamped, "~/pose", 10)
            self.tf = TransformBroadcaster(self)
            self.create_subscription(Image, topic, self.on_image, 1)
            if tracker.camera is None:
                self.create_subscription(CameraInfo, info_topic, self.on_info, 1)

        def on_info(self, msg: CameraInfo) -> None:
            try:
                tracker.camera = camera_from_info(msg.width, msg.height, list(msg.k), list(msg.d), msg.distortion_model)
            except ValueError as exc:
                self.get_logger().error(str(exc))

        def on_image(self, msg: Image) -> None:
            try:
                image = image_from_msg(msg)
            except ValueError as exc:
                self.get_logger().error(f"frame not localized: {exc}")
                return
            result = tracker.track(image, name=f"{msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d}")
            if not result.success:
                self.get_logger().warn(f"not localized: {result.reason}")
                return
            self.pub.publish(fill_pose_with_covariance(PoseWithCovarianceStamped(), result, msg.header.stamp))
            self.tf.sendTransform(fill_transform(TransformStamped(), result, msg.header.stamp,
                                                 child_frame_id=child_frame))

    rclpy.init()
    node = LocalizerNode()
    try:
        rclpy.spin(node)
    finally:
        node.destroy_node()
        rclpy.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--map", type=Path, required=True)
    parser.add_argument("--topic", default="/camera/image_raw")
    parser.add_argument("--camera-info", default="/camera/camera_info", help="intrinsics, when --camera is not given")
    parser.add_argument("--child-frame", default="camera", help="the TF frame of the localized camera")
    parser.add_argument("--camera", help="'MODEL width height params...' (default: estimated per frame)")
    parser.add_argument("--frames", type=Path, help="without rclpy: an image folder to run instead")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    camera = camera_from_text(args.camera, "--camera") if args.camera else None
    tracker = Tracker(Localizer.load(args.map), camera=camera)
    try:
        import rclpy  # noqa: F401
    except ImportError:
        if args.frames is None:
            raise SystemExit("rclpy is not installed (source a ROS 2 setup); "
                             "pass --frames DIR to run without ROS") from None
        for stamp, name, image in iter_frames(args.frames, fps=10.0):
            result = tracker.track(image, name=name)
            if result.success:
                xyz, q = map_from_camera(result)
                print(f"{stamp:.3f} {name} position {np.round(xyz, 4).tolist()} quat_xyzw {np.round(q, 5).tolist()}")
            else:
                print(f"{stamp:.3f} {name} failed: {result.reason}")
        return
    run_ros(tracker, args.topic, args.camera_info, args.child_frame)


if __name__ == "__main__":
    main()
