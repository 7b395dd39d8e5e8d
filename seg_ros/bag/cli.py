"""``seg-bag``: evaluate trained models on recorded road runs; ``seg-bag make``: make such a recording.

``seg-bag BAG [BAG ...] --checkpoint A [--checkpoint B ...] --out DIR [options]``
    Every camera frame of BAG through each model: a compact bag with the results, a side-by-side
    H.264 video, a mosaic, plots and a report (markdown and JSON), with IoU where the bag or a
    label folder holds ground truth. Several bags (or folders of bags) are evaluated into
    ``DIR/<run>/`` with a combined report, on ``--workers N`` processes or a Dask cluster
    (``--scheduler``). Needs no ROS installation.

``seg-bag make SOURCE --out BAG [options]``
    A rosbag2 with a camera topic (and, with ``--labels``, a label topic) from a video file or an
    image folder.

``seg-bag bench [options]``
    Evaluation throughput (frames/s) with 1 and 2 worker processes (``seg_ros.bag.bench``).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from seg_ros.bag.evaluate import EXPECTED_ERRORS, EvaluationOptions, evaluate_bag
from seg_ros.bag.frames import LabelFolder
from seg_ros.bag.make import ENCODINGS, MakeOptions, make_bag
from seg_ros.bag.report import number_text
from seg_ros.bag.runs import evaluate_runs, find_bags
from seg_ros.bag.writer import DEFAULT_OUTPUTS, OUTPUTS, STORAGE_PLUGINS, parse_outputs
from seg_ros.inference.backends import BACKENDS
from seg_ros.labels import list_label_sets
from seg_ros.vocabulary import PRECISION_CHOICES, size_argument

__all__ = ['EXIT_MISSING', 'main', 'make_main']

log = logging.getLogger('seg_ros.bag')

EXIT_MISSING = 3
"""Evaluated, but what was asked for is not there: no frame, or none of the given ground truth used."""
_NAME = re.compile(r'[A-Za-z][A-Za-z0-9_]*')


def _model_names(specs: list[str]) -> dict[str, Path]:
    """``--checkpoint [NAME=]PATH`` values -> {name: path}; a name defaults to the file's stem."""
    models: dict[str, Path] = {}
    for spec in specs:
        name, separator, path = spec.partition('=')
        if not separator or Path(spec).exists():
            path = spec
            name = re.sub(r'\W', '_', Path(spec).stem)
            name = name if _NAME.fullmatch(name) else f'model_{name}'
            base, number = name, 2
            while name in models:
                name, number = f'{base}_{number}', number + 1
        elif not _NAME.fullmatch(name):
            raise ValueError(f'--checkpoint {spec}: model name {name!r} must be letters, digits and _, '
                             'starting with a letter (it becomes part of topic names)')
        elif name in models:
            raise ValueError(f'--checkpoint {spec}: model name {name!r} is used twice')
        models[name] = Path(path).expanduser()
    return models


