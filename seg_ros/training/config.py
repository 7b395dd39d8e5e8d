"""Training recipes: YAML files with known sections, dotted ``key=value`` overrides and stages.

A recipe (``config/train/<network>_<dataset>.yaml``) writes out every hyper-parameter of a run::

    model:     {name, options, init}             the network, as ``seg_ros.models.build_model`` takes it;
                                                 init: a checkpoint to start from (fine-tuning)
    data:      {dataset, root, train_split, val_split, options, num_workers, cache, batch_augment,
                check_files}
    augment:   {crop_size, scale_range, hflip, mixup_alpha}
    loss:      criterion spec (``seg_ros.training.losses.build_criterion``)
    optimizer: optimiser spec (``seg_ros.training.schedules.build_optimizer``)
    scheduler: schedule spec (``seg_ros.training.schedules.build_scheduler``)
    train:     {epochs, batch_size, precision, channels_last, compile, seed, deterministic, device,
                val_every, log_every, schedule_metric}
    eval:      {input_size, batch_size, flip, scales}
    output:    {dir}
    stages:    [{name, epochs, encoder_only, crop_size, batch_size, lr, data, augment, loss,
                 optimizer, scheduler}, ...]

Every key has a default here, so a recipe names only what it changes, and a key that is not
known (a typo) is an error naming it. ``loss``, ``optimizer``, ``scheduler``, ``model.options``
and ``data.options`` are specs handed on to their builders, which check them.

Stages run one after the other on the same network: progressive scaling (000, Table II),
ERFNet's encoder-first stage (001) and DSNet's coarse pre-training (002) are all stages. A stage
starts from the top-level settings; ``data`` and ``augment`` are merged key by key, ``loss``,
``optimizer``, ``scheduler`` and ``data.options`` replace the top-level spec whole (an Adam spec
merged into an SGD one would be neither), and ``crop_size``, ``batch_size`` and ``lr`` are shorthands for
``augment.crop_size``, ``train.batch_size`` and ``optimizer.lr``. Each stage builds a fresh
optimiser and schedule over its own epochs.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from seg_ros.models import list_models
from seg_ros.vocabulary import PRECISION_CHOICES, format_size, parse_size

__all__ = ['RecipeError', 'Stage', 'apply_overrides', 'dump_recipe', 'find_recipe',
           'load_recipe', 'recipe_dirs', 'resolve_stages', 'validate_recipe']

SCHEDULE_METRICS = ('val_miou', 'train_loss')

DEFAULTS: dict[str, Any] = {
    'model': {
        'name': None,
        'options': {},
        'init': None,            # checkpoint whose weights the run starts from (fine-tuning); see Trainer
    },
    'data': {
        'dataset': None,
        'root': None,
        'train_split': 'train',
        'val_split': 'val',      # null: no validation (and no best.pt)
        'options': {},           # the reader's own (build_dataset), e.g. cityscapes {annotations: coarse}
        'num_workers': 'auto',   # auto: none with the split cached, else one per core beyond the first (<= 4)
        'cache': 'auto',         # decode the training split once into memory: auto (if it fits) | true | false
        'batch_augment': 'auto',  # augment whole batches as tensor ops on the device: auto (on CUDA) | true | false
        'check_files': True,     # read every file before training starts
    },
    'augment': {
        'crop_size': None,       # WIDTHxHEIGHT (480x360); required for training
        'scale_range': [0.5, 2.0],
        'hflip': True,
        'mixup_alpha': 0.0,      # 0: no mixup; > 0: lambda ~ Beta(alpha, alpha) (000, eq. 1)
    },
    'loss': {'name': 'ce'},
    'optimizer': {'name': 'sgd', 'lr': 0.01, 'momentum': 0.9, 'weight_decay': 1.0e-4},
    'scheduler': {'name': 'poly', 'power': 0.9},
    'train': {
        'epochs': None,          # the single stage's epochs; null when `stages` lists them
        'batch_size': 8,         # per process; torchrun multiplies it by the number of processes
        'precision': 'auto',     # auto (the fastest measured) | fp32 | fp16 (autocast + scaler) | bf16 (autocast)
        'channels_last': 'auto',  # auto (the fastest measured, with precision) | true | false
        'compile': 'auto',       # torch.compile: auto (timed, on runs long enough to repay it) | true | false
        'seed': 0,
        'deterministic': False,  # deterministic algorithms, for bit-exact runs and resumes
        'device': 'auto',        # auto | cpu | cuda | cuda:N (torchrun: the local rank's GPU)
        'val_every': 1,          # epochs between validations (the last epoch of a stage always)
        'log_every': 'auto',     # iterations between JSON-lines records; auto: about 10 per epoch
        'schedule_metric': 'val_miou',  # what plateau_halving watches: val_miou | train_loss
    },
    'eval': {
        'input_size': None,      # WIDTHxHEIGHT the network sees; null: each image's own size
        'batch_size': 1,
        'flip': False,
        'scales': [1.0],
    },
    'output': {'dir': None},     # null: runs/<recipe file stem>
    'stages': [],
}

# Sections handed whole to a builder that checks them; any key may be set inside them.
FREE_FORM = {('model', 'options'), ('data', 'options'), ('loss',), ('optimizer',), ('scheduler',)}

STAGE_KEYS = {'name', 'epochs', 'encoder_only', 'crop_size', 'batch_size', 'lr', 'data', 'augment',
              'loss', 'optimizer', 'scheduler'}
MERGED_STAGE_SECTIONS = ('data', 'augment')
REPLACED_STAGE_SECTIONS = ('loss', 'optimizer', 'scheduler')


class RecipeError(ValueError):
    """A recipe or override that cannot be used; the message names the key and the reason."""


class _RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``)."""


