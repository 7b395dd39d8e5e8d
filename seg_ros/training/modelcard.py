"""Model cards: what a trained checkpoint is, how it was trained, and how good and how fast it is here.

``seg-card CHECKPOINT --recipe-command "seg-train ..." --hardware "..." [--out models/]
[--data-root DIR] [--split val] [--frames 100] [--device cpu]`` (``write_card``) writes
``<out>/<network>_<dataset>.md``: the recipe file, its overrides and the resolved recipe (checked
against the one the checkpoint holds), the data, the training resolution, the epochs, the hardware
and wall time (from the checkpoint's metadata and the run's ``log.jsonl``), the per-class IoU and
mIoU on the validation split (``evaluate_checkpoint``: seg-eval's scoring through the ``Segmenter``
at the checkpoint's input size, scored at full label resolution), the parameters, and the frames/s
of the ``Segmenter`` on this machine. A YAML header holds the headline numbers, from which
``<out>/README.md`` is regenerated: one row per ``<out>/*.pt`` and which of them the node loads by
default.

``training_wall_time`` is shared with ``seg_ros.training.studies``.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from seg_ros.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from seg_ros.data import DatasetError, build_dataset
from seg_ros.inference.preparation import latencies_ms
from seg_ros.inference.segmenter import Segmenter
from seg_ros.models import count_parameters
from seg_ros.paths import DEFAULT_DATASET, share_dirs
from seg_ros.reporting import machine_info
from seg_ros.training.config import RecipeError, dump_recipe, find_recipe, load_recipe, resolve_stages
from seg_ros.training.evaluate import evaluate_checkpoint, format_report
from seg_ros.training.runlog import changed_keys, log_records, read_epoch_records
from seg_ros.vocabulary import format_size, percent_text

__all__ = ['measure_speed', 'training_wall_time', 'write_card', 'write_index']

FRONT_MATTER = '---\n'
SPEED_FRAMES = 8  # distinct validation frames the timed calls rotate through


def training_wall_time(log_path: str | os.PathLike) -> float | None:
    """Seconds of training and validation in a run's ``log.jsonl``; None without an epoch record.

    Summed per session (each ``start`` record begins one, so the time between a killed run and its
    resume is not counted) from the start to its last epoch record; the epoch a run was killed in
    is not counted, its redone copy is.
    """
    total, last, epochs = 0.0, None, 0
    for record in log_records(log_path):
        if record.get('event') == 'start':
            last = record['time']
        elif record.get('event') == 'epoch' and last is not None:
            total, last, epochs = total + record['time'] - last, record['time'], epochs + 1
    return total if epochs else None


def measure_speed(checkpoint: Checkpoint, frames: Sequence[np.ndarray], *, device: str,
                  iterations: int) -> dict[str, Any]:
    """Frames/s of ``Segmenter.segment`` (mask and class statistics) at the checkpoint's input size.

    Camera-size frames in, the mask at their size out, as the node runs by default; the frames
    rotate, warm-up calls come first, and the median latency gives the frames/s.
    """
    segmenter = Segmenter(checkpoint, device=device)
    inputs = [torch.from_numpy(np.ascontiguousarray(frame)) for frame in frames]
    times = latencies_ms(lambda x: segmenter.segment(x.numpy(), outputs=set()), inputs, iterations=iterations,
                         warmup=3)
    machine = machine_info(segmenter.device)
    median = float(np.median(times))
    return {'fps': 1000.0 / median, 'median_ms': median, 'p90_ms': float(np.percentile(times, 90)),
            'frames': iterations, 'frame_size': list(frames[0].shape[:2]), 'setup': segmenter.describe(),
            **{key: machine[key] for key in ('device', 'cpu', 'torch_threads', 'load_average_1_5_15',
                                             'torch')},
            **({'gpu': machine['gpu']} if 'gpu' in machine else {})}


def parse_recipe_command(command: str) -> tuple[str, list[str]]:
    """(recipe, overrides) of a ``seg-train RECIPE KEY=VALUE ...`` command line."""
    words = shlex.split(command)
    starts = [i for i, word in enumerate(words) if Path(word).name == 'seg-train']
    if not starts:
        raise ValueError(f'--recipe-command needs the seg-train command line that trained the checkpoint '
                         f'(e.g. "seg-train enet_camvid data.root=DIR"), got {command!r}')
    arguments = [word for word in words[starts[0] + 1:] if not word.startswith('-')]
    if not arguments:
        raise ValueError(f'--recipe-command {command!r} names no recipe after seg-train')
    return arguments[0], [word for word in arguments[1:] if '=' in word]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open('rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return 'unknown'
    minutes = round(seconds) // 60
    return f'{minutes // 60} h {minutes % 60:02d} min ({seconds:.0f} s)'


def _threads(count: int, kind: str = '') -> str:
    return f'{count} {kind}thread{"" if count == 1 else "s"}'


def _epochs(meta: dict[str, Any]) -> tuple[int, int, str]:
    """(epoch the checkpoint was saved after, epochs the recipe plans, stage name), counted over stages."""
    stages = resolve_stages(meta['recipe'])
    stage_index, done = meta['epochs']
    return sum(s.epochs for s in stages[:stage_index]) + done, sum(s.epochs for s in stages), meta['stage']


def _over_current_defaults(recipe: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's recipe loaded as a recipe file today: keys added since read as their defaults."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / 'recipe.yaml'
        path.write_text(dump_recipe(recipe))
        try:
            return load_recipe(path)
        except RecipeError:  # a key renamed or removed since: compare as it was written
            return recipe


def _shown_path(path: Path) -> Path:
    """``path`` relative to the source checkout when it lies inside it."""
    source = Path(__file__).resolve().parents[2]
    resolved = path.resolve()
    return resolved.relative_to(source) if resolved.is_relative_to(source) else path


def card_text(*, file_name: str, checkpoint: Checkpoint, checkpoint_path: Path, sha256: str, command: str,
              recipe_name: str, overrides: list[str], hardware: str, report: dict[str, Any],
              speed: dict[str, Any], label_size: Sequence[int], log_path: Path) -> str:
    """The card's markdown, with the YAML header ``write_index`` reads."""
    meta, recipe = checkpoint.meta, checkpoint.meta['recipe']
    data, provenance = recipe['data'], meta.get('provenance', {})
    epoch, planned, stage = _epochs(meta)
    has_log = log_path.is_file()
    wall_time = training_wall_time(log_path) if has_log else None
    logged_epochs = len(read_epoch_records(log_path)) if has_log else None
    changed = changed_keys(load_recipe(recipe_name, overrides), _over_current_defaults(recipe))
    parameters = count_parameters(checkpoint.build_model())
    height, width = checkpoint.input_size
    header = {
        'model': checkpoint.model_name, 'dataset': data['dataset'], 'checkpoint': file_name, 'sha256': sha256,
        'input_size': [height, width], 'parameters': parameters, 'val_split': report['split'],
        'val_miou': None if report['miou'] is None else round(report['miou'], 2),
        'fps': round(speed['fps'], 1),
        'fps_on': f'{speed["device"]}, {_threads(speed["torch_threads"])}, {speed.get("gpu", speed["cpu"])}',
        'training_wall_time_s': None if wall_time is None else round(wall_time), 'hardware': hardware,
    }
    lines = [
        FRONT_MATTER + yaml.safe_dump(header, sort_keys=False).strip(), FRONT_MATTER.strip(), '',
        f'# {checkpoint.model_name} on {data["dataset"]}: `{file_name}`', '',
        '| | |', '| --- | --- |',
        f'| network | `{checkpoint.model_name}`, options {checkpoint.model_options or "none"}, '
        f'{parameters:,} parameters |',
        f'| classes | {checkpoint.labels.name}: {", ".join(checkpoint.labels.names)} |',
        f'| data | `{data["dataset"]}` at `{data["root"]}`: trained on `{data["train_split"]}`, '
        f'validated on `{data["val_split"]}` |',
        f'| training resolution | crops of {format_size(meta["training_resolution"])} |',
        f'| input size | {format_size((height, width))} (what the node feeds the network unless told otherwise) |',
        f'| epochs | saved after epoch {epoch} of {planned} (stage `{stage}`); the log holds '
        f'{logged_epochs if has_log else "no record (no log.jsonl)"} epoch(s) |',
        f'| training wall time | {_duration(wall_time)}, from '
        f'{log_path.name if has_log else "no log.jsonl"} |',
        f'| hardware | {hardware}; host `{provenance.get("host")}`, torch {provenance.get("torch")}, '
        f'CUDA {provenance.get("cuda") or "none"} |',
        f'| source | seg_ros {provenance.get("seg_ros")}, commit `{provenance.get("git_commit")}`, saved '
        f'{meta.get("saved")} |',
        f'| file | `{checkpoint_path}`, sha256 `{sha256}` |',
        '', '## Recipe', '', '```bash', command, '```', '',
        f'Recipe file `{_shown_path(find_recipe(recipe_name))}` with overrides: '
        + (' '.join(f'`{o}`' for o in overrides) or 'none') + '.',
        'The command gives exactly the recipe the checkpoint holds.' if not changed else
        f'The command differs from the recipe the checkpoint holds in: {", ".join(changed)} '
        '(the checkpoint\'s is below).',
        '', '<details><summary>resolved recipe (from the checkpoint)</summary>', '', '```yaml',
        dump_recipe(recipe).strip(), '```', '', '</details>', '',
        f'## Accuracy on {data["dataset"]} {report["split"]}', '',
        f'`seg-eval` on {report["images"]} frames, network input {format_size((height, width))}, scored at the '
        f'labels\' full resolution ({format_size(label_size)}); IoU and accuracy in %.', '',
        '```', format_report(report), '```', '',
        '## Speed on this machine', '',
        f'`Segmenter.segment` (mask and class statistics), {speed["setup"]}: {format_size(speed["frame_size"])} '
        f'frames in, the mask at that size out. Median of {speed["frames"]} frames '
        f'after warm-up: **{speed["median_ms"]:.1f} ms, {speed["fps"]:.1f} frames/s** (p90 '
        f'{speed["p90_ms"]:.1f} ms) on {speed["device"]} ({speed.get("gpu", speed["cpu"])}, '
        f'{_threads(speed["torch_threads"], "torch ")}, torch {speed["torch"]}, load average '
        f'{speed["load_average_1_5_15"][0]} when measured).',
    ]
    return '\n'.join(lines) + '\n'


