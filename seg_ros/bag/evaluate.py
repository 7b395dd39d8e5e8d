"""``evaluate_bag``: every camera frame of a bag through every model, and everything written about it.

The frames stream from the bag through the same ``Segmenter`` the node uses, one at a time:
memory stays flat however long the bag is (results are written as they come; statistics are
running sums; the per-frame numbers go to ``frames.jsonl`` on disk; the mosaic keeps a bounded
number of rows). Output folder::

    OUT/report.md, OUT/report.json      the report
    OUT/bag/                            rosbag2: the camera topics and every model's results, compact
    OUT/<topic>/video.mp4               H.264: input | model A | model B ..., with class legends
    OUT/<topic>/mosaic.png              a few frames in the same layout (plus ground truth)
    OUT/<topic>/class_share.png         class share over time, one panel per model
    OUT/<topic>/confidence.png          confidence, entropy and stability over time
    OUT/<topic>/frames.jsonl            each frame's numbers

where ``<topic>`` is the camera topic with ``/`` as ``_`` (``camera_image_raw``).
"""

from __future__ import annotations

import itertools
import logging
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from seg_ros.bag.frames import (
    LABEL_SET_KEY,
    Frame,
    FrameStream,
    LabelFolder,
    TopicProblems,
    check_ignore_values,
    choose_camera_topics,
    choose_label_topic,
    file_name_topic,
    frame_rgb,
)
from seg_ros.bag.reader import BagError, BagReader
from seg_ros.bag.report import FrameLog, format_markdown, plot_class_share, plot_confidence, write_json
from seg_ros.bag.stats import Agreement, GroundTruthScore, ModelStats
from seg_ros.bag.video import MosaicRows, Panel, SideBySide, VideoFile, save_png
from seg_ros.bag.writer import DEFAULT_OUTPUTS, OutputBag, ResultWriter
from seg_ros.checkpoint import CheckpointError
from seg_ros.inference.segmenter import SegmentationError, SegmentationResult, Segmenter
from seg_ros.labels import LabelSet, get_label_set

__all__ = ['EXPECTED_ERRORS', 'EvaluationOptions', 'evaluate_bag', 'topic_folder']

log = logging.getLogger('seg_ros.bag')

EXPECTED_ERRORS = (ValueError, CheckpointError, OSError)
"""Bad input (BagError, SourceError, ConversionError are ValueErrors), unreadable or unwritable files."""

_DEFAULT_RATE = 10.0


@dataclass
class EvaluationOptions:
    """What ``seg-bag BAG`` does; see ``seg_ros.bag.cli`` for each option's meaning."""

    bag: Path
    checkpoints: dict[str, Path]
    """Model name -> checkpoint path; names become output topic and report names."""
    out: Path
    topics: list[str] = field(default_factory=list)
    start: float | None = None
    """Seconds from the bag's first message."""
    end: float | None = None
    stride: int = 1
    gt_topic: str | None = None
    gt_dir: Path | None = None
    gt_match: str = 'auto'
    """``auto`` (by name where the bag records image file names, else by index), or a ``LabelFolder`` match."""
    gt_pattern: str | None = None
    gt_labels: str | None = None
    label_ignore: tuple[int, ...] = ()
    storage: str = 'mcap'
    write_bag: bool = True
    outputs: tuple[str, ...] = DEFAULT_OUTPUTS
    jpeg_quality: int = 90
    write_video: bool = True
    video_panels: str = 'color_mask'
    panel_height: int = 360
    video_fps: float | None = None
    mosaic_frames: int = 4
    mosaic_at: list[int] | None = None
    device: str = 'auto'
    precision: str = 'auto'
    backend: str = 'auto'
    input_size: tuple[int, int] | None = None
    progress: bool = True


def topic_folder(topic: str) -> str:
    """Folder name of a camera topic's files: ``/camera/image_raw`` -> ``camera_image_raw``."""
    return topic.strip('/').replace('/', '_') or 'root'


