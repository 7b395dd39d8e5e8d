"""seg-train: recipes and overrides, learning proven on synthetic shapes, exact resume after SIGKILL,
data problems reported before training, stages, mixed precision, mixup, CamVid, torchrun."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from seg_ros.checkpoint import load_checkpoint
from seg_ros.data import list_datasets
from seg_ros.models import build_model
from seg_ros.training.cli import eval_main, train_main
from seg_ros.training.config import RecipeError, load_recipe, recipe_dirs, resolve_stages
from seg_ros.training.evaluate import evaluate
from seg_ros.training.losses import build_criterion
from seg_ros.training.runlog import read_epoch_records
from seg_ros.training.schedules import build_optimizer, build_scheduler
from seg_ros.training.speed import candidate_settings
from seg_ros.training.trainer import Trainer, TrainingError

from .support.datasets import SHAPE_CLASSES, make_cityscapes, write_shapes
from .support.training import (
    TINY_NET,
    TINY_UNPOOL_NET,
    subprocess_env,
    tiny_recipe,
    tiny_recipe_file,
    train_command,
)

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / 'config' / 'train').glob('*.yaml'))


@pytest.fixture(scope='module')
def shapes_root(tmp_path_factory) -> Path:
    return write_shapes(tmp_path_factory.mktemp('shapes'))


@pytest.fixture(scope='module')
def few_shapes_root(tmp_path_factory) -> Path:
    """Eight training images (four batches of two), for the tests of the machinery."""
    return write_shapes(tmp_path_factory.mktemp('few_shapes'), train=8, val=4)


# -- recipes and overrides ------------------------------------------------------------------------------


def test_overrides_set_dotted_keys_with_yaml_values():
    recipe = load_recipe('enet_camvid', [
        'data.root=/data/camvid', 'optimizer.lr=1e-3', 'augment.crop_size=[256, 320]', 'train.precision=bf16',
        'loss={name: ohem, threshold: 0.7}', 'model.options={}', 'output.dir=/tmp/x'])
    assert recipe['data']['root'] == '/data/camvid'
    assert recipe['optimizer']['lr'] == pytest.approx(1e-3)  # "1e-3" is a float, not YAML 1.1's string
    assert recipe['augment']['crop_size'] == [256, 320]
    assert recipe['train']['precision'] == 'bf16'
    assert recipe['loss'] == {'name': 'ohem', 'threshold': 0.7}
    assert recipe['output']['dir'] == '/tmp/x'
    assert load_recipe('enet_camvid')['output']['dir'] == str(Path('runs') / 'enet_camvid')


@pytest.mark.parametrize(('override', 'message'), [
    ('train.epoch=3', "unknown key 'train.epoch' (did you mean 'epochs'?)"),
    ('augment.crop=[1, 2]', "unknown key 'augment.crop'"),
    ('stages.2.epochs=1', 'stages is a list of 2'),
    ('stages.1.epoch=1', "unknown key 'stages.1.epoch' (did you mean 'epochs'?)"),
    ('model.name=enett', "'model.name': unknown network 'enett' (did you mean 'enet'?)"),
    ('train.precision=fp8', "'train.precision': needs one of auto, fp32, fp16, bf16"),
    ('train.channels_last=maybe', "'train.channels_last': needs auto, true or false"),
    ('data.cache=sometimes', "'stages.0.data.cache': needs auto, true or false"),
    ('train.compile=often', "'train.compile': needs auto, true or false"),
    ('augment.scale_range=[2, 1]', "'stages.0.augment.scale_range'"),
    ('train.epochs=5', "'train.epochs': is 5 but the recipe lists stages"),
    ('data.root', 'is not key=value'),
])
def test_bad_overrides_are_errors_naming_the_key(override, message):
    with pytest.raises(RecipeError) as error:
        load_recipe('erfnet_camvid', [override])
    assert message in str(error.value)


def test_stages_resolve_shorthands_merged_and_replaced_sections():
    recipe = load_recipe('enet_cityscapes', [
        'train.epochs=null',
        'stages=[{name: s384, epochs: 2, crop_size: [384, 384], batch_size: 64, lr: 0.02},'
        ' {name: coarse, epochs: 1, data: {train_split: train_extra}, optimizer: {name: adam, lr: 1e-4}},'
        ' {name: s768, epochs: 3, crop_size: [768, 768], batch_size: 16}]'])
    first, second, third = resolve_stages(recipe)
    assert (first.augment['crop_size'], first.batch_size, first.optimizer['lr']) == ([384, 384], 64, 0.02)
    assert first.optimizer['name'] == 'sgd' and first.optimizer['weight_decay'] == pytest.approx(1e-4)
    # data is merged key by key, an optimizer spec replaces the top-level one whole
    assert second.data == {**recipe['data'], 'train_split': 'train_extra'}
    assert second.optimizer == {'name': 'adam', 'lr': 1e-4}
    assert (third.augment['crop_size'], third.batch_size, third.epochs) == ([768, 768], 16, 3)
    assert third.augment['scale_range'] == [0.5, 1.5] and third.loss == recipe['loss']


def test_recipe_files_are_found_by_name_and_missing_ones_listed():
    assert any((d / 'enet_camvid.yaml').is_file() for d in recipe_dirs())
    with pytest.raises(RecipeError, match='enet_camvid'):
        load_recipe('no_such_recipe')


@pytest.mark.parametrize('path', RECIPES, ids=[p.stem for p in RECIPES])
def test_bundled_recipe_builds_every_stage(path):
    """Every recipe names a network, dataset, loss, optimiser and schedule that build as written."""
    recipe = load_recipe(path)
    # <network>_<dataset>, optionally _<variant> (enet_camvid_cpu: the procedure sized for a CPU)
    assert path.stem.removesuffix('_cpu') == f'{recipe["model"]["name"]}_{recipe["data"]["dataset"]}'
    model = build_model(recipe['model']['name'], 19, **recipe['model']['options'])
    for stage in resolve_stages(recipe):
        assert stage.data['dataset'] in list_datasets(), f'{stage.name}: unknown dataset'
        build_criterion(stage.loss, num_classes=19, class_frequencies=np.full(19, 1 / 19))
        optimizer = build_optimizer(model.parameters(), stage.optimizer)
        build_scheduler(optimizer, stage.scheduler, steps_per_epoch=10, epochs=stage.epochs)


def test_every_network_has_camvid_and_cityscapes_recipes():
    names = {p.stem for p in RECIPES}
    for network in ('enet', 'erfnet', 'dsnet'):
        assert {f'{network}_camvid', f'{network}_cityscapes'} <= names
    assert {'segfast_camvid', 'segfast_basic_camvid', 'enet_bdd100k'} <= names


# -- training -------------------------------------------------------------------------------------------


def test_tiny_network_learns_the_shapes(tmp_path, shapes_root, one_thread):
    """Learning is proven: from chance to a high validation mIoU in seconds, on data it never saw."""
    started = time.perf_counter()
    trainer = Trainer(tiny_recipe(tmp_path, shapes_root))
    untrained = evaluate(trainer.net, trainer._build_stage(trainer.stages[0]).val_loader, num_classes=4,
                         device=torch.device('cpu')).miou()
    last = trainer.fit()
    elapsed = time.perf_counter() - started
    run = last.parent
    records = read_epoch_records(run / 'log.jsonl')
    assert [r['epoch'] for r in records] == list(range(10))
    assert untrained < 0.4 and trainer.best_miou > 90, (untrained, [r['val']['miou'] for r in records])
    assert records[-1]['train_loss'] < 0.5 * records[0]['train_loss']
    assert elapsed < 60

    best = load_checkpoint(run / 'best.pt')
    assert best.training is None and best.meta['metrics']['miou'] == pytest.approx(trainer.best_miou)
    assert best.labels.names == SHAPE_CLASSES and best.input_size == (48, 64)
    assert set(best.meta['metrics']['per_class_iou']) == set(SHAPE_CLASSES)
    assert {'git_commit', 'host', 'torch', 'time'} <= set(best.meta['provenance'])
    assert best.meta['recipe']['model']['name'] == TINY_NET
    final = load_checkpoint(last)
    assert final.training['epoch'] == 10 and final.training['global_step'] == 10 * 12
    for name in ('curves.png', 'per_class_iou.png', 'recipe.yaml'):
        assert (run / name).stat().st_size > 0
    assert (run / 'curves.png').read_bytes()[:4] == b'\x89PNG'

    # One evaluation path: seg-eval on best.pt gives the mIoU the trainer recorded.
    report_path = tmp_path / 'eval.json'
    assert eval_main([str(run / 'best.pt'), '--dataset', 'folder', '--data-root', str(shapes_root),
                      '--split', 'val', '--json', str(report_path), '--num-workers', '0']) == 0
    assert json.loads(report_path.read_text())['miou'] == pytest.approx(trainer.best_miou)


@pytest.mark.parametrize('cache', ['true', 'false'], ids=['in_memory', 'streamed'])
def test_resume_after_sigkill_ends_with_the_same_weights(tmp_path, few_shapes_root, one_thread, caplog, cache):
    """A run killed with SIGKILL and resumed ends bit-identical to one never interrupted, whether the
    split is decoded into memory (augmented in this process) or streamed from disk."""
    recipe = tiny_recipe_file(tmp_path, few_shapes_root)
    epochs = 'train.epochs=6'
    Trainer(load_recipe(recipe, [f'output.dir={tmp_path / "whole"}', epochs, f'data.cache={cache}'])).fit()

    killed = tmp_path / 'killed'
    process = subprocess.Popen(train_command(recipe, killed, epochs, f'data.cache={cache}'), env=subprocess_env(),
                               cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while process.poll() is None:
        if (killed / 'last.pt').exists():  # the first epoch's checkpoint, written after its log record
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    process.wait()
    assert process.returncode == -signal.SIGKILL, 'the run ended before it could be killed'
    interrupted_at = load_checkpoint(killed / 'last.pt').training['epoch']
    assert 1 <= interrupted_at < 6

    with caplog.at_level(logging.INFO, logger='seg_ros.training.trainer'):
        Trainer(load_recipe(recipe, [f'output.dir={killed}', epochs, f'data.cache={cache}']), resume=True).fit()
    assert f'{interrupted_at} epoch(s) done' in caplog.text
    whole, again = load_checkpoint(tmp_path / 'whole' / 'last.pt'), load_checkpoint(killed / 'last.pt')
    assert whole.state_dict.keys() == again.state_dict.keys()
    for key, value in whole.state_dict.items():
        assert torch.equal(value, again.state_dict[key]), key
    assert again.training['global_step'] == whole.training['global_step'] == 6 * 4
    assert [r['epoch'] for r in read_epoch_records(killed / 'log.jsonl')] == list(range(6))


def test_auto_precision_times_the_candidates_and_a_resume_keeps_the_choice(tmp_path, few_shapes_root, one_thread,
                                                                         caplog):
    overrides = ['train.deterministic=false', 'train.precision=auto', 'train.channels_last=auto']
    with caplog.at_level(logging.INFO, logger='seg_ros.training.trainer'):
        trainer = Trainer(tiny_recipe(tmp_path, few_shapes_root, 'train.epochs=1', *overrides))
        trainer.fit()
    start = next(json.loads(line) for line in (tmp_path / 'run' / 'log.jsonl').read_text().splitlines()
                 if '"start"' in line)
    chosen = start['step_settings']
    measured = chosen['seconds_per_step']
    # fp32 and, where this CPU has native bf16, bf16; each in both memory layouts
    assert set(measured) == {str(s) for s in candidate_settings(torch.device('cpu'))}
    assert len(measured) in (2, 4)
    assert all(seconds > 0 for seconds in measured.values())
    fastest = min(measured, key=measured.get)
    assert fastest == str(trainer.step_choice.settings)
    assert f'training step: {fastest}' in caplog.text
    assert load_checkpoint(tmp_path / 'run' / 'last.pt').training['step_settings'] == {
        'precision': chosen['precision'], 'channels_last': chosen['channels_last']}

    caplog.clear()
    with caplog.at_level(logging.INFO, logger='seg_ros.training.trainer'):
        resumed = Trainer(tiny_recipe(tmp_path, few_shapes_root, 'train.epochs=2', *overrides), resume=True)
    assert resumed.step_choice.settings == trainer.step_choice.settings
    assert 'chosen when the run started' in caplog.text and resumed.step_choice.timings == {}


def test_compile_auto_is_off_without_a_trial_for_a_run_too_short_to_repay_it(tmp_path, few_shapes_root, one_thread,
                                                                            caplog):
    with caplog.at_level(logging.INFO, logger='seg_ros.training.trainer'):
        trainer = Trainer(tiny_recipe(tmp_path, few_shapes_root, 'train.epochs=1', 'train.deterministic=false'))
    assert trainer.compile is False
    assert 'torch.compile: off (eager run ~0 min: too short to repay a compile)' in caplog.text
    trainer.fit()
    assert load_checkpoint(tmp_path / 'run' / 'last.pt').training['compile'] is False


def test_deterministic_runs_resolve_auto_to_fp32_without_timing(tmp_path, few_shapes_root, one_thread):
    trainer = Trainer(tiny_recipe(tmp_path, few_shapes_root, 'train.epochs=1', 'train.precision=auto'))
    assert str(trainer.step_choice.settings) == 'fp32' and trainer.step_choice.timings == {}


def test_training_split_in_memory_or_streamed_as_asked(tmp_path, few_shapes_root, one_thread):
    cached = Trainer(tiny_recipe(tmp_path / 'a', few_shapes_root, 'train.epochs=1', 'data.cache=auto',
                                 'data.num_workers=auto'))
    summary = cached.check()[0]
    assert 'in memory on cpu, augmented per frame (OpenCV)' in summary
    on_batches = Trainer(tiny_recipe(tmp_path / 'b', few_shapes_root, 'train.epochs=1', 'data.batch_augment=true'))
    assert 'augmented per batch (tensors)' in on_batches.check()[0]
    on_batches.fit()
    assert (tmp_path / 'b' / 'run' / 'last.pt').is_file()
    streamed = Trainer(tiny_recipe(tmp_path / 'c', few_shapes_root, 'train.epochs=1', 'data.cache=false',
                                   'data.num_workers=auto'))
    workers = min(4, max(0, (os.cpu_count() or 1) - 1))
    assert f'streamed by {workers or "no"} worker process(es)' in streamed.check()[0]


def test_step_records_come_about_ten_times_per_epoch_by_default(tmp_path, shapes_root, one_thread):
    Trainer(tiny_recipe(tmp_path, shapes_root, 'train.epochs=1', 'train.log_every=auto')).fit()
    steps = [json.loads(line) for line in (tmp_path / 'run' / 'log.jsonl').read_text().splitlines()
             if '"step"' in line and '"event": "step"' in line]
    assert [r['step'] for r in steps] == list(range(1, 13))  # 24 images, batches of 2: every step of 12


def test_data_problems_are_reported_before_training(tmp_path):
    root = write_shapes(tmp_path / 'data', train=6, val=2)
    (root / 'images' / 'train' / '001.png').write_bytes(b'not a png')
    cv2.imwrite(str(root / 'labels' / 'train' / '002.png'), np.zeros((10, 10), np.uint8))
    (root / 'labels' / 'val' / '000.png').unlink()
    with pytest.raises(TrainingError) as error:
        Trainer(tiny_recipe(tmp_path, root))
    message = str(error.value)
    assert '3 problem(s)' in message and 'nothing was trained' in message
    for name in ('images/train/001.png', 'labels/train/002.png', 'labels/val/000.png'):
        assert name in message
    assert not (tmp_path / 'run').exists()


def test_existing_run_needs_resume_and_resume_needs_training_state(tmp_path, few_shapes_root, one_thread):
    Trainer(tiny_recipe(tmp_path, few_shapes_root, 'train.epochs=1')).fit()
    with pytest.raises(TrainingError, match='--resume'):
        Trainer(tiny_recipe(tmp_path, few_shapes_root, 'train.epochs=1'))
    with pytest.raises(TrainingError, match='no training state'):
        Trainer(tiny_recipe(tmp_path, few_shapes_root), resume=tmp_path / 'run' / 'best.pt')


def test_resuming_with_more_epochs_says_how_to_go_on(tmp_path, few_shapes_root, one_thread):
    Trainer(tiny_recipe(tmp_path, few_shapes_root, 'train.epochs=1')).fit()
    trainer = Trainer(tiny_recipe(tmp_path, few_shapes_root, 'train.epochs=3'), resume=True)
    with pytest.raises(TrainingError, match=r"cannot resume stage 'main' .*model.init=.*last.pt"):
        trainer.fit()


def test_model_init_starts_a_new_run_from_a_checkpoints_weights(tmp_path, few_shapes_root, one_thread):
    Trainer(tiny_recipe(tmp_path / 'first', few_shapes_root, 'train.epochs=1')).fit()
    source = load_checkpoint(tmp_path / 'first' / 'run' / 'best.pt')
    trainer = Trainer(tiny_recipe(tmp_path / 'second', few_shapes_root, 'train.epochs=1',
                                  f'model.init={tmp_path / "first" / "run" / "best.pt"}'))
    for key, tensor in trainer.net.state_dict().items():
        assert torch.equal(tensor, source.state_dict[key]), key
    trainer.fit()  # a new run: its own epochs and schedule, not a resume
    assert [r['global_epoch'] for r in read_epoch_records(tmp_path / 'second' / 'run' / 'log.jsonl')] == [0]


def test_model_init_with_other_classes_keeps_only_the_class_independent_weights(tmp_path, few_shapes_root,
                                                                               one_thread):
    Trainer(tiny_recipe(tmp_path / 'first', few_shapes_root, 'train.epochs=1')).fit()
    source = load_checkpoint(tmp_path / 'first' / 'run' / 'best.pt')
    renamed = tmp_path / 'renamed'
    shutil.copytree(few_shapes_root, renamed)
    classes = json.loads((renamed / 'classes.yaml').read_text())
    for entry, name in zip(classes['classes'], ('ground', 'crate', 'ball', 'pole'), strict=True):
        entry['name'] = name
    (renamed / 'classes.yaml').write_text(json.dumps({**classes, 'name': 'my_labels'}))
    trainer = Trainer(tiny_recipe(tmp_path / 'second', renamed,
                                  f'model.init={tmp_path / "first" / "run" / "best.pt"}'))
    state = trainer.net.state_dict()
    classifier = {'body.7.weight', 'body.7.bias'}  # the 1x1 convolution to the classes
    for key in state:
        assert torch.equal(state[key], source.state_dict[key]) == (key not in classifier), key


@pytest.mark.parametrize(('init', 'message'), [
    ('enet', 'it holds a test_training_tiny_fcn, the recipe trains a enet'),
    ('garbage', 'model.init: .*garbage.pt'),
])
def test_model_init_problems_name_the_file(tmp_path, few_shapes_root, one_thread, init, message):
    if init == 'enet':
        Trainer(tiny_recipe(tmp_path / 'first', few_shapes_root, 'train.epochs=1')).fit()
        recipe = tiny_recipe(tmp_path, few_shapes_root, f'model.init={tmp_path / "first" / "run" / "best.pt"}',
                             net='enet')
    else:
        (tmp_path / 'garbage.pt').write_bytes(b'not a checkpoint')
        recipe = tiny_recipe(tmp_path, few_shapes_root, f'model.init={tmp_path / "garbage.pt"}')
    with pytest.raises(TrainingError, match=message):
        Trainer(recipe)
    with pytest.raises(RecipeError, match='model.init'):
        tiny_recipe(tmp_path, few_shapes_root, 'model.init=5')


def test_mixup_bf16_channels_last_and_a_class_weighted_loss(tmp_path, few_shapes_root, one_thread):
    trainer = Trainer(tiny_recipe(tmp_path, few_shapes_root, 'train.epochs=2', 'augment.mixup_alpha=0.4',
                                  'train.precision=bf16', 'train.channels_last=true',
                                  'loss={name: balanced_ce, c: 1.02}'))
    trainer.fit()
    records = read_epoch_records(tmp_path / 'run' / 'log.jsonl')
    assert all(np.isfinite(r['train_loss']) for r in records)
    cache = json.loads((tmp_path / 'run' / 'class_frequencies_folder_train.json').read_text())
    assert cache['classes'] == list(SHAPE_CLASSES) and cache['frequencies'][0] > 0.5


def test_progressive_stages_and_erfnet_encoder_first(tmp_path, few_shapes_root, one_thread):
    """Stages change crop, batch and lr; ERFNet's encoder stage learns on labels at 1/8 resolution."""
    recipe = tiny_recipe(tmp_path, few_shapes_root, 'train.epochs=null', 'model.name=erfnet',
                         'optimizer={name: adam, lr: 0.005}', 'scheduler={name: constant}',
                         'stages=[{name: encoder, epochs: 1, encoder_only: true, crop_size: [32, 32],'
                         ' batch_size: 4}, {name: full, epochs: 1, crop_size: [48, 64], batch_size: 2,'
                         ' lr: 0.001}]')
    trainer = Trainer(recipe)
    trainer.fit()
    records = read_epoch_records(tmp_path / 'run' / 'log.jsonl')
    assert [(r['stage_name'], r['lr']) for r in records] == [('encoder', 0.005), ('full', 0.001)]
    assert records[0]['val'] is not None and records[0]['best_miou'] is None  # encoder-only is never best
    last = load_checkpoint(tmp_path / 'run' / 'last.pt')
    assert last.training['global_step'] == 8 // 4 + 8 // 2
    assert load_checkpoint(tmp_path / 'run' / 'best.pt').meta['stage'] == 'full'


