"""What every reader and writer of rosbag2 files here agrees on: message types and storage files."""

from __future__ import annotations

from pathlib import Path

from rosbags.typesys import Stores, get_typestore

__all__ = ['STORAGE_SUFFIXES', 'TYPESTORE', 'is_bag']

# Image, CompressedImage, Header, String and Float32MultiArray are the same in every ROS 2 distribution.
TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)

STORAGE_SUFFIXES = {'.mcap': 'mcap', '.db3': 'sqlite3'}
"""Storage file suffix -> rosbag2 storage plug-in."""


def is_bag(path: Path) -> bool:
    """A storage file, or a folder with ``metadata.yaml`` or storage files of its own."""
    if path.is_file():
        return path.suffix in STORAGE_SUFFIXES
    return path.is_dir() and ((path / 'metadata.yaml').is_file() or any(
        child.suffix in STORAGE_SUFFIXES and child.is_file() for child in path.iterdir()))
