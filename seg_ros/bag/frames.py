"""Camera frames out of a bag: which topics are cameras, decoding, ground truth, and what was skipped.

``FrameStream`` turns the raw messages of the chosen camera topics into ``Frame`` objects within a
time window and at a stride, each with its ground-truth label image when there is one: from a
label topic of the bag (paired by header stamp) or from a folder of label PNGs (by frame index or
stamp). Messages that cannot be decoded (an unsupported encoding, a corrupt payload) are counted
per topic with the first reason and skipped.
"""

from __future__ import annotations

import re
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..labels import IGNORE_INDEX, LabelSet
from ..outputs import OUTPUT_NAMESPACE
from .messages import IMAGE_TYPES, decode_image, decode_label, deserialize, stamp_ns
from .reader import BagError, BagReader, TopicInfo

__all__ = ['LABEL_SET_KEY', 'LABEL_TOPIC_NAMES', 'Frame', 'FrameStream', 'LabelFolder', 'LabelMatcher',
           'TopicProblems', 'camera_topics', 'check_label', 'choose_camera_topics', 'choose_label_topic',
           'read_label_png']

LABEL_TOPIC_NAMES = ('labels', 'label', 'ground_truth')
"""Last name component of image topics that hold ground-truth class indices, not camera images."""
LABEL_SET_KEY = 'seg_ros.label_set'
"""``custom_data`` key of ``metadata.yaml`` naming the label set of a bag's label topic."""


@dataclass
class Frame:
    """One camera message, decoded."""

    topic: str
    index: int
    """Position of the message on its topic, counting from the topic's first message read."""
    timestamp: int
    """Bag time (ns): when the recorder received it."""
    header: Any
    image: np.ndarray
    encoding: str
    msgtype: str
    raw: bytes
    """The message as recorded, copied to the output bag unchanged."""
    label: np.ndarray | None = None

    @property
    def stamp(self) -> int:
        """Header stamp (ns)."""
        return stamp_ns(self.header)


def _deserialize(raw: bytes, msgtype: str) -> Any:
    try:
        return deserialize(raw, msgtype)
    # A payload the CDR parser cannot follow raises whatever it hits (struct, index, unicode errors).
    except Exception as error:
        raise ValueError(f'undecodable {msgtype} message ({type(error).__name__}: {error})') from error


def _is_label_topic(name: str) -> bool:
    return name.rpartition('/')[2] in LABEL_TOPIC_NAMES


def _is_result_topic(name: str) -> bool:
    return f'/{OUTPUT_NAMESPACE}/' in name


def camera_topics(topics: dict[str, TopicInfo]) -> list[str]:
    """Image topics that are cameras: neither label topics nor seg_ros results."""
    return [name for name, info in topics.items()
            if info.msgtype in IMAGE_TYPES and not _is_label_topic(name) and not _is_result_topic(name)]


def choose_camera_topics(topics: dict[str, TopicInfo], requested: list[str]) -> list[str]:
    """``requested`` after checking each is an image topic of the bag, or the bag's one camera topic."""
    images = [name for name, info in topics.items() if info.msgtype in IMAGE_TYPES]
    listed = ', '.join(images) or 'none'
    for name in requested:
        if name not in topics:
            raise BagError(f'topic {name} is not in the bag; its image topics: {listed}')
        if topics[name].msgtype not in IMAGE_TYPES:
            raise BagError(f'topic {name} is a {topics[name].msgtype}, not an Image or CompressedImage')
    if requested:
        return list(dict.fromkeys(requested))
    cameras = camera_topics(topics)
    if len(cameras) != 1:
        problem = 'no camera topic' if not cameras else f'{len(cameras)} camera topics ({", ".join(cameras)})'
        raise BagError(f'the bag has {problem}; name the image topic(s) with --topic '
                       f'(image topics: {listed})')
    return cameras


