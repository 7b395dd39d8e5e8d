"""Camera frames out of a bag: which topics are cameras, decoding, ground truth, and what was skipped.

``FrameStream`` turns the raw messages of the chosen camera topics into ``Frame`` objects within a
time window and at a stride, each with its ground-truth label image when there is one: from a
label topic of the bag (paired by header stamp) or from a folder of label PNGs (by the image's
file name that ``seg-bag make`` records beside the camera, by a naming pattern, by frame index or
by stamp). Messages that cannot be decoded (an unsupported encoding, a corrupt payload) are counted
per topic with the first reason and skipped. Every label that is not used is counted by reason in
a ``LabelAccount``, so that ground truth is either scored or reported as refused, never dropped
silently.
"""

from __future__ import annotations

import re
import string
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from seg_ros.bag.messages import IMAGE_TYPES, STRING, decode_image, decode_label, deserialize, stamp_ns
from seg_ros.bag.reader import BagError, BagReader, TopicInfo
from seg_ros.frames.codecs import direct_to_rgb
from seg_ros.interface import OUTPUT_NAMESPACE
from seg_ros.labels import IGNORE_INDEX, LabelSet

__all__ = ['FILE_NAME_TOPIC', 'LABEL_SET_KEY', 'LABEL_TOPIC_NAMES', 'Frame', 'FrameStream', 'LabelAccount',
           'LabelError', 'LabelFolder', 'StampPairing', 'TopicProblems', 'camera_topics', 'check_ignore_values',
           'check_label', 'choose_camera_topics', 'choose_label_topic', 'file_name_topic', 'frame_rgb', 'ignore_values',
           'read_label_png']

LABEL_TOPIC_NAMES = ('labels', 'label', 'ground_truth')
"""Last name component of image topics that hold ground-truth class indices, not camera images."""
LABEL_SET_KEY = 'seg_ros.label_set'
"""``custom_data`` key of ``metadata.yaml`` naming the label set of a bag's label topic."""
FILE_NAME_TOPIC = 'file_name'
"""Beside a camera topic (``/camera/file_name``): ``std_msgs/String`` with each frame's image file
name, at the frame's bag time; ``seg-bag make`` writes it when it records an image folder."""


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
    name: str | None = None
    """The image's file name without its extension, where the bag records it (``FILE_NAME_TOPIC``)."""

    @property
    def stamp(self) -> int:
        """Header stamp (ns)."""
        return stamp_ns(self.header)


def frame_rgb(frame: Frame) -> np.ndarray:
    """The frame's pixels as RGB."""
    return direct_to_rgb(frame.image, frame.encoding)


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


def file_name_topic(topics: dict[str, TopicInfo], camera: str) -> str | None:
    """The ``FILE_NAME_TOPIC`` beside ``camera``, None when the bag records no file names for it."""
    name = f'{camera.removesuffix("/compressed").rpartition("/")[0]}/{FILE_NAME_TOPIC}'
    info = topics.get(name)
    return name if info is not None and info.msgtype == STRING else None


class LabelError(ValueError):
    """A label image that does not fit its frame; ``kind`` says why (``size`` or ``values``)."""

    def __init__(self, message: str, kind: str, values: Iterable[int] = ()) -> None:
        super().__init__(message)
        self.kind = kind
        self.values = set(values)


def check_label(label: np.ndarray, labels: LabelSet, shape: tuple[int, ...]) -> None:
    """A ``LabelError`` unless ``label`` is (H, W) of class indices of ``labels`` or ``IGNORE_INDEX``."""
    if label.shape != shape[:2]:
        raise LabelError(f'label of size {label.shape[1]}x{label.shape[0]} for an image of '
                         f'{shape[1]}x{shape[0]}', 'size')
    values = np.unique(label)
    bad = values[(values >= labels.num_classes) & (values != IGNORE_INDEX)]
    if bad.size:
        raise LabelError(f'label values {bad.tolist()[:8]} are neither a class of {labels.name} '
                         f'(0..{labels.num_classes - 1}) nor {IGNORE_INDEX} (ignore)', 'values', bad.tolist())


def check_ignore_values(values: Iterable[int]) -> None:
    """``--label-ignore`` values must be label values (0..254; 255 is ignore already)."""
    bad = [value for value in values if not 0 <= value < IGNORE_INDEX]
    if bad:
        raise ValueError(f'--label-ignore {bad[0]} is not a label value (0..{IGNORE_INDEX - 1})')


def ignore_values(label: np.ndarray, values: Iterable[int]) -> np.ndarray:
    """``label`` with every one of ``values`` (e.g. CamVid's void, 11) written as ``IGNORE_INDEX``."""
    values = list(values)
    if not values:
        return label
    return np.where(np.isin(label, values), IGNORE_INDEX, label).astype(np.uint8)


