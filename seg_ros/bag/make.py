"""``seg-bag make``: a rosbag2 with a camera topic from a video file or an image folder, without ROS.

Frames come from ``seg_ros.frames.sources`` (the sources ``sample_camera`` plays) and are written at a
fixed rate, each at bag time = header stamp. Label PNGs (single-channel class indices, 255 =
ignore) go on a label topic beside the camera with the same stamps, and the bag's
``metadata.yaml`` names their label set, so ``seg-bag`` finds and scores them without options.
Label files are matched to frames by name: the image's own file name for an image folder, the
number at the end of the file name (the frame index) for a video. From an image folder each
frame's file name goes on ``<ns>/file_name`` too, so ``seg-bag --gt-dir`` can match labels by name.

The bag is written in a temporary folder beside ``--out`` and renamed to it only when complete:
a failed or interrupted run leaves nothing that looks like a bag.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from seg_ros.bag.frames import (
    FILE_NAME_TOPIC,
    LABEL_SET_KEY,
    LabelFolder,
    check_ignore_values,
    check_label,
    ignore_values,
    read_label_png,
)
from seg_ros.bag.messages import (
    IMAGE,
    STRING,
    compressed_message,
    header_message,
    image_message,
    serialize,
    string_message,
)
from seg_ros.bag.reader import BagError
from seg_ros.bag.writer import CAMERA_QOS, OutputBag
from seg_ros.frames.sources import BagSource, FrameSource, ImageFolderSource, SourceError, VideoSource, open_source
from seg_ros.labels import LabelSet, get_label_set

__all__ = ['ENCODINGS', 'MakeOptions', 'make_bag']

ENCODINGS = ('rgb8', 'bgr8', 'jpeg', 'png')
"""How frames are stored: raw ``Image`` (rgb8, bgr8) or ``CompressedImage`` (jpeg, png)."""
_DEFAULT_RATE = 10.0


@dataclass
class MakeOptions:
    """What ``seg-bag make`` does; see ``seg_ros.bag.cli`` for each option's meaning."""

    source: str
    out: Path
    rate: float | None = None
    """Frames per second; default the video's own rate, else 10."""
    topic: str = '/camera/image_raw'
    frame_id: str = 'camera'
    encoding: str = 'rgb8'
    jpeg_quality: int = 90
    labels: Path | None = None
    label_topic: str | None = None
    label_set: str = 'camvid11'
    label_ignore: tuple[int, ...] = ()
    """Label values written as 255 (ignore), e.g. 11 for CamVid's void."""
    storage: str = 'mcap'
    start_time: float | None = None
    """Header stamp of the first frame, seconds since the epoch; default now."""
    max_frames: int | None = None
    progress: bool = True


def _frame_rate(options: MakeOptions, source: FrameSource) -> float:
    if options.rate is not None:
        if not options.rate > 0:
            raise ValueError(f'--rate {options.rate} must be positive')
        return options.rate
    if isinstance(source, VideoSource):
        capture = cv2.VideoCapture(str(source.path))
        fps = capture.get(cv2.CAP_PROP_FPS)
        capture.release()
        if fps > 0:
            return float(fps)
    return _DEFAULT_RATE


def _labels(options: MakeOptions, source: FrameSource) -> Iterator[np.ndarray | None]:
    """The label of each frame of ``source``, in order (None where a frame has none)."""
    if isinstance(source, ImageFolderSource):
        for image in source.files:
            path = options.labels / f'{image.stem}.png'
            yield read_label_png(path) if path.is_file() else None
        return
    folder = LabelFolder(options.labels, 'index')
    for index in itertools.count():
        yield folder.label(index)


