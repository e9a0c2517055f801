"""Example ROS 2 node: subscribe to images, publish camera poses from a vloc map.

    python scripts/ros2_localizer_node.py --map maps/scene [--topic /camera/image_raw]
        [--camera 'PINHOLE w h fx fy cx cy'] [--frames DIR]

With rclpy (a ROS 2 install; not a vloc dependency) it subscribes to ``sensor_msgs/Image`` and
publishes ``geometry_msgs/PoseStamped`` (world_from_cam: position and orientation of the camera
in the map frame) on ``~/pose`` for every localized frame, using a :class:`vloc.localization.
tracking.Tracker` so consecutive frames use the prior. Without rclpy it runs the same Tracker over
an image folder given by ``--frames`` and prints the poses, so the code path can be tried anywhere.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from vloc.io.cameras import camera_from_text
from vloc.localization.localizer import Localizer
from vloc.localization.tracking import Tracker, iter_frames

logger = logging.getLogger("vloc.ros2")


def world_from_cam(result) -> tuple[np.ndarray, np.ndarray]:
    """``(position xyz, quaternion xyzw)`` of the camera in the map frame (ROS order)."""
    pose = result.cam_from_world.inverse()
    return np.asarray(pose.translation), np.asarray(pose.rotation.quat)


def run_ros(tracker: Tracker, topic: str) -> None:
    import rclpy
    from geometry_msgs.msg import PoseStamped
    from rclpy.node import Node
    from sensor_msgs.msg import Image

    class LocalizerNode(Node):
        def __init__(self):
            super().__init__("vloc_localizer")
            self.pub = self.create_publisher(PoseStamped, "~/pose", 10)
            self.create_subscription(Image, topic, self.on_image, 1)

        def on_image(self, msg: Image) -> None:
            channels = 1 if msg.encoding in ("mono8", "8UC1") else 3
            image = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step)[:, : msg.width * channels]
            image = image.reshape(msg.height, msg.width, channels).squeeze()
            if msg.encoding == "bgr8":
                image = image[..., ::-1].copy()
            result = tracker.track(image, name=f"{msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d}")
            if not result.success:
                self.get_logger().warn(f"not localized: {result.reason}")
                return
            xyz, q = world_from_cam(result)
            out = PoseStamped()
            out.header.stamp, out.header.frame_id = msg.header.stamp, "map"
            out.pose.position.x, out.pose.position.y, out.pose.position.z = map(float, xyz)
            o = out.pose.orientation
            o.x, o.y, o.z, o.w = map(float, q)
            self.pub.publish(out)

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
                xyz, q = world_from_cam(result)
                print(f"{stamp:.3f} {name} position {np.round(xyz, 4).tolist()} quat_xyzw {np.round(q, 5).tolist()}")
            else:
                print(f"{stamp:.3f} {name} failed: {result.reason}")
        return
    run_ros(tracker, args.topic)


if __name__ == "__main__":
    main()