def read_label_png(path: Path) -> np.ndarray:
    """(H, W) uint8 class indices from a single-channel 8-bit PNG (``ValueError`` otherwise)."""
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None or label.dtype != np.uint8 or label.ndim != 2:
        raise ValueError(f'{path}: not a single-channel 8-bit PNG of class indices')
    return label


_REASONS = {
    'values': 'hold values that are no class',
    'size': 'are not the size of their frame',
    'unreadable': 'could not be read',
    'unmatched': 'matched no evaluated frame',
}


@dataclass
class LabelAccount:
    """What became of a camera's ground-truth labels: how many were used, how many not and why."""

    offered: int = 0
    """Label images there were: files in the folder, or messages on the label topic."""
    used: int = 0
    not_used: dict[str, int] = field(default_factory=dict)
    """Reason (``_REASONS``) -> count."""
    examples: dict[str, str] = field(default_factory=dict)
    """Reason -> the first such label's problem, in words."""
    bad_values: set[int] = field(default_factory=set)
    """Every label value refused as no class (all labels together)."""

    def refuse(self, reason: str, example: str, values: Iterable[int] = ()) -> None:
        self.not_used[reason] = self.not_used.get(reason, 0) + 1
        self.examples.setdefault(reason, example)
        self.bad_values.update(int(v) for v in values)

    def unmatched(self, count: int, example: str) -> None:
        if count > 0:
            self.not_used['unmatched'] = self.not_used.get('unmatched', 0) + count
            self.examples.setdefault('unmatched', example)

    def warnings(self) -> list[str]:
        """One line per reason a label was not used, with its count (the console and the report)."""
        lines = []
        for reason, count in self.not_used.items():
            line = f'{count} of {self.offered} label image(s) {_REASONS[reason]}: {self.examples[reason]}'
            if reason == 'values':
                values = sorted(self.bad_values)
                line += (f'. If {", ".join(map(str, values))} stand for "no label" (CamVid\'s void is 11), '
                         f'pass --label-ignore {" --label-ignore ".join(map(str, values[:3]))}')
            lines.append(line)
        return lines

    def summary(self) -> dict[str, Any]:
        return {'offered': self.offered, 'used': self.used, 'not_used': dict(self.not_used),
                'refused_values': sorted(self.bad_values), 'warnings': self.warnings()}


