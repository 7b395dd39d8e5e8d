"""seg-study: the studies of paper 000 end to end on synthetic shapes; rows, columns, reuse, failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from seg_ros.checkpoint import load_checkpoint
from seg_ros.training.config import load_recipe, resolve_stages
from seg_ros.training.studies import STUDIES, main
from test.support.datasets import SHAPE_CLASSES, write_shapes
from test.support.training import TINY_NET

# The tiny network of the trainer's tests on the synthetic shapes: seconds per run on one core.
TINY = [f'model.name={TINY_NET}', 'data.dataset=folder', 'data.num_workers=0', 'train.device=cpu',
        'augment.crop_size=[32, 32]', 'train.batch_size=2', 'eval.input_size=null']


@pytest.fixture(scope='module')
def shapes_root(tmp_path_factory) -> Path:
    return write_shapes(tmp_path_factory.mktemp('study_shapes'), train=8, val=4)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def study(name: str, root: Path, out: Path, *extra: str) -> int:
    return main([name, '--data-root', str(root), '--out', str(out), '--epochs', '1', *TINY, *extra])


def table_lines(markdown: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip('|').split('|')] for line in markdown.splitlines()
            if line.startswith('|') and not line.startswith('| ---')]


def test_losses_study_scores_each_run_and_reuses_finished_ones(tmp_path, shapes_root):
    out = tmp_path / 'losses'
    assert study('losses', shapes_root, out, '--runs', 'ce,owfl,owfl_sel') == 0
    results = json.loads((out / 'results.json').read_text())
    assert [row['name'] for row in results['runs']] == ['ce', 'owfl', 'owfl_sel']
    ce, owfl, sel = results['runs']
    assert sel['status'] == 'not_applicable' and 'context head' in sel['message']
    for row in (ce, owfl):
        assert row['status'] == 'done' and not row['reused']
        assert list(row['per_class_iou']) == list(SHAPE_CLASSES)
        assert row['epochs'] == 1 and row['wall_time_s'] > 0
        assert row['precision'] in ('fp32', 'bf16')  # train.precision auto: what the trainer measured fastest
        # The study reports seg-eval's score of best.pt (fp32, through the Segmenter the node runs); the
        # trainer validated the same weights in its own precision (bf16 where measured faster), which
        # moves a few boundary pixels and no more (test_training checks the fp32 case exactly).
        best = load_checkpoint(out / row['name'] / 'best.pt')
        assert row['miou'] == pytest.approx(json.loads((out / row['name'] / 'val.json').read_text())['miou'])
        tolerance = 1e-6 if row['precision'] == 'fp32' else 1.0
        assert row['miou'] == pytest.approx(best.meta['metrics']['miou'], abs=tolerance)
    assert load_recipe(out / 'owfl' / 'recipe.yaml')['loss'] == {'name': 'owfl', 'c': 1.02}
    assert sum(results['class_frequency']['percent'].values()) == pytest.approx(100.0)

    header, *rows = table_lines((out / 'results.md').read_text())
    assert header[:len(SHAPE_CLASSES) + 2] == ['run', *SHAPE_CLASSES, 'mIoU']
    assert {'epochs', 'wall time', 'precision', 'status'} <= set(header)
    assert [row[0] for row in rows] == ['Cross Entropy', 'OWFL', 'OWFL + SEL', 'class frequency (train)']
    assert rows[0][header.index('mIoU')] == f'{ce["miou"]:.1f}'

    stamps = {name: (out / name / 'best.pt').stat().st_mtime_ns for name in ('ce', 'owfl')}
    log_text = (out / 'ce' / 'log.jsonl').read_text()
    assert study('losses', shapes_root, out, '--runs', 'ce,owfl,owfl_sel') == 0
    again = json.loads((out / 'results.json').read_text())
    assert [row['reused'] for row in again['runs'][:2]] == [True, True]
    assert [row['miou'] for row in again['runs'][:2]] == [ce['miou'], owfl['miou']]
    assert {name: (out / name / 'best.pt').stat().st_mtime_ns for name in stamps} == stamps
    assert (out / 'ce' / 'log.jsonl').read_text() == log_text
    assert 'done (earlier)' in (out / 'results.md').read_text()


def test_a_failing_run_is_a_row_and_the_others_go_on(tmp_path, shapes_root, capsys):
    out = tmp_path / 'mixup'
    (out / 'baseline').mkdir(parents=True)
    (out / 'baseline' / 'last.pt').write_bytes(b'half a checkpoint')  # a run killed while saving
    assert study('mixup', shapes_root, out) == 1
    baseline, mixup = json.loads((out / 'results.json').read_text())['runs']
    assert baseline['status'] == 'failed' and 'cannot resume' in baseline['message']
    assert mixup['status'] == 'done' and mixup['epochs'] == 2  # 000 VI-C: 5/3 of the baseline's epochs
    assert load_recipe(out / 'mixup' / 'recipe.yaml')['augment']['mixup_alpha'] == 0.1
    assert 'failed: TrainingError: cannot resume' in (out / 'results.md').read_text()
    assert 'failed: baseline' in capsys.readouterr().out


def test_procedures_study_trains_in_stages_with_mixed_precision(tmp_path, shapes_root):
    out = tmp_path / 'procedures'
    # poly: one-cycle needs more steps per stage than 8 images in batches of 8 give
    assert study('procedures', shapes_root, out, 'scheduler={name: poly}', '--epochs', '3') == 0
    rows = {row['name']: row for row in json.loads((out / 'results.json').read_text())['runs']}
    assert [rows[n]['precision'] for n in rows] == ['fp32', 'bf16', 'bf16']  # bf16: CPU mixed precision
    assert [rows[n]['epochs'] for n in rows] == [3, 3, 3]
    stages = resolve_stages(load_recipe(out / 'progressive_scaling' / 'recipe.yaml'))
    assert [(s.augment['crop_size'], s.batch_size, s.epochs) for s in stages] == [
        ([16, 16], 8, 1), ([21, 21], 4, 1), ([32, 32], 2, 1)]
    assert load_recipe(out / 'baseline' / 'recipe.yaml')['train']['batch_size'] == 1
    assert 'bf16 autocast' in (out / 'results.md').read_text()


def test_studies_follow_the_papers_settings():
    recipe = load_recipe('enet_camvid', ['data.root=/data/camvid'])
    cpu, cuda = torch.device('cpu'), torch.device('cuda')
    losses = STUDIES['losses'].runs(recipe, cpu)
    assert [run.label for run in losses] == ['Cross Entropy', 'Balanced CE', 'OHEM', 'Dice', 'Focal Loss',
                                             'OWFL', 'OWFL + SEL']
    assert [run.published for run in losses[:5]] == ['45.0', '53.1', '52.8', '53.8', '49.7']  # 000 Table III
    assert losses[-1].not_applicable and 'enet' in losses[-1].not_applicable
    dsnet = load_recipe('dsnet_camvid', ['data.root=/data/camvid'])
    assert STUDIES['losses'].runs(dsnet, cpu)[-1].not_applicable is None

    # 000 Table II at the recipe's full-frame crop and batch 16: BL 8, MP 16, PS 64/32/16 over 3 x 100 epochs
    baseline, mixed, progressive = STUDIES['procedures'].runs(recipe, cuda)
    assert baseline.overrides == ('train.batch_size=8', 'train.precision=fp32')
    assert mixed.overrides == ('train.batch_size=16', 'train.precision=fp16')
    stages = resolve_stages(load_recipe('enet_camvid', ['data.root=/data/camvid', *progressive.overrides]))
    assert [(s.augment['crop_size'], s.batch_size, s.epochs, s.optimizer['lr']) for s in stages] == [
        ([180, 240], 64, 100, 0.01), ([240, 320], 32, 100, 0.01), ([360, 480], 16, 100, 0.01)]
    assert 'train.precision=bf16' in STUDIES['procedures'].runs(recipe, cpu)[1].overrides
    assert STUDIES['mixup'].runs(recipe, cpu)[1].overrides == ('augment.mixup_alpha=0.1', 'train.epochs=500')


def test_bad_arguments_are_errors_naming_them(tmp_path, shapes_root, capsys):
    assert study('losses', shapes_root, tmp_path / 'x', '--runs', 'ce,hinge') == 2
    assert "--runs hinge: not a run of the losses study" in capsys.readouterr().err
    assert study('mixup', shapes_root, tmp_path / 'x', 'data.val_split=null') == 2
    assert 'data.val_split' in capsys.readouterr().err
    assert main(['mixup', '--data-root', str(shapes_root), '--epochs', '0']) == 2
    assert '--epochs must be >= 1' in capsys.readouterr().err
    assert not (tmp_path / 'x').exists()