def choose_label_topic(topics: dict[str, TopicInfo], cameras: list[str], requested: str | None
                       ) -> tuple[str, str] | None:
    """(label topic, the camera topic it labels), or None when the bag has no ground truth.

    Without ``requested``, a label topic (``LABEL_TOPIC_NAMES``) is found beside a camera: in the
    same namespace as the camera topic.
    """
    namespaces = {topic.removesuffix('/compressed').rpartition('/')[0]: topic for topic in cameras}
    if requested is not None:
        if requested not in topics or topics[requested].msgtype not in IMAGE_TYPES:
            raise BagError(f'ground-truth topic {requested} is not an Image topic of the bag')
        camera = namespaces.get(requested.rpartition('/')[0])
        if camera is None and len(cameras) != 1:
            raise BagError(f'ground-truth topic {requested} is beside none of the camera topics '
                           f'{", ".join(cameras)}; name one camera with --topic')
        return requested, camera or cameras[0]
    for name, info in topics.items():
        camera = namespaces.get(name.rpartition('/')[0])
        if camera and info.msgtype in IMAGE_TYPES and _is_label_topic(name):
            return name, camera
    return None


def check_label(label: np.ndarray, labels: LabelSet, shape: tuple[int, ...]) -> None:
    """A ``ValueError`` unless ``label`` is (H, W) of class indices of ``labels`` or ``IGNORE_INDEX``."""
    if label.shape != shape[:2]:
        raise ValueError(f'label of size {label.shape[1]}x{label.shape[0]} for an image of '
                         f'{shape[1]}x{shape[0]}')
    values = np.unique(label)
    bad = values[(values >= labels.num_classes) & (values != IGNORE_INDEX)]
    if bad.size:
        raise ValueError(f'label values {bad.tolist()[:8]} are neither a class of {labels.name} '
                         f'(0..{labels.num_classes - 1}) nor {IGNORE_INDEX} (ignore)')


def read_label_png(path: Path) -> np.ndarray:
    """(H, W) uint8 class indices from a single-channel 8-bit PNG (``ValueError`` otherwise)."""
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None or label.dtype != np.uint8 or label.ndim != 2:
        raise ValueError(f'{path}: not a single-channel 8-bit PNG of class indices')
    return label


class LabelFolder:
    """Label PNGs named by frame index or header stamp (ns): the number at the end of the file name."""

    MATCHES = ('index', 'stamp')

    def __init__(self, folder: str | Path, match: str = 'index') -> None:
        if match not in self.MATCHES:
            raise ValueError(f'label match {match!r} is not one of {", ".join(self.MATCHES)}')
        self.folder, self.match = Path(folder).expanduser(), match
        if not self.folder.is_dir():
            raise BagError(f'label folder {self.folder}: no such folder')
        self._files: dict[int, Path] = {}
        for path in sorted(self.folder.glob('*.png')):
            number = re.search(r'(\d+)$', path.stem)
            if number:
                self._files.setdefault(int(number.group(1)), path)
        if not self._files:
            raise BagError(f'label folder {self.folder}: no PNG whose name ends in a number '
                           '(frame index or stamp in ns)')

    def __len__(self) -> int:
        return len(self._files)

    def label(self, number: int) -> np.ndarray | None:
        """The label image named by ``number`` (a frame index or a stamp), None when there is none."""
        path = self._files.get(number)
        return None if path is None else read_label_png(path)

    def label_for(self, frame: Frame) -> np.ndarray | None:
        return self.label(frame.index if self.match == 'index' else frame.stamp)


class LabelMatcher:
    """Pairs camera frames with label images of the same header stamp, holding back few frames.

    A frame is released, in arrival order, once it has its label or once ``window`` newer frames
    wait behind it; labels that come before their frame are kept for ``window`` frames.
    """

    def __init__(self, window: int = 16) -> None:
        self.window = window
        self._frames: deque[Frame] = deque()
        self._labels: OrderedDict[int, np.ndarray] = OrderedDict()

    def add_label(self, stamp: int, label: np.ndarray) -> list[Frame]:
        for frame in self._frames:
            if frame.stamp == stamp and frame.label is None:
                frame.label = label
                return self._release()
        self._labels[stamp] = label
        while len(self._labels) > self.window:
            self._labels.popitem(last=False)
        return []

    def add_frame(self, frame: Frame) -> list[Frame]:
        frame.label = self._labels.pop(frame.stamp, None)
        self._frames.append(frame)
        return self._release()

    def _release(self) -> list[Frame]:
        released = []
        while self._frames and (self._frames[0].label is not None or len(self._frames) > self.window):
            released.append(self._frames.popleft())
        return released

    def flush(self) -> list[Frame]:
        released, self._frames = list(self._frames), deque()
        return released