def read_card_header(path: Path) -> dict[str, Any] | None:
    """The YAML header of a card; None when the file has none."""
    text = path.read_text()
    if not text.startswith(FRONT_MATTER):
        return None
    header, _, _ = text[len(FRONT_MATTER):].partition('\n' + FRONT_MATTER)
    return yaml.safe_load(header)


def _node_default_model() -> str | None:
    """``model`` of segment_node in the first config/segment.yaml of the share folders."""
    for directory in share_dirs():
        path = directory / 'config' / 'segment.yaml'
        if path.is_file():
            # Keyed '/**' so that it applies under any namespace and node name.
            return yaml.safe_load(path.read_text())['/**']['ros__parameters']['model']
    return None


def _miou_per_ms(header: dict[str, Any]) -> float | None:
    if header.get('val_miou') is None or not header.get('fps'):
        return None
    return header['val_miou'] * header['fps'] / 1000.0


def _number(value: float | None) -> str:
    return '' if value is None else f'{value:.2f}'


def _why_default(name: str, cards: dict[str, dict[str, Any]]) -> str:
    """Which of the measured superlatives the default has among the carded checkpoints."""
    own = cards[name]
    facts = []
    for key, what, better in (('val_miou', 'the highest val mIoU', max),
                              ('miou_per_ms', 'the most mIoU per millisecond of frame time', max),
                              ('fps', 'the most frames/s', max), ('parameters', 'the fewest parameters', min)):
        # Speeds compare only where they were measured on the same machine and threads.
        peers = {n: c for n, c in cards.items() if key == 'val_miou' or key == 'parameters'
                 or c['fps_on'] == own['fps_on']}
        values = {n: c[key] for n, c in peers.items() if c.get(key) is not None}
        if len(values) > 1 and own.get(key) is not None and own[key] == better(values.values()):
            facts.append(what)
    if len(cards) == 1:
        return 'it is the only carded checkpoint here.'
    if not facts:
        return ('it has neither the highest mIoU, nor the most frames/s, nor the fewest parameters of the '
                'checkpoints here; set `model` in config/segment.yaml to choose another.')
    return f'of the checkpoints here it has {" and ".join(facts)}.'