class _Camera:
    """Everything accumulated and written for one camera topic."""

    def __init__(self, topic: str, folder: Path, models: dict[str, Segmenter], gt_labels: LabelSet | None,
                 options: EvaluationOptions, fps: float) -> None:
        self.topic, self.folder, self.options, self.fps = topic, folder, options, fps
        self.gt_labels = gt_labels
        self.labels = {name: segmenter.labels for name, segmenter in models.items()}
        self.stats = {name: ModelStats(labels) for name, labels in self.labels.items()}
        # Pairs of models, and models and ground truth, whose classes have no common set are noted.
        self.agreements: dict[tuple[str, str], Agreement] = {}
        self.not_compared: list[dict[str, str]] = []
        for a, b in itertools.combinations(models, 2):
            try:
                self.agreements[a, b] = Agreement(self.labels[a], self.labels[b])
            except ValueError as error:
                self.not_compared.append({'reference': a, 'other': b, 'reason': str(error)})
        self.ground_truth: dict[str, GroundTruthScore] = {}
        self.not_scored: dict[str, str] = {}
        for name, labels in self.labels.items() if gt_labels is not None else ():
            try:
                self.ground_truth[name] = GroundTruthScore(labels, gt_labels)
            except ValueError as error:
                self.not_scored[name] = str(error)
        self.segmentation_errors: dict[str, int] = {}
        self.frames = self.frames_with_ground_truth = 0
        self.first_timestamp: int | None = None
        self.last_timestamp: int | None = None
        folder.mkdir(parents=True, exist_ok=True)
        self.log = FrameLog(folder / 'frames.jsonl')
        self.mosaic = MosaicRows(options.mosaic_frames, options.mosaic_at)
        self.layout: SideBySide | None = None
        self.video: VideoFile | None = None

    def failed(self, model: str) -> None:
        self.segmentation_errors[model] = self.segmentation_errors.get(model, 0) + 1

    def add(self, frame: Frame, results: dict[str, SegmentationResult], seconds: float) -> None:
        """One frame's results (of the models that did not fail on it), at ``seconds`` into the bag."""
        labelled = frame.label is not None and self.gt_labels is not None
        record: dict[str, Any] = {'index': frame.index, 'time': seconds, 'stamp': frame.stamp,
                                  'ground_truth': labelled, 'models': {}}
        for name, result in results.items():
            record['models'][name] = self.stats[name].update(result)
            if labelled and name in self.ground_truth:
                self.ground_truth[name].update(result.mask, frame.label)
        for (a, b), agreement in self.agreements.items():
            if a in results and b in results:
                agreement.update(results[b].mask, results[a].mask)
        self.log.write(record)
        self.frames += 1
        self.frames_with_ground_truth += labelled
        if self.first_timestamp is None:
            self.first_timestamp = frame.timestamp
        self.last_timestamp = frame.timestamp
        self._draw(frame, results, f'#{frame.index}  {seconds:.2f} s', labelled)

    def _draw(self, frame: Frame, results: dict[str, SegmentationResult], caption: str, labelled: bool
              ) -> None:
        if self.layout is None:
            panels = [Panel(self.topic)]
            if self.gt_labels is not None:
                panels.append(Panel(f'ground truth ({self.gt_labels.name})', self.gt_labels))
            panels += [Panel(f'{name} ({labels.name})', labels) for name, labels in self.labels.items()]
            height = max(16, min(self.options.panel_height, frame.image.shape[0]))
            self.layout = SideBySide(panels, frame.image.shape[:2], height)
        image = frame_rgb(frame)
        truth = [] if self.gt_labels is None else [
            self.gt_labels.palette()[frame.label] if labelled else None]
        if self.options.write_video:
            if self.video is None:
                self.video = VideoFile(self.folder / 'video.mp4', self.fps)
            shown = [getattr(results[name], self.options.video_panels) if name in results else None
                     for name in self.labels]
            self.video.write(self.layout.frame([image, *truth, *shown], caption))
        # With ground truth the mosaic shows labelled frames, as the paper's Figure 2 does.
        if self.gt_labels is None or labelled:
            masks = [results[name].color_mask if name in results else None for name in self.labels]
            self.mosaic.offer(frame.index, lambda: self.layout.row([image, *truth, *masks], caption))

    def finish(self) -> dict[str, Any]:
        """Close the files, draw the mosaic and the plots; the topic's part of the report."""
        self.log.close()
        outputs: dict[str, Path] = {}
        if self.video is not None:
            self.video.close()
            outputs['video'] = self.video.path
        rows = self.mosaic.rows()
        if rows:
            outputs['mosaic'] = save_png(self.folder / 'mosaic.png', self.layout.mosaic(rows))
        if self.frames:
            outputs['class share plot'] = plot_class_share(
                self.log, self.labels, self.folder / 'class_share.png', self.topic)
            outputs['confidence plot'] = plot_confidence(
                self.log, list(self.labels), self.folder / 'confidence.png', self.topic)
        outputs['frames log'] = self.log.path
        span = (self.last_timestamp - self.first_timestamp) / 1e9 if self.frames > 1 else 0.0
        return {
            'frames': self.frames,
            'first_timestamp': self.first_timestamp,
            'last_timestamp': self.last_timestamp,
            'rate_hz': (self.frames - 1) / span if span > 0 else None,
            'frames_with_ground_truth': self.frames_with_ground_truth,
            'segmentation_errors': self.segmentation_errors,
            'models': {name: stats.summary() for name, stats in self.stats.items()},
            'agreement': [{'reference': a, 'other': b, **agreement.summary()}
                          for (a, b), agreement in self.agreements.items()],
            'not_compared': self.not_compared,
            'ground_truth': {name: score.summary() for name, score in self.ground_truth.items()
                             if score.frames},
            'not_scored': self.not_scored,
            'outputs': {kind: str(path.relative_to(self.folder.parent)) for kind, path in outputs.items()},
        }