def test_compiled_run_recompiles_when_a_stage_changes_the_crop(tmp_path, few_shapes_root, one_thread):
    """A later stage's new crop gets its own compiled graph. Left to guess dynamic shapes, inductor
    failed on the max-unpool index arithmetic (DSNet's full-resolution stage died at its first step)."""
    recipe = tiny_recipe(tmp_path, few_shapes_root, 'train.epochs=null', 'train.compile=true',
                         'train.deterministic=false', 'scheduler={name: constant}',
                         'stages=[{name: small, epochs: 1, crop_size: 64x48, batch_size: 4},'
                         ' {name: large, epochs: 1, crop_size: 80x64, batch_size: 2}]', net=TINY_UNPOOL_NET)
    trainer = Trainer(recipe)
    assert trainer.compile is True
    trainer.fit()
    records = read_epoch_records(tmp_path / 'run' / 'log.jsonl')
    assert [r['stage_name'] for r in records] == ['small', 'large']
    assert all(math.isfinite(r['train_loss']) for r in records)
    assert load_checkpoint(tmp_path / 'run' / 'last.pt').training['global_step'] == 8 // 4 + 8 // 2


def test_coarse_pretraining_stage_then_fine_stage_on_cityscapes(tmp_path, one_thread, caplog):
    """DSNet's schedule in small: a stage on train_extra/gtCoarse, then one on train/gtFine."""
    size, frames = (32, 48), {}
    for name, count, top, bottom in (('coarse', 4, 23, 7), ('fine', 2, 26, 24), ('val', 1, 26, 24)):
        label_ids = np.zeros(size, np.uint8)  # label id 0 (unlabeled): ignored
        label_ids[2:14], label_ids[16:30] = top, bottom
        frames[name] = {f'city_000000_{i:06d}': label_ids for i in range(count)}
    root = tmp_path / 'cityscapes'
    make_cityscapes(root, 'train_extra', frames['coarse'], annotations='gtCoarse')
    make_cityscapes(root, 'train', frames['fine'])
    make_cityscapes(root, 'val', frames['val'])
    recipe = tiny_recipe(tmp_path, root, 'data.dataset=cityscapes', 'train.epochs=null',
                         'augment.crop_size=[32, 48]', 'augment.scale_range=[1.0, 1.0]', 'augment.hflip=false',
                         'loss={name: balanced_ce, c: 1.02}', 'optimizer={name: adam, lr: 0.01}',
                         'scheduler={name: constant}',
                         'stages=[{name: coarse, epochs: 2, data: {train_split: train_extra, val_split: null,'
                         ' options: {annotations: coarse}}, scheduler: {name: step, step_epochs: 1, gamma: 0.5}},'
                         ' {name: fine, epochs: 1}]')
    with caplog.at_level(logging.INFO, logger='seg_ros.training.trainer'):
        Trainer(recipe).fit()
    assert "stage 1 'coarse': 2 epochs x 2 batches of 2 (4 images)" in caplog.text
    assert "stage 2 'fine': 1 epochs x 1 batches of 2 (2 images)" in caplog.text
    run = tmp_path / 'run'
    records = read_epoch_records(run / 'log.jsonl')
    assert [(r['stage_name'], r['steps'], r['lr']) for r in records] == [
        ('coarse', 2, 0.01), ('coarse', 2, 0.005), ('fine', 1, 0.01)]
    assert records[1]['val'] is None and records[2]['val'] is not None
    # Each stage weighted its loss by its own labels: coarse road / sky, fine person / car.
    train_ids = {0: 255, 7: 0, 23: 10, 24: 11, 26: 13}
    for split, stage in (('train_extra', 'coarse'), ('train', 'fine')):
        cache = json.loads((run / f'class_frequencies_cityscapes_{split}.json').read_text())
        stored = np.stack(list(frames[stage].values()))
        expected = np.bincount(np.vectorize(train_ids.get)(stored).ravel(), minlength=256)[:19]
        assert cache['split'] == split and cache['pixel_counts'] == expected.tolist()
    assert load_checkpoint(run / 'best.pt').meta['stage'] == 'fine'