def write_index(models_dir: Path) -> Path:
    """Regenerate ``models_dir/README.md``: every ``*.pt`` with its card's headline numbers."""
    rows, cards = [], {}
    for path in sorted(models_dir.glob('*.pt')):
        card_path = path.with_suffix('.md')
        header = read_card_header(card_path) if card_path.is_file() else None
        if header is None:
            rows.append(f'| `{path.name}` | no card: run `seg-card {path} ...` '
                        '| | | | | | |')
        elif header['sha256'] != _sha256(path):
            rows.append(f'| `{path.name}` | [card]({card_path.name}) is for another file (sha256 differs): '
                        'regenerate it | | | | | | |')
        else:
            cards[path.name] = header
            header['miou_per_ms'] = _miou_per_ms(header)
            rows.append(f'| `{path.name}` | [{header["model"]}]({card_path.name}) | {header["dataset"]} | '
                        f'{format_size(header["input_size"])} | {header["parameters"]:,} | '
                        f'{percent_text(header["val_miou"])} ({header["val_split"]}) | '
                        f'{header["fps"]} ({header["fps_on"]}) | {_number(header["miou_per_ms"])} |')
    for card_path in sorted(models_dir.glob('*.md')):
        header = read_card_header(card_path)
        if header is not None and not (models_dir / header['checkpoint']).is_file():
            rows.append(f'| `{header["checkpoint"]}` | [card]({card_path.name}) without its checkpoint: '
                        'copy the file it describes here | | | | | | |')
    model = _node_default_model()
    default = f'{model}_{DEFAULT_DATASET}.pt' if model else None
    lines = ['# Trained models', '',
             'Generated by `seg-card` from the card beside each checkpoint '
             '(`<name>.md`); regenerated with every card.', '',
             '| checkpoint | card | data | input | parameters | mIoU % | frames/s (measured on) | mIoU per ms |',
             '| --- | --- | --- | --- | --- | --- | --- | --- |', *rows, '',
             'mIoU per ms: mIoU divided by the milliseconds a frame takes (mIoU x frames/s / 1000), the '
             'accuracy a CPU buys per unit of its time; compare it, like frames/s, between rows measured on '
             'the same machine.', '']
    if default is None:
        lines.append('No config/segment.yaml found: the node\'s default model is unknown here.')
    elif default in cards:
        lines.append(f'The node loads `{default}` by default (`model: {model}` in config/segment.yaml): '
                     + _why_default(default, cards))
    else:
        lines.append(f'The node\'s default (`model: {model}` in config/segment.yaml) is `{default}`, '
                     'which is not here with a matching card: the node needs it, or its `weights` '
                     'parameter set.')
    index = models_dir / 'README.md'
    index.write_text('\n'.join(lines) + '\n')
    return index