def _evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='seg-bag',
        description='Run trained segmentation models over recorded rosbag2s (sqlite3 or mcap, no ROS '
                    'installation needed) and write their results as a compact bag, a side-by-side H.264 '
                    'video, a mosaic, plots and a report; several runs in parallel with one combined '
                    'report. "seg-bag make -h": make a bag from a video or images; "seg-bag bench -h": '
                    'evaluation throughput.',
        epilog='Examples:\n'
               '  seg-bag run.mcap --checkpoint camvid=enet_camvid.pt --checkpoint cs=erfnet_cityscapes.pt '
               '--out eval/run\n'
               '  seg-bag rosbag2_2024_05_01 --topic /front/image_raw/compressed --start 30 --end 90 '
               '--stride 3 --checkpoint best.pt --out eval/front\n'
               '  seg-bag camvid_bag --checkpoint best.pt --gt-dir camvid/val/labels --label-ignore 11 '
               '--out eval/scored\n'
               '  seg-bag drives/ --checkpoint best.pt --workers 2 --outputs mask,overlay --out eval/all\n'
               'Exit status: 0 done (also when a damaged bag was read only in part: see the report), '
               '2 bad input or a run that failed, 3 no frame evaluated or none of the given ground truth '
               'used (the outputs are written), 130 interrupted.',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('bag', type=Path, nargs='+',
                        help='a rosbag2 folder or one .mcap or .db3 file; several, or folders of them, are '
                             'evaluated into OUT/<run>/ with a combined report in OUT')
    parser.add_argument('--checkpoint', '-c', action='append', required=True, metavar='[NAME=]PATH',
                        help='a seg_ros checkpoint; repeat for several models. NAME (default: the file '
                             'name) labels the model in topics, video and report')
    parser.add_argument('--out', '-o', type=Path, required=True,
                        help='output folder (created; must be new or empty)')
    selection = parser.add_argument_group('frames')
    selection.add_argument('--topic', '-t', action='append', default=[], metavar='TOPIC',
                           help='camera topic (Image or CompressedImage); repeat for several. '
                                "Default: the bag's one camera topic")
    selection.add_argument('--start', type=float, metavar='SEC',
                           help='skip the first SEC seconds of the bag')
    selection.add_argument('--end', type=float, metavar='SEC',
                           help='stop SEC seconds after the start of the bag')
    selection.add_argument('--stride', type=int, default=1, metavar='N',
                           help='evaluate every N-th frame of each camera topic (default: 1)')
    truth = parser.add_argument_group('ground truth (default: a label topic beside the camera, e.g. '
                                      '/camera/labels, when the bag has one)')
    truth.add_argument('--gt-topic', metavar='TOPIC',
                       help='label Image topic (mono8 class indices, 255 = ignore), paired by header stamp')
    truth.add_argument('--gt-dir', type=Path, metavar='DIR',
                       help='folder of label PNGs (single-channel class indices, 255 = ignore), matched to '
                            'frames as --gt-match or --gt-pattern say')
    truth.add_argument('--gt-match', choices=('auto', *LabelFolder.MATCHES), default='auto',
                       help='name: <image file name>.png, by the file names seg-bag make records from an '
                            "image folder; index / stamp: the number at the end of a label's name is the "
                            "frame's index on its topic from the start of the bag, or its header stamp in ns "
                            '(default auto: name where the bag records file names, else index)')
    truth.add_argument('--gt-pattern', metavar='PATTERN',
                       help='the label file name of a frame, with the fields {name} (image file name '
                            'without extension), {index} and {stamp}: "{name}_L.png", "frame_{index:06d}.png"')
    truth.add_argument('--label-ignore', type=int, action='append', default=[], metavar='VALUE',
                       help="a label value to read as 255 (ignore), e.g. 11 for CamVid's void; repeatable")
    truth.add_argument('--gt-labels', choices=list_label_sets(), metavar='SET',
                       help=f'classes of the labels ({", ".join(list_label_sets())}); default: as the bag\'s '
                            "metadata says (seg-bag make writes it), else the first model's")
    output = parser.add_argument_group('outputs')
    output.add_argument('--outputs', type=parse_outputs, default=DEFAULT_OUTPUTS, metavar='LIST',
                        help=f'what the output bag holds per frame, comma-separated from {", ".join(OUTPUTS)} '
                             f'(default: {",".join(DEFAULT_OUTPUTS)}). image: the camera frames (JPEG unless '
                             'recorded compressed); mask: PNG, lossless; color_mask, overlay: JPEG')
    output.add_argument('--jpeg-quality', type=int, default=90, metavar='Q',
                        help='JPEG quality of camera frames, colour masks and overlays (default: 90)')
    output.add_argument('--storage', choices=list(STORAGE_PLUGINS), default='mcap',
                        help='storage of the output bag (default: mcap, zstd-compressed chunks)')
    output.add_argument('--no-bag', action='store_true', help='write no output bag')
    output.add_argument('--no-video', action='store_true', help='write no video')
    output.add_argument('--video-panels', choices=('color_mask', 'overlay'), default='color_mask',
                        help='what the video shows of each model (default: color_mask)')
    output.add_argument('--panel-height', type=int, default=360, metavar='PX',
                        help="height of each panel in the video and mosaic, at most the frames' own "
                             '(default: 360)')
    output.add_argument('--video-fps', type=float, metavar='FPS',
                        help="video frame rate (default: the camera's recorded rate over --stride)")
    output.add_argument('--mosaic-frames', type=int, default=4, metavar='N',
                        help='rows of the mosaic, spread evenly over the run (default: 4; with ground '
                             'truth, over the labelled frames)')
    output.add_argument('--mosaic-at', type=int, nargs='+', metavar='INDEX',
                        help='frame indices (as in frames.jsonl) to put in the mosaic instead')
    network = parser.add_argument_group('inference')
    network.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N (default: auto)')
    network.add_argument('--precision', choices=PRECISION_CHOICES, default='auto',
                         help='auto: measured with --backend at start-up (default: auto)')
    network.add_argument('--backend', choices=BACKENDS, default='auto',
                         help='auto: the fastest whose masks agree with fp32 PyTorch, measured at start-up and '
                              'cached (default: auto)')
    network.add_argument('--input-size', type=size_argument, metavar='WxH',
                         help="network input size (default: each checkpoint's training size)")
    runs = parser.add_argument_group('several runs')
    runs.add_argument('--workers', type=int, default=1, metavar='N',
                      help='evaluate N bags at a time on as many processes of this machine (default: 1)')
    runs.add_argument('--scheduler', metavar='ADDRESS',
                      help='a Dask scheduler (e.g. tcp://head:8786) whose workers evaluate the bags; they '
                           'need seg_ros installed and the bags and --out under the same paths')
    parser.add_argument('--quiet', '-q', action='store_true', help='no progress bar or log lines')
    return parser