def _window(bag: BagReader, options: EvaluationOptions) -> tuple[int | None, int | None]:
    """The time window in bag time (ns); one that holds no moment of the bag is an error."""
    for name, value in (('--start', options.start), ('--end', options.end)):
        if value is not None and value < 0:
            raise ValueError(f'{name} {value} is negative; it counts seconds from the start of the bag')
    if options.start is not None and options.end is not None and options.end <= options.start:
        raise ValueError(f'--end {options.end} is not after --start {options.start}')
    if options.start is not None and options.start > bag.duration_s:
        raise ValueError(f'--start {options.start:g} s is after the end of the bag {bag.path}: its messages '
                         f'span {bag.duration_s:.3f} s (from 0 to {bag.duration_s:.3f} s)')
    start = None if options.start is None else bag.start_time + round(options.start * 1e9)
    stop = None if options.end is None else bag.start_time + round(options.end * 1e9)
    return start, stop


def _ground_truth_labels(options: EvaluationOptions, bag: BagReader, models: dict[str, Segmenter]
                         ) -> LabelSet:
    """``--gt-labels``, else the set the bag names in its metadata, else the first model's."""
    name = options.gt_labels or bag.custom_data.get(LABEL_SET_KEY)
    if not name:
        return next(iter(models.values())).labels
    try:
        return get_label_set(name)
    except KeyError as error:
        raise ValueError(error.args[0]) from None


def _frame_rate(bag: BagReader, topic: str, options: EvaluationOptions) -> float:
    """The video's frame rate: ``--video-fps``, else the topic's recorded rate over the stride."""
    if options.video_fps:
        return options.video_fps
    count = bag.topics[topic].count
    duration = (bag.end_time - bag.start_time) / 1e9
    return (count - 1) / duration / options.stride if count > 1 and duration > 0 else _DEFAULT_RATE


def _load_models(options: EvaluationOptions) -> dict[str, Segmenter]:
    if not options.checkpoints:
        raise ValueError('no checkpoint given; pass at least one --checkpoint')
    models = {}
    for name, path in options.checkpoints.items():
        models[name] = Segmenter(path, device=options.device, precision=options.precision,
                                 backend=options.backend, input_size=options.input_size)
        log.info('model %s: %s', name, models[name].describe())
    return models