def test_dsnet_recipe_trains_with_owfl_and_the_semantic_encoding_loss(tmp_path, few_shapes_root, one_thread):
    """The bundled DSNet recipe, on other data: OWFL + SEL through the training-only context head."""
    overrides = [f'data.root={few_shapes_root}', 'data.dataset=folder', 'data.num_workers=0',
                 'augment.crop_size=[48, 64]', 'train.epochs=1', 'train.batch_size=4', 'train.device=cpu',
                 f'output.dir={tmp_path / "run"}']
    Trainer(load_recipe('dsnet_camvid', overrides)).fit()
    (record,) = read_epoch_records(tmp_path / 'run' / 'log.jsonl')
    assert np.isfinite(record['train_loss']) and record['val'] is not None
    best = load_checkpoint(tmp_path / 'run' / 'best.pt')
    assert best.model_options == {'context_head': True}
    with torch.no_grad():
        assert best.build_model()(torch.zeros(1, 3, 48, 64)).shape == (1, 4, 48, 64)
    with pytest.raises(RecipeError, match='context head'):
        Trainer(load_recipe('dsnet_camvid', [*overrides[:-1], f'output.dir={tmp_path / "x"}',
                                             'model.options={}'])).check()


def test_a_stage_asking_for_a_path_the_network_lacks_fails_before_training(tmp_path, few_shapes_root):
    recipe = tiny_recipe(tmp_path, few_shapes_root, 'train.epochs=null',
                         'stages=[{name: full, epochs: 1}, {name: enc, epochs: 1, encoder_only: true}]')
    with pytest.raises(RecipeError, match="stage 'enc'.*encoder_only"):
        Trainer(recipe).fit()
    assert not (tmp_path / 'run' / 'last.pt').exists()


