"""``seg-bench``: how fast the networks, the inference path and the node are, measured here.

Sections (``--sections``; all by default), each printed as markdown tables, every figure saved
with ``--json PATH``:

- ``forward``: each network x resolution x precision x execution mode (``MODES``): median and p99
  latency of a batch-1 forward, frames/s, the spread of repeated runs, parameters, GMACs/GFLOPs,
  weights and peak memory, and for plain eager fp32 where its time goes (op shares).
- ``segment``: the whole ``Segmenter.segment()`` call (upload, resize, forward, soft-max,
  argmax, statistics) of each network's shipped checkpoint at camera sizes, for plain eager fp32
  PyTorch, every backend x precision, and the automatic choice (measured afresh, its start-up
  time and what it chose): median ms, the ratio to plain eager, and the share of pixels whose
  class agrees with fp32 PyTorch on the sample frames (``--images``, default the bundled sample).
- ``messages``: the path around the network at camera sizes: message -> array, the Segmenter's
  pre/post-processing step by step, array -> message and publish of the mask and overlay.
- ``node``: ``segment_node`` as a separate process over real DDS (Fast DDS profile
  ``config/fastdds.xml``): cameras publish at a set rate, a subscriber receives the masks;
  latency from each image's stamp to its mask's arrival, output rate, dropped frames, CPU use,
  and the ratio of end-to-end latency to the bare forward at the same settings.
- ``overload``: frames at twice the node's capacity: latency, drops and memory over time.
- ``training``: training images/s with data loading, per network: the streamed fp32 trainer against
  today's (split in memory, the precision and layout measured fastest).
- ``ground``: the ground grid and scan of one camera (``seg_ros.ground``) at camera sizes: building
  its pixel-to-ground lookup once, then the work per frame, on the synthetic scene's masks.

Then the targets of the project, met or missed by how much, from the figures above.

Timing: warm-up calls first; on CUDA the device is synchronised around every timed call; inputs
rotate through several random tensors. Frames/s is 1000 / median latency x batch (sequential
batch-1 inference, as the papers time it). GFLOPs counts a multiply-add as 2 FLOPs
(``torch.utils.flop_counter``); GMACs (= GFLOPs / 2) is what the papers call GFLOPs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from seg_ros.bench.forward import DEFAULT_MODES, DEFAULT_PRECISIONS, MODES, bench_forward, speedups
from seg_ros.bench.ground import bench_ground
from seg_ros.bench.messages import bench_messages
from seg_ros.bench.node import NODE_RESOLUTIONS, bench_node, bench_overload
from seg_ros.bench.papers import PAPER_FIGURES
from seg_ros.bench.segment import bench_segment, segment_speedups
from seg_ros.bench.targets import evaluate_targets
from seg_ros.bench.training import bench_training
from seg_ros.inference.backends import (
    cpu_supports_bf16,
)
from seg_ros.inference.segmenter import resolve_device
from seg_ros.models import list_models
from seg_ros.paths import fastdds_profile
from seg_ros.reporting import machine_info, markdown_table
from seg_ros.vocabulary import PRECISION_CHOICES, PRECISIONS, size_argument

__all__ = ['main', 'run_benchmark']

SECTIONS = ('forward', 'segment', 'messages', 'node', 'overload', 'training', 'ground')
RESOLUTIONS = ((320, 480), (360, 640), (512, 1024), (720, 1280), (1080, 1920), (1024, 2048))


def _node_config(text: str) -> tuple[int, tuple[int, int]]:
    cameras, _, resolution = text.partition('x')
    if not cameras.isdigit() or int(cameras) < 1:
        raise argparse.ArgumentTypeError(f'node config {text!r} is not CAMERASxWIDTHxHEIGHT, e.g. 4x640x360')
    return int(cameras), size_argument(resolution)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='seg-bench', description=__doc__.split('\n\n')[0],
        epilog='Resolutions are WIDTHxHEIGHT. Defaults adapt to the device: see docs/BENCHMARKS.md.')
    parser.add_argument('--sections', nargs='+', choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument('--quick', action='store_true',
                        help='a short run: ENet only, 640x360, few iterations, short node runs')
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N (default: auto)')
    parser.add_argument('--threads', type=int, default=None,
                        help='PyTorch (and ONNX Runtime, and the node\'s) intra-op threads')
    parser.add_argument('--json', type=Path, default=None, metavar='PATH', help='save every figure here')
    parser.add_argument('--seed', type=int, default=0)
    forward = parser.add_argument_group('forward')
    forward.add_argument('--networks', nargs='+', choices=list_models(), default=None)
    forward.add_argument('--resolutions', nargs='+', type=size_argument, default=None, metavar='WxH',
                         help='default: 640x360 on a CPU; 480x320 640x360 1024x512 1280x720 1920x1080 '
                              '2048x1024 on CUDA')
    forward.add_argument('--precisions', nargs='+', choices=PRECISIONS, default=None)
    forward.add_argument('--modes', nargs='+', choices=list(MODES), default=None)
    forward.add_argument('--num-classes', type=int, default=19,
                         help='output classes (default: 19, as Cityscapes)')
    forward.add_argument('--batch', type=int, default=1)
    forward.add_argument('--iterations', type=int, default=None, help='timed calls per repeat')
    forward.add_argument('--repeats', type=int, default=None, help='repeated timing runs (their spread)')
    forward.add_argument('--warmup', type=int, default=None)
    forward.add_argument('--rotate', type=int, default=3, help='distinct inputs cycled through')
    forward.add_argument('--no-op-shares', dest='op_shares', action='store_false',
                         help='skip profiling where eager fp32 spends its time')
    segment = parser.add_argument_group('segment')
    segment.add_argument('--segment-networks', nargs='+', choices=list_models(), default=None)
    segment.add_argument('--segment-resolutions', nargs='+', type=size_argument, default=None, metavar='WxH',
                         help='default: 640x360 1280x720 (SegFast and SegFast-Basic also 224x224, their '
                              "paper's size, unless --no-paper-sizes)")
    segment.add_argument('--no-paper-sizes', dest='segment_paper_sizes', action='store_false',
                         help='leave out the papers\' sizes that are added to --segment-resolutions')
    segment.add_argument('--images', nargs='+', type=Path, default=None, metavar='PATH',
                         help='frames to time segment() on and to choose on (e.g. CamVid val images); '
                              'default: the bundled sample (synthetic road scenes)')
    node = parser.add_argument_group('node, overload and messages')
    node.add_argument('--node-networks', nargs='+', choices=list_models(), default=None)
    node.add_argument('--node-configs', nargs='+', type=_node_config, default=None, metavar='CAMERASxWxH',
                      help='runs of the node, e.g. 1x640x360 4x1280x720 (default: 1 and 4 cameras at '
                           '640x360 and 1280x720; on a CPU without 4x1280x720)')
    node.add_argument('--node-rate', type=float, default=None,
                      help='camera rate in Hz (default: half the measured capacity, at most 30)')
    node.add_argument('--node-seconds', type=float, default=None, help='measured seconds per run')
    node.add_argument('--node-settle', type=float, default=2.0, help='seconds published before measuring')
    node.add_argument('--node-start-timeout', type=float, default=180.0)
    node.add_argument('--node-precision', default='auto', choices=PRECISION_CHOICES)
    node.add_argument('--node-forward-iterations', type=int, default=None)
    node.add_argument('--message-iterations', type=int, default=None)
    node.add_argument('--overload-seconds', type=float, default=None)
    node.add_argument('--overload-resolution', type=size_argument, default=(360, 640), metavar='WxH')
    training = parser.add_argument_group('training')
    training.add_argument('--train-networks', nargs='+', choices=list_models(), default=None)
    training.add_argument('--train-batch', type=int, default=None)
    training.add_argument('--train-size', type=size_argument, default=None, metavar='WxH')
    training.add_argument('--train-iterations', type=int, default=None, help='timed batches per trainer')
    training.add_argument('--train-data', type=Path, default=None, metavar='CAMVID_ROOT',
                          help='read CamVid train frames from here (default: synthetic road frames)')
    ground = parser.add_argument_group('ground')
    ground.add_argument('--ground-resolutions', nargs='+', type=size_argument, default=None, metavar='WxH',
                        help='camera sizes (default: 640x360 1280x720)')
    ground.add_argument('--ground-iterations', type=int, default=None, help='timed frames per step')
    return parser


def _defaults(args: argparse.Namespace, device: torch.device) -> None:
    """Fill what was not given: full matrices on CUDA, a few minutes' worth on a CPU."""
    cuda, quick = device.type == 'cuda', args.quick
    networks = ['enet'] if quick else list_models()
    choose = {
        'networks': networks,
        'resolutions': [(360, 640)] if quick or not cuda else list(RESOLUTIONS),
        # bf16 on a CPU where it is native (elsewhere emulated and slower: --precisions bf16 shows it).
        'precisions': ['fp32', 'bf16'] if not cuda and cpu_supports_bf16() else list(DEFAULT_PRECISIONS[device.type]),
        'modes': list(DEFAULT_MODES[device.type]),
        'iterations': 50 if cuda else 3,
        'repeats': 3 if cuda else 2,
        'warmup': 10 if cuda else 1,
        'segment_networks': networks,
        'segment_resolutions': [(360, 640)] if quick else list(NODE_RESOLUTIONS),
        'node_networks': ['enet', 'erfnet'] if cuda and not quick else ['enet'],
        'node_configs': [(1, (360, 640))] if quick else [
            (cameras, size) for size in NODE_RESOLUTIONS for cameras in (1, 4)
            if cuda or cameras * size[0] * size[1] < 4 * 720 * 1280],
        'node_seconds': 4.0 if quick else (15.0 if cuda else 10.0),
        'node_forward_iterations': 100 if cuda else 12,
        'message_iterations': 30 if cuda else 3,
        'overload_seconds': 8.0 if quick else 30.0,
        'train_networks': networks,
        'train_batch': 8,
        'train_size': (360, 480),
        'train_iterations': 10 if cuda else 3,
        'ground_resolutions': [(360, 640), (720, 1280)],
        'ground_iterations': 10 if quick else 30,
    }
    for key, value in choose.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.node_device = str(device)


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Every requested section; the results as one JSON-ready dict."""
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True  # fixed shapes, as in the Segmenter
    _defaults(args, device)
    results: dict[str, Any] = {'machine': machine_info(device), 'command': args.command,
                               'modes': {name: mode.description for name, mode in MODES.items()},
                               'papers': [dict(vars(f), fps=f.fps) for f in PAPER_FIGURES]}
    if args.quick:
        args.segment_paper_sizes = False
    with tempfile.TemporaryDirectory(prefix='seg_bench_') as tmp:
        folder = Path(tmp)
        if 'forward' in args.sections:
            results['forward'], results['skipped'] = bench_forward(args, device)
            results['speedup'] = speedups(results['forward'])
        if 'segment' in args.sections:
            results['segment'] = bench_segment(args, device, folder)
            results['segment_speedup'] = segment_speedups(results['segment'])
        if {'messages', 'node', 'overload'} & set(args.sections):
            # Both this process and the node use the project's Fast DDS profile unless told otherwise.
            with contextlib.suppress(FileNotFoundError):
                os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', str(fastdds_profile()))
        if 'messages' in args.sections:
            results['messages'] = bench_messages(args, device, folder)
        if 'node' in args.sections:
            results['node'] = bench_node(args, folder)
        if 'overload' in args.sections:
            results['overload'] = bench_overload(args, folder)
        if 'training' in args.sections:
            results['training'] = bench_training(args, device, folder)
        if 'ground' in args.sections:
            results['ground'] = bench_ground(args)
    results['targets'] = evaluate_targets(results, device)
    results['machine']['load_average_end'] = [round(v, 2) for v in os.getloadavg()]
    return results


def report(results: dict[str, Any]) -> str:
    """The results as markdown."""
    machine = results['machine']
    parts = [f'# seg-bench on {machine.get("gpu") or machine["cpu"]}',
             f'CPU flags: {" ".join(machine.get("cpu_flags", [])) or "none of avx512f, avx512_bf16, amx"}; '
             f'torch {machine["torch"]}, onnxruntime {machine.get("onnxruntime", "-")}, '
             f'openvino {machine.get("openvino", "-")}, '
             f'{machine["torch_threads"]} threads, OMP_WAIT_POLICY {machine["omp_wait_policy"]}, '
             f'load average {machine["load_average_1_5_15"]} at start, {machine.get("load_average_end")} '
             f'at the end; command: `{results["command"]}`']
    if results.get('forward'):
        parts += ['## Forward (batch 1 unless stated)', markdown_table(results['forward'], {
            'network': 'network', 'resolution': 'WxH', 'precision': 'precision',
            'native_precision': 'native', 'mode': 'mode', 'p50_ms': 'median ms', 'p99_ms': 'p99 ms',
            'fps': 'frames/s', 'spread_pct': 'spread %', 'params': 'params', 'gmacs': 'GMACs',
            'weights_mib': 'weights MiB', 'peak_activation_mib': 'peak act. MiB', 'load_average': 'load'})]
        shares = [dict(network=r['network'], resolution=r['resolution'], **r['op_shares_pct'])
                  for r in results['forward'] if r.get('op_shares_pct')]
        if shares:
            groups = sorted({key for row in shares for key in row} - {'network', 'resolution'})
            parts += ['### Where eager fp32 spends its time (% of op self time)',
                      markdown_table(shares, {'network': 'network', 'resolution': 'WxH',
                                              **{g: g for g in groups}})]
        parts += ['### Fastest mode against plain eager fp32', markdown_table(results['speedup'], {
            'network': 'network', 'resolution': 'WxH', 'eager_fp32_ms': 'eager fp32 ms',
            'best_mode': 'fastest mode', 'best_precision': 'precision', 'best_ms': 'ms',
            'speedup': 'speed-up'})]
    if results.get('segment'):
        parts += ['## segment(): every backend x precision and the automatic choice', markdown_table(
            results['segment'], {'network': 'network', 'resolution': 'WxH', 'weights': 'weights', 'config': 'runs',
                                 'p50_ms': 'median ms', 'p99_ms': 'p99 ms', 'vs_eager': 'vs eager fp32',
                                 'agreement_pct': 'pixels as fp32 PyTorch %', 'startup_s': 'start-up s',
                                 'load_average': 'load'}),
                  '### The automatic choice against plain eager fp32', markdown_table(results['segment_speedup'], {
                      'network': 'network', 'resolution': 'WxH', 'choice': 'choice', 'eager_ms': 'eager fp32 ms',
                      'auto_ms': 'auto ms', 'speedup': 'speed-up', 'startup_s': 'start-up s'})]
        parts += [f'- {r["network"]} {r["resolution"]}: {r["choice"]}' for r in results['segment'] if r.get('choice')]
    if results.get('skipped'):
        parts += ['Skipped: ' + '; '.join(f'{s["network"]} {s["resolution"]} {s["precision"]} {s["mode"]} '
                                          f'({s["reason"]})' for s in results['skipped'])]
    if results.get('messages'):
        parts += ['## Around the network', markdown_table(results['messages'], {
            'resolution': 'WxH', 'step': 'step', 'p50_ms': 'median ms', 'p99_ms': 'p99 ms'})]
    if results.get('node'):
        parts += ['## segment_node end to end over DDS', markdown_table(results['node'], {
            'network': 'network', 'resolution': 'WxH', 'cameras': 'cameras', 'rate_hz': 'rate Hz',
            'latency_p50_ms': 'p50 ms', 'latency_p99_ms': 'p99 ms', 'output_rate_hz': 'out Hz/camera',
            'published': 'sent', 'dropped': 'dropped', 'node_cpu_cores': 'node CPU (cores)',
            'node_segment_p50_ms': 'node segment ms', 'forward_p50_ms': 'forward ms',
            'e2e_over_forward': 'e2e / forward', 'load_average': 'load'})]
    if results.get('overload'):
        parts += ['## Overload (twice the capacity)', markdown_table([results['overload']], {
            'network': 'network', 'resolution': 'WxH', 'rate_hz': 'rate Hz', 'seconds': 's',
            'latency_p50_ms': 'p50 ms', 'latency_p99_ms': 'p99 ms', 'p99_over_p50': 'p99 / p50',
            'forward_p50_ms': 'forward p50 ms', 'forward_p99_ms': 'forward p99 ms',
            'input_over_output_rate': 'input / output rate', 'published': 'sent', 'dropped': 'dropped',
            'node_dropped': 'node-counted drops',
            'rss_start_mib': 'RSS start MiB', 'rss_settled_min_mib': 'RSS min, settled',
            'rss_settled_max_mib': 'RSS max, settled', 'rss_end_mib': 'RSS end MiB',
            'rss_settled_slope_mib_per_min': 'RSS MiB/min, settled'})]
    if results.get('training'):
        parts += ['## Training throughput (data loading included)', markdown_table(results['training'], {
            'network': 'network', 'trainer': 'trainer', 'data': 'data', 'precision': 'precision',
            'channels_last': 'channels_last', 'batch': 'batch', 'crop': 'crop WxH', 'images_per_s': 'images/s',
            'speedup': 'speed-up', 'load_average': 'load'})]
    if results.get('ground'):
        parts += ['## Ground grid and scan, one camera (CPU)', markdown_table(results['ground'], {
            'resolution': 'WxH', 'step': 'step', 'cells': 'grid cells', 'p50_ms': 'median ms', 'p99_ms': 'p99 ms',
            'load_average': 'load'})]
    if results.get('targets'):
        parts += ['## Targets', markdown_table(results['targets'], {
            'target': 'target', 'measured': 'measured', 'required': 'required', 'unit': 'unit', 'met': 'met',
            'factor_missing': 'missed by (x)'})]
    return '\n\n'.join(parts) + '\n'


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the markdown report; 2 on a bad argument or a failed node run."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    args.command = shlex.join(['seg-bench', *argv])
    try:
        results = run_benchmark(args)
    except (ValueError, RuntimeError, ImportError) as error:
        print(f'seg-bench: {error}', file=sys.stderr)
        return 2
    print(report(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
