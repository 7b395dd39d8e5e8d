"""Sources of RGB camera frames, without rclpy: the synthetic road scene, videos, image folders,
rosbag2 recordings and V4L2 cameras.

``open_source(spec)`` picks a source from one string, the ``source`` parameter of ``sample_camera``:

- ``synthetic``: the moving synthetic road scene of ``seg_ros.frames.synthetic``;
- ``v4l2:/dev/video0``: a V4L2 camera, through OpenCV;
- a rosbag2 (a folder with ``metadata.yaml``, or one ``.db3`` / ``.mcap`` file): the
  ``sensor_msgs/Image`` or ``CompressedImage`` messages of one topic, read with ``rosbags``;
- any other folder: its images, sorted by file name;
- any other file: a video that OpenCV decodes.

Every source is a ``FrameSource``: iterating it reads it once from the start and yields H x W x 3
uint8 RGB frames. ``play`` turns one into the stream a camera publishes: resized to a fixed size and,
for a finite source, started again at its end when looping. Problems (a missing path, a file
OpenCV cannot decode, a bag without image topics) raise ``SourceError`` naming the source.

Bags are read with ``rosbags`` and their images decoded by ``seg_ros.frames.codecs``: no source
needs ROS installed.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
from rosbags.rosbag2 import Reader

from seg_ros.frames.bagfiles import TYPESTORE, is_bag
from seg_ros.frames.codecs import compressed_to_array, direct_to_rgb, image_to_array
from seg_ros.frames.synthetic import SyntheticRoadScene
from seg_ros.vocabulary import IMAGE_SUFFIXES

__all__ = [
    'BAG_IMAGE_TYPES',
    'BagSource',
    'FrameSource',
    'ImageFolderSource',
    'SourceError',
    'SyntheticSource',
    'V4L2Source',
    'VideoSource',
    'open_source',
    'play',
]

BAG_IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')
"""Message types a bag source replays."""

_V4L2_PREFIX = 'v4l2:'


class SourceError(ValueError):
    """A frame source that cannot be opened or read: missing, unreadable, empty, or without images."""


class FrameSource(ABC):
    """A sequence of H x W x 3 uint8 RGB frames; iterating it reads it once from the start."""

    endless = False
    """True for a source that never runs out (a live camera, the synthetic scene)."""

    intrinsics: tuple[float, float, float, float] | None = None
    """(fx, fy, cx, cy) of an undistorted camera, where the source knows them (the synthetic scene)."""

    @abstractmethod
    def __iter__(self) -> Iterator[np.ndarray]:
        """The frames, from the first; whatever they hold open is released when the iterator is closed."""


class SyntheticSource(FrameSource):
    """The synthetic road scene, advancing ``1 / rate`` seconds of scene time per frame."""

    endless = True

    def __init__(self, width: int, height: int, rate: float, seed: int = 0) -> None:
        if rate <= 0:
            raise SourceError(f'synthetic source: rate {rate} must be positive')
        self._scene = SyntheticRoadScene(width, height, seed)
        self.intrinsics = self._scene.intrinsics
        self._period = 1.0 / rate

    def __iter__(self) -> Iterator[np.ndarray]:
        for index in itertools.count():
            yield self._scene.frame(index * self._period)[0]

    def __str__(self) -> str:
        return 'synthetic road scene'


class VideoSource(FrameSource):
    """The frames of a video file that OpenCV can decode."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        capture = cv2.VideoCapture(str(self.path))
        try:
            if not capture.isOpened() or not capture.read()[0]:
                raise SourceError(f'video {self.path}: OpenCV cannot decode it (not a video, or no codec)')
        finally:
            capture.release()

    def __iter__(self) -> Iterator[np.ndarray]:
        capture = cv2.VideoCapture(str(self.path))
        try:
            while True:
                ok, bgr = capture.read()
                if not ok:
                    return
                yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        finally:
            capture.release()

    def __str__(self) -> str:
        return f'video {self.path}'


