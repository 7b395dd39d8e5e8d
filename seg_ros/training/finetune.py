"""``model.init``: a new run that starts from a checkpoint's weights (fine-tuning)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from seg_ros.checkpoint import load_checkpoint
from seg_ros.labels import LabelSet
from seg_ros.models import build_model

__all__ = ['InitError', 'load_initial_weights']

log = logging.getLogger(__name__)


class InitError(ValueError):
    """Weights that cannot start this run; the message names the file and the reason."""


def load_initial_weights(net: nn.Module, path: Path, model: dict[str, Any], labels: LabelSet) -> None:
    """Load into ``net`` (the recipe's ``model`` section, trained on ``labels``) the weights of ``path``.

    Everything is taken when the checkpoint was trained on the same classes; for other classes
    (say, fine-tuning a CamVid model on one's own labels) the class-dependent tensors, the ones
    whose shape follows the number of classes, keep their fresh initialisation. Epochs, optimiser
    and schedule start anew: this is a new run, not a resume.
    """
    try:
        checkpoint = load_checkpoint(path)
    except Exception as exc:  # CheckpointError and whatever a half-written disk gives
        raise InitError(f'model.init: {exc}') from None
    name = model['name']
    if checkpoint.model_name != name:
        raise InitError(f'model.init {path}: it holds a {checkpoint.model_name}, the recipe trains a {name}')
    own = net.state_dict()
    skipped = set()
    if checkpoint.labels.names != labels.names:
        other = build_model(name, labels.num_classes + 1, **model['options']).state_dict()
        skipped = {key for key, tensor in own.items() if other[key].shape != tensor.shape}
    loaded = {key: tensor for key, tensor in checkpoint.state_dict.items()
              if key in own and key not in skipped and own[key].shape == tensor.shape}
    missing = sorted(set(own) - set(loaded) - skipped)
    if missing:
        raise InitError(f'model.init {path}: its weights do not fit the recipe\'s {name} '
                        f'(options {model["options"]}): {len(missing)} tensor(s) '
                        f'missing or of another shape, e.g. {missing[0]}')
    net.load_state_dict(loaded, strict=False)
    log.info('model.init %s: %d tensors taken%s', path, len(loaded),
             f'; {len(skipped)} class-dependent ones initialised afresh ({checkpoint.labels.name} '
             f'-> {labels.name})' if skipped else '')
