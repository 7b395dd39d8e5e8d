"""The ROS 2 adapter layer: message conversions and the nodes that feed frames to the ``Segmenter``.

Everything under ``seg_ros.ros`` imports rclpy or ROS message packages; the rest of ``seg_ros`` does not.
"""