class ImageFolderSource(FrameSource):
    """The images of a folder (``IMAGE_SUFFIXES``), sorted by file name."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.files = sorted(path for path in self.folder.iterdir()
                            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())
        if not self.files:
            raise SourceError(f'image folder {self.folder}: no images in it '
                              f'(looked for {", ".join(sorted(IMAGE_SUFFIXES))})')

    def __iter__(self) -> Iterator[np.ndarray]:
        for path in self.files:
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise SourceError(f'image folder {self.folder}: {path.name} is not a readable image')
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def __str__(self) -> str:
        return f'image folder {self.folder} ({len(self.files)} images)'


class BagSource(FrameSource):
    """The ``Image`` or ``CompressedImage`` messages of one topic of a rosbag2 (sqlite3 or mcap).

    ``topic`` may be empty when the bag has exactly one image topic.
    """

    def __init__(self, path: str | Path, topic: str = '') -> None:
        self.path = Path(path)
        with self._reading() as reader:
            topics = sorted({c.topic for c in reader.connections if c.msgtype in BAG_IMAGE_TYPES})
        listed = ', '.join(topics) or 'none'
        if topic and topic not in topics:
            raise SourceError(f'rosbag2 {self.path}: no Image or CompressedImage topic {topic!r}; '
                              f'image topics: {listed}')
        if not topic and len(topics) != 1:
            problem = 'has no Image or CompressedImage topic' if not topics else f'has image topics {listed}'
            raise SourceError(f'rosbag2 {self.path} {problem}; name one with bag_topic')
        self.topic = topic or topics[0]

    @contextmanager
    def _reading(self) -> Iterator[Reader]:
        """The bag's reader, open while in the ``with`` block."""
        try:  # the constructor reads metadata.yaml: a folder of storage files without it fails there
            reader = Reader(self.path)
            reader.open()
        except Exception as error:  # ReaderError, OSError, and the sqlite3, mcap and YAML errors beneath
            raise SourceError(f'rosbag2 {self.path}: cannot be read ({error})') from error
        try:
            yield reader
        finally:
            reader.close()

    def __iter__(self) -> Iterator[np.ndarray]:
        with self._reading() as reader:
            connections = [c for c in reader.connections if c.topic == self.topic]
            for index, (connection, _, raw) in enumerate(reader.messages(connections=connections)):
                try:
                    msg = TYPESTORE.deserialize_cdr(raw, connection.msgtype)
                    frame = _message_to_rgb(msg, compressed=connection.msgtype == BAG_IMAGE_TYPES[1])
                except (ValueError, KeyError) as error:  # ConversionError is a ValueError
                    raise SourceError(f'rosbag2 {self.path}: message {index} of {self.topic}: {error}') \
                        from error
                yield frame

    def __str__(self) -> str:
        return f'rosbag2 {self.path} topic {self.topic}'


class V4L2Source(FrameSource):
    """A V4L2 camera device such as ``/dev/video0``, opened with OpenCV's V4L2 backend."""

    endless = True

    def __init__(self, device: str) -> None:
        self.device = device
        if not Path(device).exists():
            raise SourceError(f'V4L2 camera {device}: no such device')
        self._open().release()  # fail at start-up, not at the first frame

    def _open(self) -> cv2.VideoCapture:
        capture = cv2.VideoCapture(self.device, cv2.CAP_V4L2)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f'V4L2 camera {self.device}: cannot be opened (busy, forbidden, not a camera)')
        return capture

    def __iter__(self) -> Iterator[np.ndarray]:
        capture = self._open()
        try:
            while True:
                ok, bgr = capture.read()
                if not ok:
                    raise SourceError(f'V4L2 camera {self.device}: stopped delivering frames')
                yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        finally:
            capture.release()

    def __str__(self) -> str:
        return f'V4L2 camera {self.device}'


def _message_to_rgb(msg: object, *, compressed: bool) -> np.ndarray:
    """RGB pixels of a deserialised ``Image``, or ``CompressedImage`` when ``compressed``."""
    if compressed:
        return compressed_to_array(msg)[0]
    return direct_to_rgb(*image_to_array(msg))


def open_source(spec: str, *, width: int = 640, height: int = 360, rate: float = 15.0,
                bag_topic: str = '') -> FrameSource:
    """The source named by ``spec`` (see the module docstring).

    ``width``, ``height`` and ``rate`` are the synthetic scene's size and frame rate; ``bag_topic``
    picks the topic of a bag with several image topics.
    """
    if spec == 'synthetic':
        return SyntheticSource(width, height, rate)
    if spec.startswith(_V4L2_PREFIX):
        return V4L2Source(spec[len(_V4L2_PREFIX):])
    path = Path(spec).expanduser()
    if not spec or not path.exists():
        raise SourceError(f'source {spec!r}: no such file or folder (expected synthetic, v4l2:/dev/videoN, '
                          'a video file, an image folder or a rosbag2)')
    if is_bag(path):
        return BagSource(path, bag_topic)
    if path.is_dir():
        return ImageFolderSource(path)
    return VideoSource(path)


def _resize(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    if frame.shape[1] == width and frame.shape[0] == height:
        return frame
    shrinking = width * height < frame.shape[0] * frame.shape[1]
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def play(source: FrameSource, *, width: int | None = None, height: int | None = None,
         loop: bool = False) -> Iterator[np.ndarray]:
    """The frames of ``source``, resized to ``width`` x ``height`` when both are given.

    With ``loop`` a finite source starts again from its first frame at its end. A source that
    yields no frame at all raises ``SourceError`` rather than looping on nothing.
    """
    while True:
        count = 0
        for frame in source:
            count += 1
            yield frame if width is None or height is None else _resize(frame, width, height)
        if count == 0:
            raise SourceError(f'{source}: has no frames')
        if not loop:
            return