def _frame_stream(options: EvaluationOptions, bag: BagReader, models: dict[str, Segmenter]) -> FrameStream:
    """The frames to evaluate, with their ground truth; every option about them checked."""
    topics = bag.topics
    cameras = choose_camera_topics(topics, options.topics)
    start, stop = _window(bag, options)
    label_topic = label_folder = name_topic = None
    if options.gt_dir is not None and options.gt_topic is not None:
        raise ValueError('--gt-topic and --gt-dir are two sources of ground truth; give one')
    check_ignore_values(options.label_ignore)
    if options.gt_dir is not None:
        if len(cameras) != 1:
            raise BagError(f'labels from {options.gt_dir} are for one camera topic; choose it with --topic '
                           f'(camera topics: {", ".join(cameras)})')
        name_topic = file_name_topic(topics, cameras[0])
        label_folder = _label_folder(options, name_topic)
        if not label_folder.needs_names:
            name_topic = None
    else:
        label_topic = choose_label_topic(topics, cameras, options.gt_topic)
    gt_labels = _ground_truth_labels(options, bag, models) if label_topic or label_folder else None
    return FrameStream(bag, cameras, start, stop, options.stride, label_topic, label_folder, gt_labels,
                       name_topic, tuple(options.label_ignore))


def _label_folder(options: EvaluationOptions, name_topic: str | None) -> LabelFolder:
    """``--gt-dir`` with its matching; matching by name needs the file names the bag records."""
    match = options.gt_match
    if match == 'auto':
        match = 'name' if name_topic else 'index'
    folder = LabelFolder(options.gt_dir, match, options.gt_pattern)
    if folder.needs_names and name_topic is None:
        raise BagError(f'--gt-dir {options.gt_dir} by {folder.describe()}: the bag records no image file '
                       'names (a file_name topic beside the camera, which seg-bag make writes from an image '
                       'folder); match by --gt-match index|stamp or a --gt-pattern with {index} or {stamp}')
    return folder


def evaluate_bag(options: EvaluationOptions) -> dict[str, Any]:
    """Run the evaluation and write every output; returns the report (also in ``report.json``).

    Bad options, checkpoints or bags raise ``ValueError`` (``BagError`` is one) or
    ``CheckpointError`` before anything is written. A bag damaged part-way is evaluated up to the
    damage and Ctrl-C stops after the current frame; either way the outputs are complete for the
    frames done and ``report['stopped']`` says where and why.
    """
    if options.video_panels not in ('color_mask', 'overlay'):
        raise ValueError(f'video panels {options.video_panels!r} are not color_mask or overlay')
    out = options.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f'output folder {out} exists and is not empty; choose a new one')
    models = _load_models(options)
    with BagReader(options.bag) as bag:
        stream = _frame_stream(options, bag, models)
        out.mkdir(parents=True, exist_ok=True)
        report = _Evaluation(options, bag, stream, models).run()
    write_json(report, out / 'report.json')
    (out / 'report.md').write_text(format_markdown(report))
    return report


def _peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux and macOS count it in different units)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == 'darwin' else peak / 2**10


