"""seg_ros: lightweight road-scene semantic segmentation for ROS 2.

The core (models, checkpoints, inference, data, training, bag evaluation) imports without rclpy;
only ``seg_ros.ros`` needs ROS 2.
"""

__version__ = '0.1.0'
