"""Files from elsewhere: checkpoints with pickled code, YAML with Python tags, bags with a damaged chunk.

- No loader in seg_ros/ or launch/ can run code: every ``torch.load`` is weights-only, every
  YAML load uses a safe loader, nothing unpickles (a static scan, so that a regression fails).
- A checkpoint carrying a pickled payload is refused by every way in: ``load_checkpoint``,
  ``Segmenter``, the node, ``seg-eval``, ``seg-train --resume``, ``seg-bag`` and ``seg-export``;
  the payload never runs.
- A recipe, a dataset's classes.yaml or a bag's metadata.yaml with a Python tag is an error or is
  ignored; the tag never runs.
- A bag with a damaged chunk (a checksum mismatch, or a garbled record) is evaluated up to the
  damage, which the report names; the run does not fail.
"""

from __future__ import annotations

import ast
import json
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from rclpy.parameter import Parameter

from seg_ros.bag.cli import main as bag_main
from seg_ros.bag.messages import IMAGE, header_message, image_message, serialize
from seg_ros.bag.writer import OutputBag
from seg_ros.checkpoint import CheckpointError, load_checkpoint
from seg_ros.data import DatasetError, build_dataset
from seg_ros.inference.cli import main as export_main
from seg_ros.inference.segmenter import Segmenter
from seg_ros.ros.node import SegmentNode, StartupError
from seg_ros.training.cli import eval_main, train_main
from seg_ros.training.config import RecipeError, load_recipe

from ..support import CHANNEL_NET, channel_checkpoint
from ..support.datasets import write_shapes
from ..support.ros import Ros
from ..support.training import tiny_recipe_file
from .harness import REPO

SOURCES = sorted([*(REPO / 'seg_ros').rglob('*.py'), *(REPO / 'launch').glob('*.py')])
SAFE_YAML_LOADERS = {'SafeLoader', 'CSafeLoader', 'BaseLoader', 'CBaseLoader'}
NEVER = {'yaml.unsafe_load', 'yaml.unsafe_load_all', 'yaml.full_load', 'yaml.full_load_all', 'pickle.load',
         'pickle.loads', 'pickle.Unpickler', 'marshal.load', 'marshal.loads', 'shelve.open', 'dill.load',
         'dill.loads', 'joblib.load'}


# -- no loader that can run code ----------------------------------------------------------------------


def _dotted(node: ast.AST | None) -> str:
    """``torch.load`` for the expression ``torch.load``; '' for anything but names and attributes."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        parent = _dotted(node.value)
        return f'{parent}.{node.attr}' if parent else ''
    return ''


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_loads(source: str, filename: str = '<source>') -> tuple[list[str], int]:
    """Loads in ``source`` that could run code (each as 'file:line: what'), and how many loads it has."""
    tree = ast.parse(source, filename)
    safe_loaders = SAFE_YAML_LOADERS | {  # classes of this module derived from a safe loader
        node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
        and any(_dotted(base).rpartition('.')[2] in SAFE_YAML_LOADERS for base in node.bases)}
    problems, loads = [], 0
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ('torch', 'yaml', 'pickle', 'marshal'):
            imported = {alias.name for alias in node.names} & {'load', 'loads', 'unsafe_load', 'full_load'}
            problems += [f'{filename}:{node.lineno}: from {node.module} import {name}' for name in imported]
        if not isinstance(node, ast.Call):
            continue
        name, where = _dotted(node.func), f'{filename}:{node.lineno}'
        keywords = {keyword.arg: keyword.value for keyword in node.keywords}
        if name in ('torch.load', 'torch.serialization.load'):
            loads += 1
            if not _is_true(keywords.get('weights_only')):
                problems.append(f'{where}: {name} without weights_only=True')
        elif name in ('yaml.load', 'yaml.load_all'):
            loads += 1
            loader = keywords.get('Loader', node.args[1] if len(node.args) > 1 else None)
            if _dotted(loader).rpartition('.')[2] not in safe_loaders:
                problems.append(f'{where}: {name} with Loader={_dotted(loader) or "?"}, not a SafeLoader')
        elif name in ('yaml.safe_load', 'yaml.safe_load_all'):
            loads += 1
        elif name in NEVER:
            problems.append(f'{where}: {name}')
        elif name in ('np.load', 'numpy.load') and _is_true(keywords.get('allow_pickle')):
            problems.append(f'{where}: {name} with allow_pickle=True')
    return problems, loads


def test_no_loader_in_the_package_can_run_code() -> None:
    problems, loads = [], 0
    for path in SOURCES:
        found, count = unsafe_loads(path.read_text(), str(path.relative_to(REPO)))
        problems += found
        loads += count
    assert not problems, '\n'.join(problems)
    assert loads >= 4  # checkpoint.py, the recipe, dataset and bag YAML, launch: the scan sees them


@pytest.mark.parametrize('source', [
    'import torch\ntorch.load(path)',
    'import torch\ntorch.load(path, weights_only=False)',
    'import yaml\nyaml.load(text)',
    'import yaml\nyaml.load(text, Loader=yaml.Loader)',
    'import yaml\nyaml.unsafe_load(text)',
    'import pickle\npickle.loads(data)',
    'from torch import load',
    'import numpy as np\nnp.load(path, allow_pickle=True)',
])
def test_the_scan_catches_unsafe_loads(source: str) -> None:
    assert unsafe_loads(source)[0]


def test_the_scan_accepts_safe_loads() -> None:
    source = ('import torch, yaml\nclass Recipe(yaml.SafeLoader): pass\ntorch.load(p, weights_only=True)\n'
              'yaml.load(t, Loader=Recipe)\nyaml.safe_load(t)\nyaml.load(t, Loader=yaml.CSafeLoader)\n')
    assert unsafe_loads(source) == ([], 4)


# -- a checkpoint with pickled code ---------------------------------------------------------------------


class Payload:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


@pytest.fixture(scope='module')
def evil(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A valid checkpoint of the test network whose meta carries a pickled payload, and its marker."""
    folder = tmp_path_factory.mktemp('evil')
    data = torch.load(channel_checkpoint(folder / 'good.pt'), weights_only=True)
    data['meta']['note'] = Payload(folder / 'payload_ran')
    torch.save(data, folder / 'evil.pt')
    return folder / 'evil.pt', folder / 'payload_ran'