def _validation_frames(dataset: str, root: str, split: str) -> tuple[list[np.ndarray], tuple[int, int]]:
    """A few frames of the split for timing, and the size of its first label."""
    data = build_dataset(dataset, root, split)
    count = min(SPEED_FRAMES, len(data))
    if count == 0:
        raise DatasetError(f'{data!r} has no frames to time the network on')
    samples = [data[index] for index in range(count)]
    return [image for image, _ in samples], tuple(samples[0][1].shape[:2])


def write_card(checkpoint_path: Path, *, recipe_command: str, hardware: str, out: Path,
               data_root: str | None = None, split: str | None = None, log_path: Path | None = None,
               frames: int = 100, device: str = 'cpu', num_workers: int = 2) -> Path:
    """Evaluate and time ``checkpoint_path``, write its card in ``out`` and regenerate the index."""
    recipe_name, overrides = parse_recipe_command(recipe_command)
    checkpoint = load_checkpoint(checkpoint_path)
    if 'recipe' not in checkpoint.meta:
        raise CheckpointError(f'{checkpoint_path}: no recipe in its metadata; a card describes a checkpoint '
                              'that seg-train wrote')
    data = checkpoint.meta['recipe']['data']
    root, split = data_root or data['root'], split or data['val_split']
    if split is None:
        raise ValueError('the recipe has no validation split; name one with --split')
    out.mkdir(parents=True, exist_ok=True)
    name = f'{checkpoint.model_name}_{data["dataset"]}'
    report = evaluate_checkpoint(checkpoint_path, dataset=data['dataset'], root=root, split=split, device=device,
                                 num_workers=num_workers).report
    images, label_size = _validation_frames(data['dataset'], root, split)
    speed = measure_speed(checkpoint, images, device=device, iterations=frames)
    card = out / f'{name}.md'
    card.write_text(card_text(
        file_name=f'{name}.pt', checkpoint=checkpoint, checkpoint_path=checkpoint_path,
        sha256=_sha256(checkpoint_path), command=recipe_command, recipe_name=recipe_name, overrides=overrides,
        hardware=hardware, report=report, speed=speed, label_size=label_size,
        log_path=log_path or checkpoint_path.parent / 'log.jsonl'))
    write_index(out)
    return card