def test_camvid_frames_lower_the_loss(tmp_path, camvid_root, one_thread):
    """A few iterations of ENet on eight real CamVid frames lower the training loss."""
    lines = (camvid_root / 'train.txt').read_text().split('\n')[:8]
    root = tmp_path / 'camvid8'
    root.mkdir()
    absolute = [' '.join(str(camvid_root / f) for f in line.split()) for line in lines]
    (root / 'train.txt').write_text('\n'.join(absolute) + '\n')
    recipe = load_recipe('enet_camvid', [
        f'data.root={root}', 'data.val_split=null', 'data.num_workers=0', f'output.dir={tmp_path / "run"}',
        'augment.crop_size=[120, 160]', 'augment.scale_range=[0.3333, 0.3333]', 'train.batch_size=4',
        'train.epochs=5', 'optimizer={name: adam, lr: 0.005}', 'scheduler={name: constant}',
        'train.device=cpu', 'train.log_every=1'])
    Trainer(recipe).fit()
    losses = [r['train_loss'] for r in read_epoch_records(tmp_path / 'run' / 'log.jsonl')]
    assert len(losses) == 5 and losses[-1] < 0.9 * losses[0], losses


def test_cli_prints_recipe_checks_and_reports_errors(tmp_path, few_shapes_root, capsys):
    recipe = tiny_recipe_file(tmp_path, few_shapes_root)
    assert train_main([str(recipe), 'train.epochs=2', '--print-recipe']) == 0
    assert 'epochs: 2' in capsys.readouterr().out
    assert train_main([str(recipe), f'output.dir={tmp_path / "run"}', '--check']) == 0
    out = capsys.readouterr().out
    assert "stage 1 'main': 10 epochs x 4 batches of 2 (8 images)" in out and 'check passed' in out
    assert not (tmp_path / 'run').exists()
    assert train_main([str(recipe), 'train.batchsize=2']) == 2
    assert "unknown key 'train.batchsize' (did you mean 'batch_size'?)" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tmp_path, few_shapes_root):
    """DistributedDataParallel over gloo: one process writes, both agree on the weights."""
    recipe = tiny_recipe_file(tmp_path, few_shapes_root)
    script = tmp_path / 'train.py'
    script.write_text('import sys\nimport test.support.training\nfrom seg_ros.training.cli import train_main\n'
                      'sys.exit(train_main())\n')
    torchrun = Path(sys.executable).with_name('torchrun')
    result = subprocess.run(
        [str(torchrun), '--nproc-per-node', '2', '--master-port', str(29500 + os.getpid() % 1000),
         str(script), str(recipe), f'output.dir={tmp_path / "run"}', 'train.epochs=2'],
        env=subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    last = load_checkpoint(tmp_path / 'run' / 'last.pt')
    assert len(last.training['rng']) == 2 and last.training['world_size'] == 2
    assert last.training['global_step'] == 2 * 8 // (2 * 2)
    start = json.loads((tmp_path / 'run' / 'log.jsonl').read_text().splitlines()[0])
    assert start['processes'] == 2