class _Evaluation:
    """The frame loop over one opened bag, and the report it makes."""

    def __init__(self, options: EvaluationOptions, bag: BagReader, stream: FrameStream,
                 models: dict[str, Segmenter]) -> None:
        self.options, self.bag, self.stream, self.models = options, bag, stream, models
        self.cameras = {
            topic: _Camera(topic, options.out / topic_folder(topic), models,
                           stream.gt_labels if topic == stream.gt_camera else None, options,
                           _frame_rate(bag, topic, options))
            for topic in stream.cameras}
        self.output_bag = self.results = None
        if options.write_bag:
            self.output_bag = OutputBag(options.out / 'bag', options.storage)
            self.results = ResultWriter(self.output_bag, options.outputs,
                                        {topic: list(bag.topics[topic].qos) for topic in stream.cameras},
                                        options.jpeg_quality)
        self.outputs = {'color_mask', 'entropy'}
        if (options.write_bag and 'overlay' in options.outputs) or options.video_panels == 'overlay':
            self.outputs.add('overlay')
        self.memory: dict[str, float] = {}

    def run(self) -> dict[str, Any]:
        began = time.perf_counter()
        interrupted = False
        try:
            self._loop()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            if self.output_bag is not None:
                self.output_bag.close()
        wall = time.perf_counter() - began
        return {
            'bag': self._bag_info(),
            'stopped': self._stopped(interrupted),
            'run': self._run_info(wall),
            'models': {name: _model_info(segmenter, self.options.checkpoints[name])
                       for name, segmenter in self.models.items()},
            'ground_truth': self._ground_truth_info(),
            'topics': {topic: {**_problems(self.stream.problems[topic]), **camera.finish()}
                       for topic, camera in self.cameras.items()},
        }

    def _loop(self) -> None:
        options = self.options
        expected = None if options.start is not None or options.end is not None else \
            sum(-(-self.bag.topics[topic].count // options.stride) for topic in self.cameras)
        with tqdm(total=expected, unit='frame', disable=not options.progress, dynamic_ncols=True) as progress:
            for frame in self.stream:
                camera = self.cameras[frame.topic]
                results = {}
                for name, segmenter in self.models.items():
                    try:
                        results[name] = segmenter.segment(frame.image, frame.encoding, outputs=self.outputs)
                    except SegmentationError as error:
                        camera.failed(name)
                        log.warning('%s frame %d: %s', frame.topic, frame.index, error)
                if self.results is not None:
                    self.results.write(frame, results)
                if results:
                    camera.add(frame, results, (frame.timestamp - self.bag.start_time) / 1e9)
                progress.update()
                # Peak memory after frame 1, 2, 4, 8 ...: whatever grows with the length of the bag
                # shows as growth between the later ones.
                done = sum(c.frames for c in self.cameras.values())
                if done & (done - 1) == 0:
                    self.memory[f'peak_after_{done}_frames_mib'] = _peak_rss_mib()
        self.memory['peak_mib'] = _peak_rss_mib()

    def _seconds(self, timestamp: int | None) -> float | None:
        return None if timestamp is None else (timestamp - self.bag.start_time) / 1e9

    def _stopped(self, interrupted: bool) -> dict[str, Any] | None:
        if interrupted:
            last = max((c.last_timestamp for c in self.cameras.values() if c.last_timestamp), default=None)
            reason, messages = 'interrupted (Ctrl-C)', sum(c.frames for c in self.cameras.values())
        elif self.bag.stop is not None:
            stop = self.bag.stop
            reason, messages, last = stop.reason, stop.messages, stop.last_timestamp
        else:
            return None
        return {'reason': reason, 'messages_read': messages, 'last_timestamp': last,
                'last_time_s': self._seconds(last)}

    def _bag_info(self) -> dict[str, Any]:
        bag = self.bag
        return {
            'path': str(self.options.bag),
            'storage': bag.storage,
            'start_time': bag.start_time,
            'duration_s': bag.duration_s,
            'topics': {name: {'type': info.msgtype, 'count': info.count}
                       for name, info in bag.topics.items()},
            'notes': bag.notes,
        }

    def _run_info(self, wall: float) -> dict[str, Any]:
        frames = sum(camera.frames for camera in self.cameras.values())
        first = next(iter(self.models.values()))
        return {
            'frames': frames,
            'window_s': [self.options.start, self.options.end],
            'stride': self.options.stride,
            'device': str(first.device),
            'precision': first.precision,
            'backend': first.backend,
            'wall_time_s': wall,
            'frames_per_second': frames / wall if wall > 0 else 0.0,
            'output_bag': None if self.output_bag is None else 'bag',
            'outputs': list(self.options.outputs) if self.output_bag is not None else [],
            'output_bag_bytes': _folder_bytes(self.options.out / 'bag') if self.output_bag else None,
            'memory': self.memory,
        }

    def _ground_truth_info(self) -> dict[str, Any] | None:
        stream = self.stream
        if stream.gt_labels is None:
            return None
        if stream.label_topic:
            source = f'topic {stream.label_topic[0]} for {stream.label_topic[1]}'
        else:
            source = f'folder {stream.label_folder.folder} (by {stream.label_folder.describe()})'
        return {'label_set': stream.gt_labels.name, 'source': source, 'camera': stream.gt_camera,
                'requested': self.options.gt_dir is not None or self.options.gt_topic is not None,
                'label_ignore': list(stream.label_ignore), 'labels': stream.labels.summary()}


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob('*') if path.is_file())


def _model_info(segmenter: Segmenter, path: Path) -> dict[str, Any]:
    labels = segmenter.labels
    return {'checkpoint': str(path), 'model': segmenter.checkpoint.model_name, 'label_set': labels.name,
            'classes': list(labels.names), 'input_size': list(segmenter.input_size)}


def _problems(problems: TopicProblems) -> dict[str, Any]:
    return {'skipped': problems.skipped, 'skip_reason': problems.first_reason}
