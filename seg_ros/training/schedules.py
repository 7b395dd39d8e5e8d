"""Optimisers and learning-rate schedules from config specs.

``build_optimizer(params, {'name': 'sgd', 'lr': 0.01, 'momentum': 0.9, 'nesterov': True,
'weight_decay': 1e-4})`` (also ``adam`` and ``adamw`` with ``betas``) and
``build_scheduler(optimizer, {'name': 'onecycle', ...}, steps_per_epoch=..., epochs=...)``.

A schedule (``LRSchedule``) sets every parameter group's lr to ``base_lr * warmup(step) * factor``,
where base_lr is the group's lr when the schedule was built (the peak lr for ``onecycle``) and the
factor comes from the kind's ``Policy``. Call ``step_batch()`` after each ``optimizer.step()`` and
``step_epoch(val_metric)`` after each epoch; ``state_dict()`` / ``load_state_dict()`` resume
exactly. Kinds:

- ``onecycle``: Smith & Topin's 1cycle as in fastai and ``torch.optim.lr_scheduler.OneCycleLR``
  (cosine phases): lr rises from ``base/div_factor`` to ``base`` over ``pct_start`` of the steps,
  then falls to ``base/(div_factor*final_div_factor)``; momentum (beta1 for Adam-type) moves
  inversely between ``max_momentum`` and ``base_momentum``. Used by Lourenço et al. for ENet.
- ``poly``: ``(1 - t/T)^power`` per step, power 0.9 (DSNet).
- ``cosine``: cosine annealing per step to ``min_lr_ratio * base``.
- ``step``: lr multiplied by ``gamma`` every ``step_epochs`` epochs (DSNet's coarse pre-training:
  0.5 every 10).
- ``plateau_halving``: ERFNet's rule, lr multiplied by ``factor`` (1/2) each time the validation
  metric has not improved for ``patience`` epochs.
- ``constant``.

Every kind takes ``warmup_epochs``: a linear ramp over the first steps, ``(t + 1)/(W + 1)`` of the
lr at step t < W; per-step kinds then run their course over the remaining steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch

from seg_ros.training._spec import build_from_spec

__all__ = [
    'Constant',
    'Cosine',
    'LRSchedule',
    'OneCycle',
    'PlateauHalving',
    'Policy',
    'Poly',
    'StepDecay',
    'build_optimizer',
    'build_scheduler',
]

Params = Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]]


def _sgd(params: Params, *, lr: float, momentum: float = 0.9, nesterov: bool = False,
         weight_decay: float = 0.0) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)


def _adam(params: Params, *, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
          weight_decay: float = 0.0) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def _adamw(params: Params, *, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
           weight_decay: float = 1e-2) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


_OPTIMIZERS = {'sgd': _sgd, 'adam': _adam, 'adamw': _adamw}


def build_optimizer(params: Params, spec: Mapping[str, Any]) -> torch.optim.Optimizer:
    """An optimiser from ``{'name': 'sgd' | 'adam' | 'adamw', 'lr': ..., **options}``.

    sgd takes momentum (default 0.9), nesterov, weight_decay; adam and adamw take betas, eps,
    weight_decay (adamw's default 0.01, decoupled). ``lr`` is required.
    """
    return build_from_spec('optimizer', _OPTIMIZERS, spec, params)


def _cosine_anneal(start: float, end: float, progress: float) -> float:
    """From ``start`` at progress 0 to ``end`` at progress 1 along half a cosine."""
    return end + (start - end) / 2.0 * (1.0 + math.cos(math.pi * progress))


class Policy:
    """How the lr multiplier (and, for some kinds, momentum) follows steps and epochs.

    ``step`` counts optimiser steps of the policy's own course (after warm-up), ``total`` is its
    length; ``step`` never exceeds ``total``.
    """

    name: ClassVar[str]

    def check(self, optimizer: torch.optim.Optimizer, total: int) -> None:
        """Raise ValueError if the policy cannot run on this optimiser for ``total`` steps."""

    def lr_factor(self, step: int, total: int) -> float:
        raise NotImplementedError

    def momentum(self, step: int, total: int) -> float | None:
        """Momentum / beta1 to set, None to leave it alone."""
        return None

    def end_epoch(self, val_metric: float | None) -> None:
        """Take note of an epoch's validation metric (None: not validated)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


class Constant(Policy):
    """The base lr throughout (after any warm-up)."""

    name = 'constant'

    def lr_factor(self, step: int, total: int) -> float:
        return 1.0


class Poly(Policy):
    """``(1 - t/T)^power`` per step (DSNet: power 0.9)."""

    name = 'poly'

    def __init__(self, *, power: float = 0.9) -> None:
        if power <= 0:
            raise ValueError(f'poly power must be > 0, got {power}')
        self.power = power

    def lr_factor(self, step: int, total: int) -> float:
        return (1.0 - step / total) ** self.power


class Cosine(Policy):
    """Cosine annealing per step from 1 to ``min_lr_ratio``."""

    name = 'cosine'

    def __init__(self, *, min_lr_ratio: float = 0.0) -> None:
        if not 0 <= min_lr_ratio <= 1:
            raise ValueError(f'cosine min_lr_ratio must be in [0, 1], got {min_lr_ratio}')
        self.min_lr_ratio = min_lr_ratio

    def lr_factor(self, step: int, total: int) -> float:
        return _cosine_anneal(1.0, self.min_lr_ratio, step / total)


class StepDecay(Policy):
    """lr times ``gamma`` after every ``step_epochs`` epochs, as ``torch.optim.lr_scheduler.StepLR``."""

    name = 'step'

    def __init__(self, *, step_epochs: int, gamma: float = 0.1) -> None:
        if not isinstance(step_epochs, int) or isinstance(step_epochs, bool) or step_epochs < 1:
            raise ValueError(f'step step_epochs must be a positive integer, got {step_epochs!r}')
        if not 0 < gamma < 1:
            raise ValueError(f'step gamma must be in (0, 1), got {gamma}')
        self.step_epochs = step_epochs
        self.gamma = gamma
        self.epochs_done = 0

    def lr_factor(self, step: int, total: int) -> float:
        return self.gamma ** (self.epochs_done // self.step_epochs)

    def end_epoch(self, val_metric: float | None) -> None:
        self.epochs_done += 1

    def state_dict(self) -> dict[str, Any]:
        return {'epochs_done': self.epochs_done}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epochs_done = int(state['epochs_done'])


class OneCycle(Policy):
    """1cycle with cosine phases; the optimiser's lr is the peak. Same values as torch's OneCycleLR."""

    name = 'onecycle'

    def __init__(self, *, pct_start: float = 0.3, div_factor: float = 25.0,
                 final_div_factor: float = 1e4, base_momentum: float = 0.85, max_momentum: float = 0.95,
                 cycle_momentum: bool = True) -> None:
        if not 0 < pct_start < 1:
            raise ValueError(f'onecycle pct_start must be in (0, 1), got {pct_start}')
        if div_factor <= 0 or final_div_factor <= 0:
            raise ValueError(f'onecycle div factors must be > 0, got {div_factor}, {final_div_factor}')
        self.pct_start = pct_start
        self.initial_factor = 1.0 / div_factor
        self.final_factor = self.initial_factor / final_div_factor
        self.base_momentum = base_momentum
        self.max_momentum = max_momentum
        self.cycle_momentum = cycle_momentum

    def check(self, optimizer: torch.optim.Optimizer, total: int) -> None:
        if self._peak_step(total) <= 0:
            raise ValueError(f'onecycle needs pct_start * steps > 1, got {self.pct_start} * {total}')
        if self.cycle_momentum and not all('momentum' in g or 'betas' in g for g in optimizer.param_groups):
            raise ValueError(f'{type(optimizer).__name__} has no momentum or betas to cycle; '
                             'set cycle_momentum: false')

    def _peak_step(self, total: int) -> float:
        # Phase boundary as in torch's OneCycleLR: the peak is at step pct_start * T - 1.
        return self.pct_start * total - 1

    def _phase(self, step: int, total: int) -> tuple[bool, float]:
        """(rising, progress within the phase)."""
        peak = self._peak_step(total)
        if step <= peak:
            return True, step / peak
        return False, min((step - peak) / (total - 1 - peak), 1.0)

    def lr_factor(self, step: int, total: int) -> float:
        rising, progress = self._phase(step, total)
        if rising:
            return _cosine_anneal(self.initial_factor, 1.0, progress)
        return _cosine_anneal(1.0, self.final_factor, progress)

    def momentum(self, step: int, total: int) -> float | None:
        if not self.cycle_momentum:
            return None
        rising, progress = self._phase(step, total)
        if rising:
            return _cosine_anneal(self.max_momentum, self.base_momentum, progress)
        return _cosine_anneal(self.base_momentum, self.max_momentum, progress)


class PlateauHalving(Policy):
    """ERFNet: lr times ``factor`` whenever the validation metric stalls for ``patience`` epochs.

    ``mode='max'`` for scores such as mIoU, ``'min'`` for losses; an improvement must beat the
    best value so far by more than ``min_delta``. An epoch without a metric (None) is not counted;
    a nan metric counts as no improvement.
    """

    name = 'plateau_halving'

    def __init__(self, *, patience: int = 10, factor: float = 0.5, mode: str = 'max',
                 min_delta: float = 0.0) -> None:
        if not isinstance(patience, int) or isinstance(patience, bool) or patience < 1:
            raise ValueError(f'plateau_halving patience must be a positive integer, got {patience!r}')
        if not 0 < factor < 1:
            raise ValueError(f'plateau_halving factor must be in (0, 1), got {factor}')
        if mode not in ('max', 'min'):
            raise ValueError(f"plateau_halving mode must be 'max' or 'min', got {mode!r}")
        if min_delta < 0:
            raise ValueError(f'plateau_halving min_delta must be >= 0, got {min_delta}')
        self.patience = patience
        self.factor = factor
        self.mode = mode
        self.min_delta = min_delta
        self.best: float | None = None
        self.bad_epochs = 0
        self.reductions = 0

    def lr_factor(self, step: int, total: int) -> float:
        return self.factor ** self.reductions

    def _improves(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        gain = value - self.best if self.mode == 'max' else self.best - value
        return gain > self.min_delta

    def end_epoch(self, val_metric: float | None) -> None:
        if val_metric is None:
            return
        if self._improves(float(val_metric)):
            self.best = float(val_metric)
            self.bad_epochs = 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            self.reductions += 1
            self.bad_epochs = 0

    def state_dict(self) -> dict[str, Any]:
        return {'best': self.best, 'bad_epochs': self.bad_epochs, 'reductions': self.reductions}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = state['best']
        self.bad_epochs = int(state['bad_epochs'])
        self.reductions = int(state['reductions'])


_POLICIES: dict[str, type[Policy]] = {
    policy.name: policy for policy in (OneCycle, Poly, Cosine, StepDecay, PlateauHalving, Constant)
}


class LRSchedule:
    """Applies a ``Policy`` with optional linear warm-up to an optimiser; resumable.

    Sets each parameter group's lr to ``base_lr * warmup * policy factor``, where base_lr is the
    group's lr at construction, from the start (step 0) and after every ``step_batch`` and
    ``step_epoch``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, policy: Policy, *, steps_per_epoch: int,
                 epochs: int, warmup_epochs: float = 0.0) -> None:
        for key, value in (('steps_per_epoch', steps_per_epoch), ('epochs', epochs)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f'{key} must be a positive integer, got {value!r}')
        if not 0 <= warmup_epochs < epochs:
            raise ValueError(f'warmup_epochs must be in [0, epochs={epochs}), got {warmup_epochs}')
        self.optimizer = optimizer
        self.policy = policy
        self.total_steps = steps_per_epoch * epochs
        self.warmup_steps = round(warmup_epochs * steps_per_epoch)
        policy.check(optimizer, self.total_steps - self.warmup_steps)
        self.base_lrs = [group['lr'] for group in optimizer.param_groups]
        self.step_count = 0
        self.epoch = 0
        self._apply()

    def _apply(self) -> None:
        total = self.total_steps - self.warmup_steps
        step = min(max(self.step_count - self.warmup_steps, 0), total)
        warming_up = self.step_count < self.warmup_steps
        warmup = (self.step_count + 1) / (self.warmup_steps + 1) if warming_up else 1.0
        factor = warmup * self.policy.lr_factor(step, total)
        momentum = self.policy.momentum(step, total)
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group['lr'] = base_lr * factor
            if momentum is None:
                continue
            if 'betas' in group:
                group['betas'] = (momentum, *group['betas'][1:])
            else:
                group['momentum'] = momentum

    def step_batch(self) -> None:
        """Advance one optimiser step (call after ``optimizer.step()``)."""
        self.step_count += 1
        self._apply()

    def step_epoch(self, val_metric: float | None = None) -> None:
        """Advance one epoch; ``val_metric`` is the validation score if one was computed."""
        self.epoch += 1
        self.policy.end_epoch(val_metric)
        self._apply()

    def current_lr(self) -> float:
        """The lr of the first parameter group."""
        return self.optimizer.param_groups[0]['lr']

    def state_dict(self) -> dict[str, Any]:
        return {
            'policy': self.policy.name, 'total_steps': self.total_steps, 'warmup_steps': self.warmup_steps,
            'base_lrs': list(self.base_lrs), 'step_count': self.step_count, 'epoch': self.epoch,
            'policy_state': self.policy.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from ``state_dict()``; the schedule must be the same kind and length."""
        expected = {'policy': self.policy.name, 'total_steps': self.total_steps,
                    'warmup_steps': self.warmup_steps}
        differing = [f'{key}: saved {state.get(key)!r}, now {value!r}'
                     for key, value in expected.items() if state.get(key) != value]
        if differing:
            raise ValueError(f'lr schedule state does not fit this schedule ({", ".join(differing)})')
        if len(state['base_lrs']) != len(self.optimizer.param_groups):
            raise ValueError(f'lr schedule state has {len(state["base_lrs"])} parameter groups, '
                             f'the optimizer {len(self.optimizer.param_groups)}')
        self.base_lrs = list(state['base_lrs'])
        self.step_count = int(state['step_count'])
        self.epoch = int(state['epoch'])
        self.policy.load_state_dict(state['policy_state'])
        self._apply()


def build_scheduler(optimizer: torch.optim.Optimizer, spec: Mapping[str, Any], *, steps_per_epoch: int,
                    epochs: int) -> LRSchedule:
    """A schedule from ``{'name': kind, 'warmup_epochs': 0, **options}``.

    Kinds and their options: onecycle (pct_start, div_factor, final_div_factor, base_momentum,
    max_momentum, cycle_momentum), poly (power), cosine (min_lr_ratio), step (step_epochs, gamma),
    plateau_halving (patience, factor, mode, min_delta), constant.
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f'lr schedule spec must be a mapping with a "name" key, got {spec!r}')
    options = dict(spec)
    warmup_epochs = options.pop('warmup_epochs', 0.0)
    if not isinstance(warmup_epochs, (int, float)) or isinstance(warmup_epochs, bool):
        raise ValueError(f'warmup_epochs must be a number, got {warmup_epochs!r}')
    policy = build_from_spec('lr schedule', _POLICIES, options)
    return LRSchedule(optimizer, policy, steps_per_epoch=steps_per_epoch, epochs=epochs,
                      warmup_epochs=warmup_epochs)
