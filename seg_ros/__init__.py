"""seg_ros: lightweight road-scene semantic segmentation for ROS 2.

The core (models, checkpoints, inference, data, training, bag evaluation) imports without rclpy;
only ``seg_ros.ros`` needs ROS 2.
"""

import os

__version__ = '0.1.0'

# PyTorch's OpenMP threads spin while they wait; on a small or shared CPU (a robot's computer) the
# spinning takes the cores the working threads need: eager ENet ran 7.6x slower here with the
# default (docs/BENCHMARKS.md). The variable is read when torch loads, so it is set before any
# seg_ros module imports torch; a value the user set is kept.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