def _check(options: MakeOptions) -> None:
    if options.encoding not in ENCODINGS:
        raise ValueError(f'--encoding {options.encoding!r} is not one of {", ".join(ENCODINGS)}')
    if options.max_frames is not None and options.max_frames < 1:
        raise ValueError(f'--max-frames {options.max_frames} must be at least 1')
    if not options.topic.startswith('/'):
        raise ValueError(f'--topic {options.topic!r} must be an absolute topic name (start with /)')
    check_ignore_values(options.label_ignore)
    if options.labels is not None and not options.labels.is_dir():
        raise BagError(f'label folder {options.labels}: no such folder')
    if options.out.exists():
        raise ValueError(f'output bag {options.out} exists already; choose a new path')


def _image_message(rgb: np.ndarray, header: Any, options: MakeOptions) -> Any:
    if options.encoding in ('jpeg', 'png'):
        return compressed_message(rgb, options.encoding, header, jpeg_quality=options.jpeg_quality)
    pixels = rgb if options.encoding == 'rgb8' else np.ascontiguousarray(rgb[..., ::-1])
    return image_message(pixels, options.encoding, header)


def _label_message(label: np.ndarray, header: Any, options: MakeOptions, labels: LabelSet,
                   shape: tuple[int, ...]) -> Any:
    label = ignore_values(label, options.label_ignore)
    check_label(label, labels, shape)
    return image_message(label, 'mono8', header)


def make_bag(options: MakeOptions) -> dict[str, Any]:
    """Write the bag atomically; returns its path, topics, frame count, labelled frame count and rate."""
    _check(options)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f'.{options.out.name}.', suffix='.partial', dir=options.out.parent))
    try:
        summary = _write_bag(options, staging / options.out.name)
        (staging / options.out.name).rename(options.out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {**summary, 'path': str(options.out)}


def _write_bag(options: MakeOptions, path: Path) -> dict[str, Any]:
    labels = get_label_set(options.label_set) if options.labels is not None else None
    source = open_source(options.source)
    if isinstance(source, BagSource):
        raise SourceError(f'{options.source} is a bag already')
    if source.endless and options.max_frames is None:
        raise ValueError(f'{source} never ends; give --max-frames')
    rate = _frame_rate(options, source)
    camera = options.topic.removesuffix('/compressed')
    compressed = options.encoding in ('jpeg', 'png')
    topic = f'{camera}/compressed' if compressed else camera
    label_topic = options.label_topic or f'{camera.rpartition("/")[0]}/labels'
    start = round((time.time() if options.start_time is None else options.start_time) * 1e9)
    label_stream = _labels(options, source) if labels is not None else None
    files = iter(source.files) if isinstance(source, ImageFolderSource) else None
    name_topic = f'{camera.rpartition("/")[0]}/{FILE_NAME_TOPIC}'
    bag = OutputBag(path, options.storage)
    frames = labelled = 0
    try:
        with tqdm(total=options.max_frames, unit='frame', disable=not options.progress) as progress:
            for frames, rgb in enumerate(source, start=1):
                stamp = start + round((frames - 1) * 1e9 / rate)
                header = header_message(stamp, options.frame_id)
                msg = _image_message(rgb, header, options)
                bag.write(topic, msg.__msgtype__, stamp, serialize(msg), [CAMERA_QOS])
                if files is not None:
                    bag.write(name_topic, STRING, stamp, serialize(string_message(next(files).name)))
                label = next(label_stream) if label_stream is not None else None
                if label is not None:
                    try:
                        msg = _label_message(label, header, options, labels, rgb.shape)
                    except ValueError as error:
                        raise ValueError(f'label of frame {frames - 1}: {error}') from None
                    bag.write(label_topic, IMAGE, stamp, serialize(msg))
                    labelled += 1
                progress.update()
                if frames == options.max_frames:
                    break
        if labels is not None:
            bag.set_custom_data(LABEL_SET_KEY, labels.name)
    finally:
        bag.close()
    return {'frames': frames, 'labelled': labelled, 'rate': rate,
            'topics': [topic, *([label_topic] if labelled else []), *([name_topic] if files is not None else [])]}
