"""One self-describing checkpoint format for training, evaluation, the bag tool and the node.

A checkpoint is a plain ``torch.save`` dictionary of tensors, numbers, strings, lists and dicts,
so it loads with ``torch.load(weights_only=True)`` and never unpickles code::

    format: 'seg_ros.checkpoint'   version: 1
    model: {name, options}         num_classes
    labels: LabelSet.to_dict()     normalization: {mean, std}  (RGB, 0..1 scale)
    input_size: [height, width]    the training resolution, the default network input
    state_dict                     the network's weights
    meta: {...}                    metrics, provenance, recipe: free form
    training: {...}                optional resume state (optimiser, scheduler, RNG, epoch)

Files are written atomically (temporary file in the same folder, fsync, rename), so a run
killed at any point leaves the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seg_ros.labels import LabelSet
from seg_ros.models import build_model

__all__ = ['IMAGENET_MEAN', 'IMAGENET_STD', 'Checkpoint', 'CheckpointError', 'atomic_torch_save',
           'load_checkpoint', 'save_checkpoint']

FORMAT = 'seg_ros.checkpoint'
VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used; the message names the file and the reason."""


@dataclass
class Checkpoint:
    """Everything needed to rebuild and use a trained network."""

    model_name: str
    num_classes: int
    labels: LabelSet
    state_dict: dict[str, torch.Tensor]
    model_options: dict[str, Any] = field(default_factory=dict)
    input_size: tuple[int, int] = (360, 480)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    meta: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] | None = None

    def build_model(self) -> nn.Module:
        """The network with these weights, in eval mode, on the CPU."""
        model = build_model(self.model_name, self.num_classes, **self.model_options)
        model.load_state_dict(self.state_dict)
        return model.eval()

    def to_dict(self) -> dict[str, Any]:
        data = {
            'format': FORMAT,
            'version': VERSION,
            'model': {'name': self.model_name, 'options': dict(self.model_options)},
            'num_classes': self.num_classes,
            'labels': self.labels.to_dict(),
            'normalization': {'mean': list(self.mean), 'std': list(self.std)},
            'input_size': list(self.input_size),
            'state_dict': self.state_dict,
            'meta': self.meta,
        }
        if self.training is not None:
            data['training'] = self.training
        return data

    @classmethod
    def from_model(cls, model: nn.Module, model_name: str, labels: LabelSet, **fields) -> Checkpoint:
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return cls(model_name=model_name, num_classes=labels.num_classes, labels=labels,
                   state_dict=state, **fields)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f'.{path.name}.*.tmp'):  # left by a writer killed mid-write
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide shipped weights from other users
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(checkpoint: Checkpoint, path: str | os.PathLike) -> Path:
    return atomic_torch_save(checkpoint.to_dict(), path)


def load_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device = 'cpu',
                    check_weights: bool = True) -> Checkpoint:
    """Load and validate; any problem raises ``CheckpointError`` naming the file and the reason.

    ``check_weights`` also builds the network and loads the state dict, so that weights that do
    not fit the named network are caught here rather than at the first frame.
    """
    path = Path(path)

    def fail(reason: str) -> CheckpointError:
        return CheckpointError(f'checkpoint {path}: {reason}')

    if not path.is_file():
        raise fail('no such file' if not path.exists() else 'not a regular file')
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # The weights-only unpickler names a blocked global when the file carries code; any
        # other unpickling error is plain garbage.
        blocked = re.search(r'(?:unsupported|blocked) GLOBAL [\w.]+', str(exc), re.IGNORECASE)
        if blocked:
            raise fail(f'refused: it holds objects other than tensors and plain data '
                       f'({blocked.group(0)}); seg_ros never unpickles code') from None
        raise fail('not a readable PyTorch file, truncated or corrupt (unpickling failed)') from None
    except Exception as exc:
        raise fail(f'not a readable PyTorch file, truncated or corrupt ({type(exc).__name__}: '
                   f'{str(exc).splitlines()[0] if str(exc) else "no detail"})') from None
    if not isinstance(data, dict) or data.get('format') != FORMAT:
        raise fail(f'not a seg_ros checkpoint (no "format: {FORMAT}" entry); '
                   'it may be a bare state dict or another project\'s file')
    if data.get('version') != VERSION:
        raise fail(f'format version {data.get("version")!r} is not supported (this seg_ros reads {VERSION})')
    try:
        labels = LabelSet.from_dict(data['labels'])
        checkpoint = Checkpoint(
            model_name=str(data['model']['name']),
            model_options=dict(data['model'].get('options', {})),
            num_classes=int(data['num_classes']),
            labels=labels,
            state_dict=data['state_dict'],
            input_size=tuple(int(v) for v in data['input_size']),
            mean=tuple(float(v) for v in data['normalization']['mean']),
            std=tuple(float(v) for v in data['normalization']['std']),
            meta=dict(data.get('meta', {})),
            training=data.get('training'),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise fail(f'malformed entry ({type(exc).__name__}: {exc})') from None
    if checkpoint.num_classes != labels.num_classes:
        raise fail(f'num_classes is {checkpoint.num_classes} but it lists {labels.num_classes} class names')
    if len(checkpoint.input_size) != 2 or min(checkpoint.input_size) < 1:
        raise fail(f'input_size {checkpoint.input_size} is not a positive (height, width)')
    if len(checkpoint.mean) != 3 or len(checkpoint.std) != 3 or min(checkpoint.std) <= 0:
        raise fail('normalization needs three means and three positive standard deviations')
    if check_weights:
        try:
            checkpoint.build_model()
        except KeyError as exc:
            raise fail(f'{exc.args[0]}') from None
        except (RuntimeError, ValueError, TypeError) as exc:
            raise fail(f'weights do not fit network {checkpoint.model_name!r}: '
                       f'{str(exc).splitlines()[0]}') from None
    return checkpoint