_RecipeLoader.add_implicit_resolver(
    'tag:yaml.org,2002:float',
    re.compile(r'''^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$''', re.X),
    list('-+0123456789.'),
)


def _yaml_load(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_RecipeLoader)  # a SafeLoader: plain data only
    except yaml.YAMLError as exc:
        raise RecipeError(f'{source}: not valid YAML ({exc})') from None


@dataclass
class Stage:
    """One stage of a run, with every setting resolved."""

    name: str
    epochs: int
    encoder_only: bool
    batch_size: int
    data: dict[str, Any]
    augment: dict[str, Any]
    loss: Any
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]


def recipe_dirs() -> list[Path]:
    """Folders searched for a recipe given by name: the source tree, then installed share dirs."""
    dirs = [Path(__file__).resolve().parents[2] / 'config' / 'train']
    prefixes = [sys.prefix, *os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep)]
    dirs += [Path(p) / 'share' / 'seg_ros' / 'config' / 'train' for p in prefixes if p]
    return list(dict.fromkeys(d for d in dirs if d.is_dir()))


def find_recipe(name: str | os.PathLike) -> Path:
    """A recipe file: ``name`` itself if it exists, else ``<name>.yaml`` in :func:`recipe_dirs`."""
    path = Path(name)
    if path.is_file():
        return path
    stem = path.name if path.suffix in ('.yaml', '.yml') else f'{path.name}.yaml'
    for directory in recipe_dirs():
        if (directory / stem).is_file():
            return directory / stem
    known = sorted({p.stem for d in recipe_dirs() for p in d.glob('*.yaml')})
    raise RecipeError(f'recipe {str(name)!r} not found: not a file, and not one of the bundled recipes '
                      f'({", ".join(known) or "none found"})')