class LabelFolder:
    """Label PNGs matched to frames by name, pattern, frame index or header stamp.

    - ``name``: ``<image file name without extension>.png``, the name the bag records beside the
      camera (``FILE_NAME_TOPIC``);
    - ``index`` / ``stamp``: the number at the end of the file name is the frame's index on its
      topic from the start of the bag, or its header stamp in ns;
    - ``pattern`` (any match): a ``str.format`` pattern of the file name with the fields
      ``{name}``, ``{index}`` and ``{stamp}``, e.g. ``frame_{index:06d}.png`` or ``{name}_L.png``.
    """

    MATCHES = ('name', 'index', 'stamp')
    FIELDS = ('name', 'index', 'stamp')

    def __init__(self, folder: str | Path, match: str = 'index', pattern: str | None = None) -> None:
        if match not in self.MATCHES:
            raise ValueError(f'label match {match!r} is not one of {", ".join(self.MATCHES)}')
        self.folder, self.match, self.pattern = Path(folder).expanduser(), match, pattern
        if not self.folder.is_dir():
            raise BagError(f'label folder {self.folder}: no such folder')
        self._files = {path.name: path for path in sorted(self.folder.glob('*.png'))}
        if not self._files:
            raise BagError(f'label folder {self.folder}: no .png file')
        if pattern is not None:
            self._check_pattern(pattern)
        self._numbers: dict[int, Path] = {}
        if pattern is None and match != 'name':
            for path in self._files.values():
                number = re.search(r'(\d+)$', path.stem)
                if number:
                    self._numbers.setdefault(int(number.group(1)), path)
            if not self._numbers:
                raise BagError(f'label folder {self.folder}: no PNG whose name ends in a number (frame '
                               f'{match}); the files are named like {next(iter(self._files))}: match them '
                               'by name (--gt-match name) or with --gt-pattern')
        self.looked_up: set[Path] = set()
        """Files matched to an evaluated frame (used or refused)."""

    @classmethod
    def _check_pattern(cls, pattern: str) -> None:
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None}
            pattern.format(name='x', index=0, stamp=0)
        except (ValueError, IndexError, KeyError) as error:
            raise ValueError(f'--gt-pattern {pattern!r}: not a file-name pattern ({error}); use the fields '
                             f'{{{"}, {".join(cls.FIELDS)}}}, e.g. frame_{{index:06d}}.png') from None
        if not fields:
            raise ValueError(f'--gt-pattern {pattern!r} names no frame field ({", ".join(cls.FIELDS)})')

    @property
    def needs_names(self) -> bool:
        """Whether matching needs each frame's image file name."""
        if self.pattern is not None:
            return '{name' in self.pattern
        return self.match == 'name'

    def __len__(self) -> int:
        return len(self._files)

    def describe(self) -> str:
        if self.pattern is not None:
            return f'file names {self.pattern}'
        return {'name': 'the image file name (<name>.png)', 'index': 'frame index (number at the end)',
                'stamp': 'header stamp in ns (number at the end)'}[self.match]

    def file_name_for(self, frame: Frame) -> str:
        """The label file name ``frame`` is looked up by (for messages; numbers: the number)."""
        if self.pattern is not None:
            return self.pattern.format(name=frame.name or '', index=frame.index, stamp=frame.stamp)
        if self.match == 'name':
            return f'{frame.name}.png'
        return str(frame.index if self.match == 'index' else frame.stamp)

    def path_for(self, frame: Frame) -> Path | None:
        if self.pattern is not None or self.match == 'name':
            return self._files.get(self.file_name_for(frame))
        return self._numbers.get(frame.index if self.match == 'index' else frame.stamp)

    def label(self, number: int) -> np.ndarray | None:
        """The label image whose name ends in ``number`` (index or stamp matching), None when none does."""
        path = self._numbers.get(number)
        return None if path is None else read_label_png(path)

    def label_for(self, frame: Frame) -> np.ndarray | None:
        """The frame's label image, None when there is none (``ValueError`` for an unreadable one)."""
        path = self.path_for(frame)
        if path is None:
            return None
        self.looked_up.add(path)
        return read_label_png(path)

    def unmatched(self, first_frame: Frame | None) -> tuple[int, str]:
        """How many files matched no evaluated frame, and in words how frames were looked up."""
        left = [name for name, path in self._files.items() if path not in self.looked_up]
        looked_for = '' if first_frame is None else \
            f'; the first frame was looked up as {self.file_name_for(first_frame)}'
        return len(left), (f'{self.folder} holds e.g. {left[0] if left else ""}, matched by '
                           f'{self.describe()}{looked_for}')


class StampPairing:
    """Pairs camera frames with values of the same key (a label by header stamp, a file name by bag
    time), holding back few frames.

    A frame is released, in arrival order, once it has its value or once ``window`` newer frames
    wait behind it; values that come before their frame are kept for ``window`` frames, and those
    that never meet one are counted in ``dropped``.
    """

    def __init__(self, attribute: str, key: str, window: int = 16) -> None:
        self.attribute, self.key, self.window = attribute, key, window
        self._frames: deque[Frame] = deque()
        self._values: OrderedDict[int, Any] = OrderedDict()
        self.dropped = 0

    def add_value(self, key: int, value: Any) -> list[Frame]:
        for frame in self._frames:
            if getattr(frame, self.key) == key and getattr(frame, self.attribute) is None:
                setattr(frame, self.attribute, value)
                return self._release()
        self._values[key] = value
        while len(self._values) > self.window:
            self._values.popitem(last=False)
            self.dropped += 1
        return []

    def add_frame(self, frame: Frame) -> list[Frame]:
        setattr(frame, self.attribute, self._values.pop(getattr(frame, self.key), None))
        self._frames.append(frame)
        return self._release()

    def _release(self) -> list[Frame]:
        released = []
        while self._frames and (getattr(self._frames[0], self.attribute) is not None
                                or len(self._frames) > self.window):
            released.append(self._frames.popleft())
        return released

    def flush(self) -> list[Frame]:
        released, self._frames = list(self._frames), deque()
        self.dropped += len(self._values)
        self._values.clear()
        return released


@dataclass
class TopicProblems:
    """Messages of one topic that were skipped, and the first reason."""

    skipped: int = 0
    first_reason: str = ''

    def skip(self, reason: str) -> None:
        self.skipped += 1
        self.first_reason = self.first_reason or reason


