"""Frames in and out, free of ROS: message-buffer codecs, frame sources and the synthetic road scene.

- ``codecs``: ``sensor_msgs/Image`` and ``CompressedImage`` buffers to arrays and back (every
  encoding the node accepts); the node's ``seg_ros.ros.conversions`` adds the rclpy messages.
- ``sources``: video files, image folders, bags, V4L2 cameras and the synthetic scene as one
  iterator of RGB frames (``sample_camera`` and ``seg-bag make`` play them).
- ``bagfiles``: what every reader of rosbag2 files agrees on (message types, storage suffixes).
- ``synthetic``: a road scene with its true labels, drawn from a camera model.
"""