def load_recipe(path: str | os.PathLike, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The recipe at ``path`` (or bundled under that name) over the defaults, with overrides applied."""
    path = find_recipe(path)
    loaded = _yaml_load(path.read_text(), str(path))
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise RecipeError(f'{path}: a recipe is a mapping of sections, got {type(loaded).__name__}')
    recipe = _merge(copy.deepcopy(DEFAULTS), loaded, path=(), source=str(path))
    recipe = apply_overrides(recipe, overrides)
    _read_sizes(recipe)
    if recipe['output']['dir'] is None:
        recipe['output']['dir'] = str(Path('runs') / path.stem)
    validate_recipe(recipe)
    return recipe


def _is_free_form(path: tuple[str, ...]) -> bool:
    return any(path[:len(prefix)] == prefix for prefix in FREE_FORM)


def _dotted(path: Iterable[Any]) -> str:
    return '.'.join(str(p) for p in path)


def _known_keys(parent: tuple[str, ...]) -> set[str] | None:
    """The keys a mapping at ``parent`` may hold (``*`` stands for a list index); None: any key."""
    if parent[:2] == ('stages', '*'):
        inner = parent[2:]
        if not inner:
            return set(STAGE_KEYS)
        if inner[0] in REPLACED_STAGE_SECTIONS or _is_free_form(inner):
            return None
        return set(DEFAULTS[inner[0]]) if len(inner) == 1 and inner[0] in MERGED_STAGE_SECTIONS else set()
    if _is_free_form(parent):
        return None
    node: Any = DEFAULTS
    for part in parent:
        node = node.get(part) if isinstance(node, dict) else None
    return set(node) if isinstance(node, dict) else set()


def _check_key(parent: tuple[str, ...], key: str, source: str, shown: Sequence[str] | None = None) -> None:
    """A ``RecipeError`` naming ``shown`` (default: the path) unless ``parent`` may hold ``key``."""
    known = _known_keys(parent)
    if known is None or key in known:
        return
    hint = difflib.get_close_matches(key, sorted(known), n=1)
    raise RecipeError(f'{source}: unknown key {_dotted(shown or (*parent, key))!r}'
                      + (f' (did you mean {hint[0]!r}?)' if hint else '')
                      + f'; known here: {", ".join(sorted(known)) or "none"}')


def _merge(base: dict[str, Any], update: dict[str, Any], *, path: tuple[str, ...],
           source: str) -> dict[str, Any]:
    """``update`` merged into ``base`` (in place); unknown keys outside free-form sections are errors."""
    for key, value in update.items():
        key_path = (*path, str(key))
        _check_key(path, str(key), source)
        if isinstance(base.get(key), dict) and isinstance(value, dict) and not _is_free_form(key_path):
            _merge(base[key], value, path=key_path, source=source)
        else:
            base[key] = value
    return base


def apply_overrides(recipe: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides; the value is YAML (``[512, 512]``, ``null``, ``{name: ce}``).

    List items are addressed by index (``stages.1.epochs=50``). A key that does not exist is an
    error naming it, except inside the free-form sections (``loss``, ``optimizer``,
    ``scheduler``, ``model.options``), whose builders check what they are given.
    """
    recipe = copy.deepcopy(recipe)
    for override in overrides:
        key, sep, text = override.partition('=')
        if not sep or not key.strip():
            raise RecipeError(f'override {override!r} is not key=value (e.g. train.epochs=10)')
        source = f'override {override!r}'
        parts = key.strip().split('.')
        value = _yaml_load(text, source) if text.strip() else None
        node: Any = recipe
        schema: tuple[str, ...] = ()  # the path with list indices as '*', for _check_key
        for depth, part in enumerate(parts):
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise RecipeError(f'{source}: {_dotted(parts[:depth])} is a list of {len(node)}; '
                                      f'{part!r} is not an index in it')
                index: Any = int(part)
                schema += ('*',)
            elif isinstance(node, dict):
                _check_key(schema, part, source, shown=parts[:depth + 1])
                index = part
                schema += (part,)
            else:
                raise RecipeError(f'{source}: {_dotted(parts[:depth])} is a {type(node).__name__}, '
                                  'not a section')
            if depth == len(parts) - 1:
                node[index] = value
            else:
                if isinstance(node, dict) and node.get(index) is None:
                    node[index] = {}
                node = node[index]
    return recipe


# -- validation ------------------------------------------------------------------------------------------


def _fail(key: str, reason: str) -> RecipeError:
    return RecipeError(f'recipe key {key!r}: {reason}')


def _check_int(value: Any, key: str, *, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _fail(key, f'needs an integer >= {minimum}, got {value!r}')
    return value


def _size_keys(recipe: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str, str]]:
    """(mapping, key, dotted name) of every size in the recipe."""
    yield recipe['augment'], 'crop_size', 'augment.crop_size'
    yield recipe['eval'], 'input_size', 'eval.input_size'
    for index, stage in enumerate(recipe['stages'] if isinstance(recipe['stages'], list) else []):
        if isinstance(stage, dict):
            yield stage, 'crop_size', f'stages[{index}].crop_size'
            if isinstance(stage.get('augment'), dict):
                yield stage['augment'], 'crop_size', f'stages[{index}].augment.crop_size'


def _read_sizes(recipe: dict[str, Any]) -> None:
    """Sizes are written ``WIDTHxHEIGHT`` (``480x360``) and held as [height, width] in code."""
    for mapping, key, name in _size_keys(recipe):
        if isinstance(mapping.get(key), str):
            try:
                mapping[key] = list(parse_size(mapping[key]))
            except ValueError as error:
                raise _fail(name, str(error)) from None


def _check_size(value: Any, key: str, *, optional: bool) -> None:
    if value is None and optional:
        return
    # [height, width] lists are what the code holds, and what recipes of earlier versions wrote.
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise _fail(key, f'needs WIDTHxHEIGHT, for example 480x360, got {value!r}')


def _check_number(value: Any, key: str, *, minimum: float = 0.0) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < minimum:
        raise _fail(key, f'needs a number >= {minimum}, got {value!r}')


def _check_section_types(recipe: dict[str, Any]) -> None:
    for section, default in DEFAULTS.items():
        # loss may also be a list of terms; _check_stage checks it
        if section != 'loss' and isinstance(default, dict) and not isinstance(recipe.get(section), dict):
            raise _fail(section, f'needs a mapping, got {recipe.get(section)!r}')
    if not isinstance(recipe['model']['options'], dict):
        raise _fail('model.options', f'needs a mapping of options, got {recipe["model"]["options"]!r}')
    if not isinstance(recipe['stages'], list):
        raise _fail('stages', f'needs a list of stages, got {recipe["stages"]!r}')


def _check_stage(stage: Stage, prefix: str) -> None:
    _check_int(stage.epochs, f'{prefix}epochs', minimum=1)
    _check_int(stage.batch_size, f'{prefix}batch_size', minimum=1)
    data, augment = stage.data, stage.augment
    for key in ('dataset', 'root'):
        if not isinstance(data.get(key), str) or not data[key]:
            raise _fail(f'{prefix}data.{key}', f'is not set (e.g. data.{key}=...), got {data.get(key)!r}')
    if not isinstance(data.get('train_split'), str):
        raise _fail(f'{prefix}data.train_split', f'needs a split name, got {data.get("train_split")!r}')
    if data.get('val_split') is not None and not isinstance(data['val_split'], str):
        raise _fail(f'{prefix}data.val_split', f'needs a split name or null, got {data["val_split"]!r}')
    if not isinstance(data.get('options'), dict):
        raise _fail(f'{prefix}data.options', f'needs a mapping of reader options, got {data.get("options")!r}')
    if data.get('num_workers') != 'auto':
        _check_int(data.get('num_workers'), f'{prefix}data.num_workers', minimum=0)
    for key in ('cache', 'batch_augment'):
        if data.get(key) not in ('auto', True, False):
            raise _fail(f'{prefix}data.{key}', f'needs auto, true or false, got {data.get(key)!r}')
    _check_size(augment.get('crop_size'), f'{prefix}augment.crop_size', optional=False)
    scale_range = augment.get('scale_range')
    if (not isinstance(scale_range, (list, tuple)) or len(scale_range) != 2
            or not all(isinstance(s, (int, float)) and s > 0 for s in scale_range)
            or scale_range[0] > scale_range[1]):
        raise _fail(f'{prefix}augment.scale_range', f'needs [min, max], 0 < min <= max, got {scale_range!r}')
    _check_number(augment.get('mixup_alpha'), f'{prefix}augment.mixup_alpha')
    if not isinstance(augment.get('hflip'), bool):
        raise _fail(f'{prefix}augment.hflip', f'needs true or false, got {augment.get("hflip")!r}')
    for name in ('optimizer', 'scheduler'):
        spec = getattr(stage, name)
        if not isinstance(spec, dict) or not isinstance(spec.get('name'), str):
            raise _fail(f'{prefix}{name}', f'needs a mapping with a name, got {spec!r}')
    if not isinstance(stage.loss, (dict, list)) or not stage.loss:
        raise _fail(f'{prefix}loss', f'needs a criterion spec (a mapping or a list), got {stage.loss!r}')


def validate_recipe(recipe: dict[str, Any]) -> None:
    """Check types and ranges of every known key; raises :class:`RecipeError` naming the key."""
    _check_section_types(recipe)
    if not isinstance(recipe['model']['name'], str):
        raise _fail('model.name', f'needs a network name (e.g. enet), got {recipe["model"]["name"]!r}')
    if recipe['model']['name'] not in list_models():
        close = difflib.get_close_matches(recipe['model']['name'], list_models(), n=1)
        raise _fail('model.name', f'unknown network {recipe["model"]["name"]!r}'
                                  + (f' (did you mean {close[0]!r}?)' if close else '')
                                  + f'; available: {", ".join(list_models())}')
    if recipe['model']['init'] is not None and (not isinstance(recipe['model']['init'], str)
                                                or not recipe['model']['init']):
        raise _fail('model.init', f'needs a checkpoint path or null, got {recipe["model"]["init"]!r}')
    train, evaluation = recipe['train'], recipe['eval']
    if train['precision'] not in PRECISION_CHOICES:
        raise _fail('train.precision', f'needs one of {", ".join(PRECISION_CHOICES)}, got {train["precision"]!r}')
    if train['channels_last'] != 'auto' and not isinstance(train['channels_last'], bool):
        raise _fail('train.channels_last', f'needs auto, true or false, got {train["channels_last"]!r}')
    if train['compile'] != 'auto' and not isinstance(train['compile'], bool):
        raise _fail('train.compile', f'needs auto, true or false, got {train["compile"]!r}')
    for key in ('deterministic',):
        if not isinstance(train[key], bool):
            raise _fail(f'train.{key}', f'needs true or false, got {train[key]!r}')
    _check_int(train['seed'], 'train.seed', minimum=0)
    _check_int(train['val_every'], 'train.val_every', minimum=1)
    if train['log_every'] != 'auto':
        _check_int(train['log_every'], 'train.log_every', minimum=1)
    if train['schedule_metric'] not in SCHEDULE_METRICS:
        raise _fail('train.schedule_metric', f'needs one of {", ".join(SCHEDULE_METRICS)}, '
                                             f'got {train["schedule_metric"]!r}')
    if not isinstance(train['device'], str):
        raise _fail('train.device', f'needs auto, cpu, cuda or cuda:N, got {train["device"]!r}')
    _check_size(evaluation['input_size'], 'eval.input_size', optional=True)
    _check_int(evaluation['batch_size'], 'eval.batch_size', minimum=1)
    if not isinstance(evaluation['flip'], bool):
        raise _fail('eval.flip', f'needs true or false, got {evaluation["flip"]!r}')
    scales = evaluation['scales']
    if not isinstance(scales, list) or not scales or not all(
            isinstance(s, (int, float)) and not isinstance(s, bool) and s > 0 for s in scales):
        raise _fail('eval.scales', f'needs a list of positive scale factors, got {scales!r}')
    if not isinstance(recipe['output']['dir'], str) or not recipe['output']['dir']:
        raise _fail('output.dir', f'needs a folder, got {recipe["output"]["dir"]!r}')
    if recipe['stages'] and train['epochs'] is not None:
        raise _fail('train.epochs', f'is {train["epochs"]} but the recipe lists stages, each with its own '
                                    'epochs; set train.epochs=null or drop the stages (stages=[])')
    if not recipe['stages'] and train['epochs'] is None:
        raise _fail('train.epochs', 'is not set and the recipe lists no stages (e.g. train.epochs=10)')
    for index, stage in enumerate(resolve_stages(recipe)):
        _check_stage(stage, f'stages.{index}.' if recipe['stages'] else '')


def resolve_stages(recipe: dict[str, Any]) -> list[Stage]:
    """The run's stages with every setting resolved; a recipe without ``stages`` has one."""
    entries = recipe['stages'] or [{'name': 'main', 'epochs': recipe['train']['epochs']}]
    stages = []
    for index, entry in enumerate(entries):
        prefix = f'stages.{index}'
        if not isinstance(entry, dict):
            raise _fail(prefix, f'needs a mapping (name, epochs, ...), got {entry!r}')
        for key in entry:
            _check_key(('stages', '*'), str(key), prefix)
        sections = {name: copy.deepcopy(recipe[name]) for name in (*MERGED_STAGE_SECTIONS,
                                                                   *REPLACED_STAGE_SECTIONS)}
        for name in MERGED_STAGE_SECTIONS:
            overlay = entry.get(name) or {}
            if not isinstance(overlay, dict):
                raise _fail(f'{prefix}.{name}', f'needs a mapping, got {overlay!r}')
            _merge(sections[name], overlay, path=(name,), source=prefix)
        for name in REPLACED_STAGE_SECTIONS:
            if name in entry:
                sections[name] = copy.deepcopy(entry[name])
        if 'crop_size' in entry:
            sections['augment']['crop_size'] = entry['crop_size']
        if 'lr' in entry:
            if not isinstance(sections['optimizer'], dict):
                raise _fail(f'{prefix}.lr', 'needs an optimizer mapping to set the rate in')
            sections['optimizer']['lr'] = entry['lr']
        encoder_only = entry.get('encoder_only', False)
        if not isinstance(encoder_only, bool):
            raise _fail(f'{prefix}.encoder_only', f'needs true or false, got {encoder_only!r}')
        stages.append(Stage(
            name=str(entry.get('name', f'stage{index}')),
            epochs=entry.get('epochs'),
            encoder_only=encoder_only,
            batch_size=entry.get('batch_size', recipe['train']['batch_size']),
            **sections,
        ))
    return stages


def dump_recipe(recipe: dict[str, Any]) -> str:
    """The recipe as YAML, as the run's ``recipe.yaml`` keeps it (sizes written ``WIDTHxHEIGHT``)."""
    written = copy.deepcopy(recipe)
    for mapping, key, _ in _size_keys(written):
        if isinstance(mapping.get(key), (list, tuple)):
            mapping[key] = format_size(mapping[key])
    return yaml.safe_dump(written, sort_keys=False, default_flow_style=None)
