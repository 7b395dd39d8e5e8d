"""seg-bench on tiny configurations: the JSON holds every figure, and the figures agree with each
other (never with a timing expectation)."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from seg_ros.bench.cli import main
from seg_ros.bench.forward import MODES
from seg_ros.bench.papers import PAPER_FIGURES
from seg_ros.bench.targets import evaluate_targets
from seg_ros.inference.backends import candidates
from seg_ros.inference.segmenter import resolve_precision
from seg_ros.models import build_model, count_parameters
from seg_ros.reporting import markdown_table


def run(tmp_path, capsys, *argv: str) -> tuple[dict, str]:
    path = tmp_path / 'bench.json'
    assert main([*argv, '--device', 'cpu', '--json', str(path)]) == 0
    return json.loads(path.read_text()), capsys.readouterr().out


def test_forward_and_training_figures_are_complete_and_consistent(tmp_path, capsys):
    results, markdown = run(
        tmp_path, capsys, '--sections', 'forward', 'training', '--networks', 'enet', '--resolutions', '96x64',
        '--precisions', 'fp32', 'bf16', '--modes', 'eager', 'channels_last', 'onnxruntime', 'openvino', 'cuda_graph',
        '--iterations', '2', '--repeats', '2', '--warmup', '1', '--train-size', '32x32',
        '--train-iterations', '1', '--train-batch', '2', '--train-networks', 'enet')
    assert results['command'].startswith('seg-bench --sections forward training')
    assert results['machine']['torch'] == torch.__version__ and len(results['machine']['load_average_1_5_15']) == 3

    rows = {row['mode']: row for row in results['forward'] if row['precision'] == 'fp32'}
    assert sorted(rows) == ['channels_last', 'eager', 'onnxruntime', 'openvino']
    bf16 = {row['mode']: row for row in results['forward'] if row['precision'] == 'bf16'}
    assert sorted(bf16) == ['channels_last', 'eager', 'openvino']  # ONNX Runtime serves fp32 only
    native = resolve_precision('bf16', torch.device('cpu'))[0] == 'bf16'
    assert all(row['native_precision'] == native for row in bf16.values())
    assert all(row['native_precision'] for row in rows.values())
    model = build_model('enet', num_classes=19).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, 64, 96))
    for mode, row in [*rows.items(), *bf16.items()]:
        assert (row['width'], row['height'], row['resolution']) == (96, 64, '96x64')
        assert 0 < row['p50_ms'] <= row['p99_ms'] <= row['max_ms']
        assert row['fps'] == pytest.approx(1000.0 / row['p50_ms'])
        assert len(row['repeat_p50_ms']) == 2 and row['iterations'] == 4
        assert row['params'] == count_parameters(model)
        assert row['gflops'] == pytest.approx(counter.get_total_flops() / 1e9)
        assert row['gmacs'] == pytest.approx(row['gflops'] / 2)
        assert row['backend'] == MODES[mode].backend
        on_torch = row['backend'] == 'torch'  # the other runtimes' weights and memory are their own
        assert (row['weights_mib'] is None, row['peak_activation_mib'] is None) == (not on_torch, not on_torch)
    assert bf16['eager']['weights_mib'] == pytest.approx(rows['eager']['weights_mib'] / 2, rel=0.01)
    assert rows['eager']['peak_activation_mib'] > 0
    shares = rows['eager']['op_shares_pct']
    assert shares['convolution'] > 0 and sum(shares.values()) == pytest.approx(100, abs=1)

    skipped = {(s['precision'], s['mode']): s['reason'] for s in results['skipped']}
    assert skipped == {('fp32', 'cuda_graph'): 'CUDA graphs need a CUDA device',
                       ('bf16', 'cuda_graph'): 'CUDA graphs need a CUDA device',
                       ('bf16', 'onnxruntime'): 'the onnxruntime backend runs fp32 on a CPU'}

    (speedup,) = results['speedup']
    fastest = min([r for r in [*rows.values(), *bf16.values()] if r['mode'] != 'eager'], key=lambda r: r['p50_ms'])
    assert speedup['best_mode'] == fastest['mode']
    assert speedup['speedup'] == pytest.approx(rows['eager']['p50_ms'] / fastest['p50_ms'])
    forward_target, training_target = results['targets']
    assert forward_target['measured'] == speedup['speedup'] and forward_target['met'] == (speedup['speedup'] >= 2)

    before, now = results['training']
    assert (before['trainer'], before['precision'], before['channels_last']) == ('before', 'fp32', False)
    assert before['data'] == 'streamed, 4 workers' and now['data'] == 'in memory, per frame (OpenCV)'
    # today's trainer runs the candidate its own step timing found fastest
    assert str(now['precision']) + (' channels_last' if now['channels_last'] else '') == \
        min(now['step_seconds'], key=now['step_seconds'].get)
    assert now['speedup'] == pytest.approx(now['images_per_s'] / before['images_per_s'])
    assert all(row['images_per_s'] > 0 and row['crop'] == '32x32' and row['batch'] == 2 for row in (before, now))
    assert training_target['measured'] == now['speedup'] and 'training images/s' in training_target['target']

    assert '## Forward' in markdown and '| enet | 96x64 | fp32 | yes | eager |' in markdown
    assert '## Training throughput' in markdown and '## Targets' in markdown


def test_node_sections_measure_the_real_node_over_dds(tmp_path, capsys):
    results, markdown = run(
        tmp_path, capsys, '--sections', 'messages', 'node', 'overload', '--node-networks', 'enet',
        '--node-configs', '1x96x64', '--node-rate', '5', '--node-seconds', '2',
        '--node-settle', '0.5',
        '--overload-seconds', '2', '--overload-resolution', '96x64', '--message-iterations', '2',
        '--node-forward-iterations', '2', '--threads', '1')  # the node and the probe too, as conftest

    steps = {row['step']: row for row in results['messages']}
    assert len(steps) == 12 and all(row['p50_ms'] > 0 for row in steps.values())
    # The steps of segment() one by one, the forward named with the backend it runs.
    assert any(step.startswith('network forward (Segmenter.forward, ') for step in steps)
    assert 'post-processing: soft-max, argmax, confidence, statistics' in steps

    (node,) = results['node']
    assert 0 < node['received'] <= node['published']
    assert node['dropped'] == node['published'] - node['received']
    assert 0 < node['latency_p50_ms'] <= node['latency_p99_ms'] <= node['latency_max_ms']
    assert node['e2e_over_forward'] == pytest.approx(node['latency_p50_ms'] / node['forward_p50_ms'])
    assert node['overhead_ms'] == pytest.approx(node['latency_p50_ms'] - node['forward_p50_ms'])
    assert node['node_cpu_cores'] > 0 and node['output_rate_hz'] > 0 and node['rate_hz'] <= 30

    overload = results['overload']
    assert overload['rate_hz'] > 0 and overload['received'] > 0
    assert overload['input_over_output_rate'] >= 0.99  # the node never outputs more than it gets
    assert overload['node_dropped'] <= overload['dropped']  # a frame it drops never reaches us
    assert overload['memory_mib'] and overload['rss_start_mib'] > 0
    assert overload['rss_settled_min_mib'] <= overload['rss_end_mib'] <= overload['rss_settled_max_mib']
    assert overload['rate_hz'] == pytest.approx(2 * overload['capacity_hz'])
    assert overload['p99_over_p50'] == pytest.approx(overload['latency_p99_ms'] / overload['latency_p50_ms'])
    targets = {t['target']: t for t in results['targets']}
    bounded = targets['overload: latency bounded, p99 within 2x p50']
    assert bounded['measured'] == overload['p99_over_p50'] and bounded['met'] == overload['latency_bounded']
    flat = targets['overload: node memory flat (end / settled minimum)']
    assert flat['measured'] == pytest.approx(overload['rss_end_mib'] / overload['rss_settled_min_mib'])
    assert '## segment_node end to end over DDS' in markdown and '## Overload' in markdown


def test_segment_section_times_every_backend_and_the_automatic_choice(tmp_path, capsys):
    results, markdown = run(tmp_path, capsys, '--sections', 'segment', '--segment-networks', 'enet',
                            '--segment-resolutions', '96x64', '--iterations', '2', '--repeats', '1')
    rows = {row['config']: row for row in results['segment']}
    (auto,) = [row for name, row in rows.items() if name.startswith('auto: ')]
    expected = {'eager fp32', *(str(c) for c in candidates(torch.device('cpu')))}
    assert set(rows) - {auto['config']} == expected
    assert auto['config'] == f"auto: {auto['backend']} {auto['precision']}" and auto['startup_s'] > 0
    assert auto['choice'].startswith(auto['config'].removeprefix('auto: ') + ' (measured in')
    eager = rows['eager fp32']
    for row in rows.values():
        assert row['weights'] == 'shipped' and row['iterations'] == 2 and 0 < row['p50_ms'] <= row['p99_ms']
        assert row['vs_eager'] == pytest.approx(eager['p50_ms'] / row['p50_ms'])
    assert rows['torch fp32']['agreement_pct'] == 100 and auto['agreement_pct'] >= 99.5
    (speedup,) = results['segment_speedup']
    assert speedup['speedup'] == auto['vs_eager'] and speedup['choice'] == auto['config'].removeprefix('auto: ')
    (target,) = results['targets']
    assert target['target'].startswith('segment(), automatic choice >= 2x plain fp32 eager (enet, 96x64')
    assert '## segment(): every backend x precision and the automatic choice' in markdown


def test_targets_say_by_how_much_they_are_missed():
    erfnet_paper = next(f for f in PAPER_FIGURES if f.network == 'erfnet' and f.size == (360, 640)
                        and 'Titan' in f.hardware)
    assert erfnet_paper.fps == pytest.approx(83.3, abs=0.1)  # Table IV prints 83.3 fps for 12 ms
    forward = [{'network': 'erfnet', 'precision': 'fp16', 'height': 360, 'width': 640, 'batch': 1,
                'fps': 10 * erfnet_paper.fps}]
    node = [{'network': 'erfnet', 'resolution': '1280x720', 'cameras': 4, 'rate_hz': 30.0,
             'latency_p99_ms': 25.0},
            {'network': 'enet', 'resolution': '1280x720', 'cameras': 1, 'rate_hz': 30.0, 'overhead_ms': 0.5}]
    targets = {t['target']: t for t in evaluate_targets({'forward': forward, 'node': node},
                                                        torch.device('cuda'))}
    paper = next(t for name, t in targets.items() if name.startswith('erfnet fp16 >= 20x ERFNet Table IV')
                 and 'Titan' in name and '640x360' in name)
    assert not paper['met'] and paper['factor_missing'] == pytest.approx(2.0)
    four = targets['ERFNet, 4 cameras 1280x720 at 30 Hz: p99 < 20 ms']
    assert not four['met'] and four['factor_missing'] == pytest.approx(25 / 20)
    overhead = targets['node overhead beyond the forward < 1 ms (enet, 1280x720)']
    assert overhead['met'] and overhead['factor_missing'] is None
    # GPU targets are not judged from CPU figures.
    assert evaluate_targets({'forward': forward, 'node': node}, torch.device('cpu')) == []


def test_markdown_tables_and_argument_errors(capsys):
    table = markdown_table([{'a': 1.23456, 'b': None, 'c': True}], {'a': 'A', 'b': 'B', 'c': 'C'})
    assert table.splitlines() == ['| A | B | C |', '| --- | --- | --- |', '| 1.235 | - | yes |']
    with pytest.raises(SystemExit) as exit_info:
        main(['--resolutions', '640'])
    assert exit_info.value.code == 2 and 'not WIDTHxHEIGHT' in capsys.readouterr().err


def test_ground_section_times_the_lookup_and_each_frame(tmp_path, capsys):
    results, markdown = run(tmp_path, capsys, '--sections', 'ground', '--ground-resolutions', '160x96',
                            '--ground-iterations', '2')
    rows = results['ground']
    assert [row['resolution'] for row in rows] == ['160x96'] * 5
    assert {row['step'] for row in rows} == {
        'lookup, once per camera model (pinhole)', 'lookup, once per camera model (plumb_bob)',
        'per frame: mask -> grid and scan contacts', 'per frame: scan ranges',
        'per frame: OccupancyGrid + LaserScan messages'}
    assert all(0 < row['p50_ms'] <= row['p99_ms'] <= row['max_ms'] and row['cells'] == 500 * 400 for row in rows)
    assert '## Ground grid and scan, one camera (CPU)' in markdown