@dataclass
class FrameStream:
    """The frames of ``cameras`` in ``[start, stop)`` (bag time ns), every ``stride``-th per topic.

    ``label_topic`` is (label topic, camera topic) from the bag, ``label_folder`` a folder of label
    PNGs for the first camera topic, ``name_topic`` the topic of that camera's image file names;
    labels have ``label_ignore`` values set to ignore and are checked against ``gt_labels``; what
    became of them is in ``labels``.
    """

    bag: BagReader
    cameras: list[str]
    start: int | None = None
    stop: int | None = None
    stride: int = 1
    label_topic: tuple[str, str] | None = None
    label_folder: LabelFolder | None = None
    gt_labels: LabelSet | None = None
    name_topic: str | None = None
    label_ignore: tuple[int, ...] = ()
    problems: dict[str, TopicProblems] = field(init=False)
    """Per camera topic: what was skipped."""
    labels: LabelAccount = field(init=False)
    """What became of the ground truth."""

    def __post_init__(self) -> None:
        if self.stride < 1:
            raise ValueError(f'stride {self.stride} must be at least 1')
        if (self.label_topic or self.label_folder) and self.gt_labels is None:
            raise ValueError('ground truth needs the label set it is in (gt_labels)')
        self.problems = {topic: TopicProblems() for topic in self.cameras}
        self.labels = LabelAccount(offered=len(self.label_folder) if self.label_folder else 0)
        self._first_frame: Frame | None = None

    @property
    def gt_camera(self) -> str | None:
        """The camera topic the ground truth is for."""
        if self.label_topic:
            return self.label_topic[1]
        return self.cameras[0] if self.label_folder else None

    def __iter__(self) -> Iterator[Frame]:
        pairing = self._pairing()
        for item in self._decoded():
            if not isinstance(item, Frame):  # (key, value) from the label or file-name topic
                released = pairing.add_value(*item)
            elif pairing is not None and item.topic == self.gt_camera:
                released = pairing.add_frame(item)
            else:
                released = [item]
            yield from map(self._labelled, released)
        if pairing is not None:
            yield from map(self._labelled, pairing.flush())
            if self.label_topic:
                self.labels.unmatched(pairing.dropped, f'no frame of {self.label_topic[1]} had their stamp')
        if self.label_folder is not None:
            self.labels.unmatched(*self.label_folder.unmatched(self._first_frame))

    def _pairing(self) -> StampPairing | None:
        if self.label_topic:
            return StampPairing('label', 'stamp')
        if self.name_topic:
            return StampPairing('name', 'timestamp')
        return None

    def _labelled(self, frame: Frame) -> Frame:
        """``frame`` with its label (from the folder) where one fits it; what did not fit is counted."""
        if frame.topic != self.gt_camera:
            return frame
        self._first_frame = self._first_frame or frame
        if self.label_folder is not None:
            try:
                frame.label = self.label_folder.label_for(frame)
            except ValueError as error:
                self.labels.refuse('unreadable', f'frame {frame.index}: {error}')
        if frame.label is not None:
            try:
                frame.label = ignore_values(frame.label, self.label_ignore)
                check_label(frame.label, self.gt_labels, frame.image.shape)
                self.labels.used += 1
            except LabelError as error:
                self.labels.refuse(error.kind, f'frame {frame.index}: {error}', error.values)
                frame.label = None
        return frame

    def _decoded(self) -> Iterator[Frame | tuple[int, Any]]:
        """Camera frames (window and stride applied) and (key, label or name) pairs, in bag order."""
        label_topic = self.label_topic[0] if self.label_topic else None
        # Frame indices count from the bag's start when labels are looked up by index.
        by_index = self.label_folder is not None and (
            self.label_folder.match == 'index' or '{index' in (self.label_folder.pattern or ''))
        read_from = None if by_index else self.start
        indices = dict.fromkeys(self.cameras, -1)
        side_topics = [topic for topic in (label_topic, self.name_topic) if topic]
        for topic, msgtype, timestamp, raw in self.bag.messages([*self.cameras, *side_topics], read_from,
                                                               self.stop):
            if topic == label_topic:
                label = self._label_message(raw, msgtype)
                if label is not None:
                    yield label
                continue
            if topic == self.name_topic:
                try:
                    yield timestamp, Path(_deserialize(raw, msgtype).data).stem
                except ValueError as error:  # the frame goes on without its name
                    self.problems[self.gt_camera].skip(f'{self.name_topic}: {error}')
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
        return Frame(topic, index, timestamp, msg.header, image, encoding, msgtype, bytes(raw))

    def _label_message(self, raw: bytes, msgtype: str) -> tuple[int, np.ndarray] | None:
        self.labels.offered += 1
        try:
            msg = _deserialize(raw, msgtype)
            label = decode_label(msg)
        except ValueError as error:  # ConversionError is one too
            self.labels.refuse('unreadable', f'{self.label_topic[0]}: {error}')
            return None
        return stamp_ns(msg.header), label