def _make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='seg-bag make',
        description='Make a rosbag2 with a camera topic from a video file or an image folder (sorted by '
                    'name), optionally with a label topic from label PNGs. No ROS installation needed. '
                    'The bag appears at --out only once it is complete.',
        epilog='Examples:\n'
               '  seg-bag make drive.mp4 --out drive_bag\n'
               '  seg-bag make frames/ --rate 15 --encoding jpeg --out run_bag --storage sqlite3\n'
               '  seg-bag make camvid/val/images --labels camvid/val/labels --label-ignore 11 '
               '--rate 1 --out camvid_val_bag',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('source', help='a video file or a folder of images (also "synthetic" or '
                                       '"v4l2:/dev/videoN" with --max-frames)')
    parser.add_argument('--out', '-o', type=Path, required=True, help='the bag folder to create')
    parser.add_argument('--rate', type=float, metavar='HZ',
                        help="frames per second (default: the video's rate, else 10)")
    parser.add_argument('--topic', default='/camera/image_raw',
                        help='camera topic (default: /camera/image_raw; /compressed is added for jpeg, png)')
    parser.add_argument('--frame-id', default='camera', help='header frame_id (default: camera)')
    parser.add_argument('--encoding', choices=ENCODINGS, default='rgb8',
                        help='rgb8 or bgr8 (sensor_msgs/Image), jpeg or png (CompressedImage); default rgb8')
    parser.add_argument('--jpeg-quality', type=int, default=90, metavar='Q', help='default: 90')
    parser.add_argument('--labels', type=Path, metavar='DIR',
                        help='label PNGs: single-channel class indices, 255 = ignore; named as the images, '
                             'or by frame index for a video')
    parser.add_argument('--label-topic', metavar='TOPIC',
                        help='label topic (default: labels beside the camera topic, /camera/labels)')
    parser.add_argument('--label-set', choices=list_label_sets(), default='camvid11',
                        help='classes of the labels (default: camvid11)')
    parser.add_argument('--label-ignore', type=int, action='append', default=[], metavar='VALUE',
                        help="a label value to write as 255 (ignore), e.g. 11 for CamVid's void; repeatable")
    parser.add_argument('--storage', choices=list(STORAGE_PLUGINS), default='mcap',
                        help='storage plugin (default: mcap)')
    parser.add_argument('--start-time', type=float, metavar='SEC',
                        help='header stamp of the first frame in seconds since the epoch (default: now)')
    parser.add_argument('--max-frames', type=int, metavar='N', help='stop after N frames')
    parser.add_argument('--quiet', '-q', action='store_true', help='no progress bar')
    return parser


def _configure_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format='%(asctime)s %(levelname)s %(message)s', datefmt='%H:%M:%S')


def _ground_truth_problems(report: dict[str, Any], run: str = '') -> bool:
    """Warn on stderr of every label not used (also with -q); True when ground truth was asked for and
    none was used."""
    truth = report['ground_truth']
    if truth is None:
        return False
    labels = truth['labels']
    for warning in labels['warnings']:
        print(f'seg-bag: warning: {run}{warning}', file=sys.stderr)
    if truth['requested'] and not labels['used']:
        print(f'seg-bag: error: {run}ground truth from {truth["source"]}: none of its {labels["offered"]} '
              'label image(s) was used, so nothing is scored', file=sys.stderr)
        return True
    return False


def _print_summary(report: dict[str, Any], out: Path) -> int:
    """The console summary of one run; returns the exit status."""
    for topic, camera in report['topics'].items():
        print(f'{topic}: {camera["frames"]} frames')
        for name, stats in camera['models'].items():
            scored = camera['ground_truth'].get(name)
            miou = f', mIoU {scored["miou"]:.2f} % on {scored["frames"]} frames' if scored and \
                scored['miou'] is not None else ''
            confidence = stats['mean_confidence']
            print(f'  {name}: mean confidence {confidence if confidence is None else round(confidence, 3)}'
                  f'{miou}')
    stopped = report['stopped']
    if stopped:
        print(f'seg-bag: warning: reading stopped early: {stopped["reason"]}', file=sys.stderr)
    print(f'report: {out / "report.md"}')
    if stopped and stopped['reason'].startswith('interrupted'):
        return 130
    missing = _ground_truth_problems(report)
    if not report['run']['frames']:
        print(f'seg-bag: error: no frame of {", ".join(report["topics"])} was evaluated (see the report)',
              file=sys.stderr)
        missing = True
    return EXIT_MISSING if missing else 0