@dataclass
class TopicProblems:
    """Messages of one topic that were skipped, and the first reason."""

    skipped: int = 0
    first_reason: str = ''
    label_problems: int = 0
    first_label_problem: str = ''

    def skip(self, reason: str) -> None:
        self.skipped += 1
        self.first_reason = self.first_reason or reason

    def label_problem(self, reason: str) -> None:
        self.label_problems += 1
        self.first_label_problem = self.first_label_problem or reason


@dataclass
class FrameStream:
    """The frames of ``cameras`` in ``[start, stop)`` (bag time ns), every ``stride``-th per topic.

    ``label_topic`` is (label topic, camera topic) from the bag, ``label_folder`` a folder of label
    PNGs for the one camera topic; labels are checked against ``gt_labels``.
    """

    bag: BagReader
    cameras: list[str]
    start: int | None = None
    stop: int | None = None
    stride: int = 1
    label_topic: tuple[str, str] | None = None
    label_folder: LabelFolder | None = None
    gt_labels: LabelSet | None = None
    problems: dict[str, TopicProblems] = field(init=False)
    """Per camera topic: what was skipped."""

    def __post_init__(self) -> None:
        if self.stride < 1:
            raise ValueError(f'stride {self.stride} must be at least 1')
        if (self.label_topic or self.label_folder) and self.gt_labels is None:
            raise ValueError('ground truth needs the label set it is in (gt_labels)')
        self.problems = {topic: TopicProblems() for topic in self.cameras}

    def __iter__(self) -> Iterator[Frame]:
        matcher = LabelMatcher() if self.label_topic else None
        for item in self._decoded():
            if not isinstance(item, Frame):  # (stamp, label) from the label topic
                released = matcher.add_label(*item)
            elif matcher is not None and item.topic == self.label_topic[1]:
                released = matcher.add_frame(item)
            else:
                released = [item]
            yield from map(self._checked, released)
        if matcher is not None:
            yield from map(self._checked, matcher.flush())

    def _checked(self, frame: Frame) -> Frame:
        """``frame`` without its label when the label does not fit it (and the problem noted)."""
        if frame.label is not None:
            try:
                check_label(frame.label, self.gt_labels, frame.image.shape)
            except ValueError as error:
                self.problems[frame.topic].label_problem(f'frame {frame.index}: {error}')
                frame.label = None
        return frame

    def _decoded(self) -> Iterator[Frame | tuple[int, np.ndarray]]:
        """Camera frames (window and stride applied) and (stamp, label) pairs, in bag order."""
        label_topic = self.label_topic[0] if self.label_topic else None
        # Frame indices count from the bag's start when labels are looked up by index.
        read_from = None if self.label_folder and self.label_folder.match == 'index' else self.start
        indices = dict.fromkeys(self.cameras, -1)
        topics = [*self.cameras, *([label_topic] if label_topic else [])]
        for topic, msgtype, timestamp, raw in self.bag.messages(topics, read_from, self.stop):
            if topic == label_topic:
                label = self._label_message(raw, msgtype)
                if label is not None:
                    yield label
                continue
            indices[topic] += 1
            if (self.start is not None and timestamp < self.start) or indices[topic] % self.stride:
                continue
            frame = self._frame(topic, indices[topic], timestamp, msgtype, raw)
            if frame is not None:
                yield frame

    def _frame(self, topic: str, index: int, timestamp: int, msgtype: str, raw: bytes) -> Frame | None:
        try:
            msg = _deserialize(raw, msgtype)
            image, encoding = decode_image(msg)
        except ValueError as error:  # ConversionError is one too
            self.problems[topic].skip(str(error))
            return None
        frame = Frame(topic, index, timestamp, msg.header, image, encoding, msgtype, bytes(raw))
        if self.label_folder is not None:
            try:
                frame.label = self.label_folder.label_for(frame)
            except ValueError as error:
                self.problems[topic].label_problem(f'frame {index}: {error}')
        return frame

    def _label_message(self, raw: bytes, msgtype: str) -> tuple[int, np.ndarray] | None:
        camera = self.label_topic[1]
        try:
            msg = _deserialize(raw, msgtype)
            label = decode_label(msg)
        except ValueError as error:  # ConversionError is one too
            self.problems[camera].label_problem(f'{self.label_topic[0]}: {error}')
            return None
        return stamp_ns(msg.header), label