def _small_bag(folder: Path) -> Path:
    bag = OutputBag(folder / 'bag', 'mcap')
    bag.write('/cam/image_raw', IMAGE, 1, serialize(image_message(np.zeros((8, 8, 3), np.uint8), 'rgb8',
                                                                  header_message(1, 'cam'))))
    bag.close()
    return folder / 'bag'


def _command_lines(folder: Path, checkpoint: Path) -> dict[str, Callable[[], int]]:
    shapes = write_shapes(folder / 'shapes', train=2, val=2)
    recipe = tiny_recipe_file(folder, shapes)
    return {
        'seg-eval': lambda: eval_main([str(checkpoint), '--dataset', 'folder', '--data-root', str(shapes),
                                       '--num-workers', '0']),
        'seg-train --resume': lambda: train_main([str(recipe), f'output.dir={folder / "run"}',
                                                  '--resume', str(checkpoint)]),
        'seg-bag': lambda: bag_main([str(_small_bag(folder)), '-c', str(checkpoint), '--out',
                                     str(folder / 'out'), '-q']),
        'seg-export': lambda: export_main(['--checkpoint', str(checkpoint), '--out', str(folder / 'onnx')]),
    }


def test_a_pickled_payload_is_refused_everywhere(evil: tuple[Path, Path], ros: Ros, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    checkpoint, marker = evil
    for load in (load_checkpoint, lambda path: Segmenter(path, device='cpu')):
        with pytest.raises(CheckpointError, match=r'evil\.pt: refused'):
            load(checkpoint)
    with pytest.raises(StartupError, match=r'evil\.pt: refused'):
        SegmentNode(context=ros.context, parameter_overrides=[
            Parameter('model', value=CHANNEL_NET), Parameter('weights', value=str(checkpoint))])
    for name, run in _command_lines(tmp_path, checkpoint).items():
        assert run() == 2, name
        assert 'evil.pt: refused' in capsys.readouterr().err, name
    assert not marker.exists(), 'the pickled payload ran'


# -- YAML with Python tags ----------------------------------------------------------------------------

def _python_tag(marker: Path) -> str:
    return f'!!python/object/apply:os.system ["touch {marker}"]'


def test_yaml_with_python_tags_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / 'tag_ran'
    recipe = tmp_path / 'recipe.yaml'
    recipe.write_text(f'model: {{name: enet}}\nnote: {_python_tag(marker)}\n')
    with pytest.raises(RecipeError, match=r'recipe\.yaml: not valid YAML'):
        load_recipe(recipe)
    with pytest.raises(RecipeError, match='not valid YAML'):
        load_recipe('enet_camvid', [f'train.seed={_python_tag(marker)}'])

    shapes = write_shapes(tmp_path / 'shapes', train=2, val=1)
    (shapes / 'classes.yaml').write_text(f'name: shapes\nclasses: {_python_tag(marker)}\n')
    with pytest.raises(DatasetError, match=r'classes\.yaml'):
        build_dataset('folder', shapes, 'train')

    bag = _small_bag(tmp_path)
    metadata = bag / 'metadata.yaml'
    metadata.write_text(metadata.read_text() + f'note: {_python_tag(marker)}\n')
    checkpoint = channel_checkpoint(tmp_path / 'channel.pt')
    assert bag_main([str(bag), '-c', str(checkpoint), '--out', str(tmp_path / 'out'), '-q', '--no-video',
                     '--no-bag']) == 0
    notes = json.loads((tmp_path / 'out' / 'report.json').read_text())['bag']['notes']
    assert any('metadata' in note or 'could not be opened as a whole' in note for note in notes), notes
    assert not marker.exists(), 'a YAML tag ran'


# -- a bag with a damaged chunk -----------------------------------------------------------------------

FRAMES, HEIGHT, WIDTH = 12, 240, 320  # 230 kB frames: five to a chunk (1 MiB and more), three chunks
START = 1_700_000_000 * 10**9
MCAP_RECORD = struct.Struct('<BQ')  # opcode, length
MCAP_CHUNK, MCAP_FOOTER = 0x06, 0x02


def mcap_chunks(data: bytes | bytearray) -> list[tuple[int, int]]:
    """(offset of the CRC field, offset of the records) of each Chunk record of an MCAP file.

    A Chunk is: start and end time (u64), uncompressed size (u64), uncompressed CRC (u32),
    compression (u32 length + string), records (u64 length + bytes).
    """
    chunks, position = [], 8  # after the magic
    while position + MCAP_RECORD.size <= len(data):
        opcode, length = MCAP_RECORD.unpack_from(data, position)
        body = position + MCAP_RECORD.size
        if opcode == MCAP_FOOTER:
            break
        if opcode == MCAP_CHUNK:
            compression_length = struct.unpack_from('<I', data, body + 28)[0]
            chunks.append((body + 24, body + 32 + compression_length + 8))
        position = body + length
    return chunks


def recorded_bag(folder: Path, checksums: bool) -> Path:
    """An MCAP bag of grey frames in uncompressed chunks; with ``checksums`` they carry them, as
    ``ros2 bag record`` writes them (rosbags leaves them 0, which means 'not computed')."""
    bag = OutputBag(folder, 'mcap', compress_chunks=False)
    for index in range(FRAMES):
        time = START + index * 100_000_000
        frame = np.full((HEIGHT, WIDTH, 3), 20 * index, np.uint8)
        bag.write('/cam/image_raw', IMAGE, time, serialize(image_message(frame, 'rgb8', header_message(time, 'cam'))))
    bag.close()
    storage = folder / f'{folder.name}.mcap'
    data = bytearray(storage.read_bytes())
    for crc_at, records_at in mcap_chunks(data) if checksums else ():
        length = struct.unpack_from('<Q', data, records_at - 8)[0]
        struct.pack_into('<I', data, crc_at, zlib.crc32(data[records_at:records_at + length]))
    storage.write_bytes(bytes(data))
    return folder


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return channel_checkpoint(tmp_path_factory.mktemp('bag') / 'channel.pt', input_size=(30, 40))


# Damage to the second chunk -> words of the reason reading stopped (None: the bag as written).
DAMAGE = {'intact': None, 'bytes flipped': 'Chunk checksum mismatch', 'garbled record, no checksums': 'Error'}


@pytest.mark.parametrize('damage', DAMAGE)
def test_a_bag_with_a_damaged_chunk_is_reported_not_fatal(tmp_path: Path, checkpoint: Path, damage: str) -> None:
    bag = recorded_bag(tmp_path / 'run', checksums='no checksums' not in damage)
    storage = bag / 'run.mcap'
    data = bytearray(storage.read_bytes())
    chunks = mcap_chunks(data)
    assert len(chunks) == 3
    records = chunks[1][1]
    if damage == 'bytes flipped':  # inside a message
        data[records + 5000:records + 5064] = bytes(b ^ 0xFF for b in data[records + 5000:records + 5064])
    elif damage == 'garbled record, no checksums':  # the first record's header
        data[records:records + 64] = b'\xa5' * 64
    storage.write_bytes(bytes(data))

    assert bag_main([str(bag), '-c', str(checkpoint), '--out', str(tmp_path / 'out'), '--no-video', '--no-bag',
                     '-q']) == 0
    report = json.loads((tmp_path / 'out' / 'report.json').read_text())
    frames, stopped = report['topics']['/cam/image_raw']['frames'], report['stopped']
    if DAMAGE[damage] is None:  # the checksums written above are right
        assert frames == FRAMES and stopped is None
        return
    assert 0 < frames < FRAMES and stopped['messages_read'] == frames, report
    assert DAMAGE[damage] in stopped['reason']
    assert '**Reading stopped early**' in (tmp_path / 'out' / 'report.md').read_text()