def _print_run(result: dict[str, Any]) -> None:
    if result['status'] != 'done':
        print(f'{result["name"]}: failed: {result["error"]}', file=sys.stderr)
        return
    run = result['report']['run']
    print(f'{result["name"]}: {run["frames"]} frames at {run["frames_per_second"]:.2f} frames/s')


def _print_combined(combined: dict[str, Any], out: Path) -> int:
    """The console summary of several runs; returns the exit status."""
    totals = combined['totals']
    print(f'{totals["runs"]} runs, {totals["frames"]} frames in {totals["wall_time_s"]:.1f} s '
          f'({totals["frames_per_second"]:.2f} frames/s) on {totals["where"]}')
    for name, model in totals['models'].items():
        for label_set, score in model['ground_truth'].items():
            print(f'  {name}: mIoU {number_text(score["miou"])} % over {score["frames"]} labelled frames of all '
                  f'runs ({label_set}, pooled)')
    print(f'report: {out / "report.md"}')
    missing = False
    for row in combined['runs']:
        if row['status'] == 'done':
            report = json.loads((out / row['out'] / 'report.json').read_text())
            missing |= _ground_truth_problems(report, f'{row["name"]}: ')
    if totals['runs_failed']:
        return 2
    if not totals['frames']:
        print('seg-bag: error: no frame was evaluated in any run', file=sys.stderr)
        return EXIT_MISSING
    return EXIT_MISSING if missing else 0


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    """``seg-bag BAG [BAG ...] ...``; returns the exit status."""
    args = _evaluate_parser().parse_args(argv)
    _configure_logging(args.quiet)
    try:
        bags = find_bags(args.bag)
        options = EvaluationOptions(
            bag=next(iter(bags.values())), checkpoints=_model_names(args.checkpoint), out=args.out,
            topics=args.topic, start=args.start, end=args.end, stride=args.stride, gt_topic=args.gt_topic,
            gt_dir=args.gt_dir, gt_match=args.gt_match, gt_pattern=args.gt_pattern, gt_labels=args.gt_labels,
            label_ignore=tuple(args.label_ignore), storage=args.storage, write_bag=not args.no_bag,
            outputs=args.outputs, jpeg_quality=args.jpeg_quality, write_video=not args.no_video,
            video_panels=args.video_panels, panel_height=args.panel_height, video_fps=args.video_fps,
            mosaic_frames=args.mosaic_frames, mosaic_at=args.mosaic_at, device=args.device,
            precision=args.precision, backend=args.backend,
            input_size=args.input_size, progress=not args.quiet)
        if len(bags) == 1 and args.workers == 1 and not args.scheduler:
            return _print_summary(evaluate_bag(options), args.out)
        combined = evaluate_runs(replace(options, progress=False), bags, workers=args.workers,
                                 scheduler=args.scheduler, on_done=_print_run)
    except EXPECTED_ERRORS as error:
        print(f'seg-bag: error: {error}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # while loading; the frame loop stops on its own and reports
        return 130
    return _print_combined(combined, args.out)


def make_main(argv: Sequence[str] | None = None) -> int:
    """``seg-bag make SOURCE ...``; returns the exit status."""
    args = _make_parser().parse_args(argv)
    try:
        summary = make_bag(MakeOptions(
            source=args.source, out=args.out, rate=args.rate, topic=args.topic, frame_id=args.frame_id,
            encoding=args.encoding, jpeg_quality=args.jpeg_quality, labels=args.labels,
            label_topic=args.label_topic, label_set=args.label_set, label_ignore=tuple(args.label_ignore),
            storage=args.storage, start_time=args.start_time, max_frames=args.max_frames,
            progress=not args.quiet))
    except EXPECTED_ERRORS as error:
        print(f'seg-bag make: error: {error}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    labelled = f', {summary["labelled"]} labelled' if summary['labelled'] else ''
    print(f'{summary["path"]}: {summary["frames"]} frames at {summary["rate"]:g} Hz on '
          f'{", ".join(summary["topics"])}{labelled}')
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``seg-bag``: ``make`` as the first argument makes a bag, ``bench`` times the evaluation,
    anything else evaluates bags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ['make']:
        return make_main(argv[1:])
    if argv[:1] == ['bench']:
        from seg_ros.bag.bench import bench_main

        return bench_main(argv[1:])
    return evaluate_main(argv)
