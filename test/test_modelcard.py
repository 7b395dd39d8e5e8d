"""Model cards: numbers that match seg-eval, the recipe check, wall time from the log, the models index."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from seg_ros.models import build_model, count_parameters
from seg_ros.training.cli import card_main as main
from seg_ros.training.cli import eval_main
from seg_ros.training.modelcard import read_card_header, training_wall_time, write_index
from seg_ros.training.trainer import Trainer
from test.support.datasets import write_shapes
from test.support.training import TINY_NET, tiny_recipe, tiny_recipe_file


@pytest.fixture(scope='module')
def trained(tmp_path_factory) -> tuple[Path, Path, str]:
    """(data root, best.pt, the seg-train command that made it) of two epochs of the tiny network."""
    folder = tmp_path_factory.mktemp('card_run')
    root = write_shapes(folder / 'shapes', train=8, val=4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer(tiny_recipe(folder, root, 'train.epochs=2')).fit()
    finally:
        torch.set_num_threads(threads)
    command = f'seg-train {tiny_recipe_file(folder, root)} output.dir={folder / "run"} train.epochs=2'
    return root, folder / 'run' / 'best.pt', command


def card_main(checkpoint: Path, command: str, out: Path, *extra: str) -> int:
    return main([str(checkpoint), '--recipe-command', command, '--hardware', '2 shared CPU cores',
                 '--out', str(out), '--frames', '5', '--num-workers', '0', *extra])


def test_card_scores_like_seg_eval_and_checks_the_recipe(tmp_path, trained):
    root, best, command = trained
    models = tmp_path / 'models'
    assert card_main(best, command, models) == 0
    card = models / f'{TINY_NET}_folder.md'
    header = read_card_header(card)

    report_path = tmp_path / 'eval.json'
    assert eval_main([str(best), '--dataset', 'folder', '--data-root', str(root), '--json', str(report_path),
                      '--num-workers', '0']) == 0
    assert header['val_miou'] == pytest.approx(json.loads(report_path.read_text())['miou'], abs=0.005)
    assert header['parameters'] == count_parameters(build_model(TINY_NET, 4))
    assert header['input_size'] == [48, 64] and header['fps'] > 0
    assert header['sha256'] == hashlib.sha256(best.read_bytes()).hexdigest()
    assert header['training_wall_time_s'] is not None
    threads = re.match(r'cpu, (\d+) thread(s?), ', header['fps_on'])
    assert threads and (threads[1] == '1') == (threads[2] == '')  # '1 thread', '2 threads'
    text = card.read_text()
    assert 'The command gives exactly the recipe the checkpoint holds.' in text
    assert 'saved after epoch 2 of 2' in text and '2 shared CPU cores' in text
    assert f'{header["val_miou"]:.2f}' in text  # seg-eval's table in the card

    # the card names the file it describes; the index shows it once that file is beside it
    assert 'without its checkpoint' in (models / 'README.md').read_text()
    shutil.copy(best, models / f'{TINY_NET}_folder.pt')
    index = write_index(models).read_text()
    assert f'| `{TINY_NET}_folder.pt` | [{TINY_NET}]({TINY_NET}_folder.md) |' in index
    assert f'{header["val_miou"]:.1f} (val)' in index
    assert 'is `enet_camvid.pt`, which is not here' in index  # the node's default (config/segment.yaml)


def test_a_command_that_differs_from_the_checkpoint_is_named(tmp_path, trained):
    _, best, command = trained
    assert card_main(best, command.replace('train.epochs=2', 'train.epochs=3'), tmp_path) == 0
    assert 'differs from the recipe the checkpoint holds in: train.epochs' in \
        (tmp_path / f'{TINY_NET}_folder.md').read_text()


def test_bad_inputs_are_errors_naming_them(tmp_path, trained, capsys):
    _, best, command = trained
    assert card_main(best, 'python train.py', tmp_path) == 2
    assert 'needs the seg-train command line' in capsys.readouterr().err
    (tmp_path / 'broken.pt').write_bytes(b'not a checkpoint')
    assert card_main(tmp_path / 'broken.pt', command, tmp_path) == 2
    assert 'broken.pt' in capsys.readouterr().err
    assert card_main(best, command, tmp_path, '--data-root', str(tmp_path / 'nowhere')) == 2
    assert 'nowhere' in capsys.readouterr().err
    assert not list(tmp_path.glob('*.md'))


def test_wall_time_counts_each_session_up_to_its_last_epoch(tmp_path):
    records = [('start', 100.0), ('step', 104.0), ('epoch', 110.0), ('epoch', 125.0),  # killed mid-epoch
               ('start', 500.0), ('epoch', 530.0), ('end', 531.0)]
    log = tmp_path / 'log.jsonl'
    log.write_text(''.join(json.dumps({'time': t, 'event': e}) + '\n' for e, t in records) + '{"time": 5')
    assert training_wall_time(log) == pytest.approx(25.0 + 30.0)
    log.write_text(json.dumps({'time': 1.0, 'event': 'start'}) + '\n')
    assert training_wall_time(log) is None


def _card(models: Path, name: str, content: bytes, **numbers) -> None:
    (models / f'{name}.pt').write_bytes(content)
    header = {'model': name.split('_')[0], 'dataset': 'camvid', 'checkpoint': f'{name}.pt',
              'sha256': hashlib.sha256(content).hexdigest(), 'input_size': [360, 480], 'val_split': 'val',
              'fps_on': 'cpu, 2 threads, some CPU', **numbers}
    (models / f'{name}.md').write_text('---\n' + json.dumps(header) + '\n---\n\n# card\n')


def test_index_says_why_the_default_is_the_default(tmp_path):
    _card(tmp_path, 'enet_camvid', b'enet', parameters=360_000, val_miou=50.0, fps=40.0)
    _card(tmp_path, 'segfast_camvid', b'segfast', parameters=1_600_000, val_miou=55.0, fps=20.0)
    (tmp_path / 'erfnet_camvid.pt').write_bytes(b'erfnet, no card')
    _card(tmp_path, 'dsnet_camvid', b'dsnet', parameters=900_000, val_miou=60.0, fps=30.0)
    (tmp_path / 'dsnet_camvid.pt').write_bytes(b'dsnet, retrained since its card')
    index = write_index(tmp_path).read_text()
    assert '| `enet_camvid.pt` | [enet](enet_camvid.md) | camvid | 480x360 | 360,000 | 50.0 (val) |' in index
    assert '| `erfnet_camvid.pt` | no card' in index
    assert '| `dsnet_camvid.pt` | [card](dsnet_camvid.md) is for another file' in index
    assert ('loads `enet_camvid.pt` by default (`model: enet` in config/segment.yaml): of the checkpoints '
            'here it has the most mIoU per millisecond of frame time and the most frames/s and the fewest '
            'parameters.') in index
    assert '| 40.0 (cpu, 2 threads, some CPU) | 2.00 |' in index  # 50 % x 40 frames/s / 1000
