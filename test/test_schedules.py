"""Optimisers and lr schedules: values at known steps, momentum cycling, step decay, plateau halving,
exact resume."""

from __future__ import annotations

import io
import math

import pytest
import torch

from seg_ros.training.schedules import build_optimizer, build_scheduler

SGD = {'name': 'sgd', 'lr': 0.1, 'momentum': 0.9, 'nesterov': True, 'weight_decay': 1e-4}
ADAM = {'name': 'adam', 'lr': 0.1, 'betas': [0.9, 0.999]}


def make(opt_spec=SGD, schedule=None, steps_per_epoch=10, epochs=5, groups=False):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    params = ([{'params': model[0].parameters()}, {'params': model[1].parameters(), 'lr': 0.01}]
              if groups else model.parameters())
    optimizer = build_optimizer(params, opt_spec)
    scheduler = build_scheduler(optimizer, schedule or {'name': 'constant'}, steps_per_epoch=steps_per_epoch,
                                epochs=epochs)
    return model, optimizer, scheduler


def run_steps(scheduler, optimizer, steps):
    """lr, momentum (or beta1) of group 0 at each of ``steps`` steps, stepping after each."""
    values = []
    for _ in range(steps):
        group = optimizer.param_groups[0]
        values.append((group['lr'], group['betas'][0] if 'betas' in group else group['momentum']))
        scheduler.step_batch()
    return values


# ---------------------------------------------------------------- optimisers

def test_build_optimizer_kinds_and_options():
    model = torch.nn.Linear(2, 2)
    sgd = build_optimizer(model.parameters(), SGD)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults['nesterov'] and sgd.defaults['momentum'] == 0.9
    assert sgd.defaults['weight_decay'] == 1e-4
    adam = build_optimizer(model.parameters(), ADAM)
    assert isinstance(adam, torch.optim.Adam) and adam.defaults['betas'] == (0.9, 0.999)
    adamw = build_optimizer(model.parameters(), {'name': 'adamw', 'lr': 1e-3, 'betas': (0.8, 0.99)})
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults['weight_decay'] == 1e-2
    assert adamw.defaults['betas'] == (0.8, 0.99)


def test_numbers_written_as_yaml_strings_are_read():
    # PyYAML loads 1e-4 (no decimal point) as a string.
    optimizer = build_optimizer(torch.nn.Linear(2, 2).parameters(),
                                {'name': 'sgd', 'lr': '1e-2', 'weight_decay': '1e-4'})
    assert optimizer.defaults['lr'] == 0.01 and optimizer.defaults['weight_decay'] == 1e-4
    scheduler = build_scheduler(optimizer, {'name': 'onecycle', 'final_div_factor': '1e4'},
                                steps_per_epoch=10, epochs=2)
    for _ in range(20):
        scheduler.step_batch()
    assert scheduler.current_lr() == pytest.approx(0.01 / 25 / 1e4)


@pytest.mark.parametrize('spec, message', [
    ({'name': 'sgd', 'lr': 'fast'}, "optimizer 'sgd': lr must be a number, got 'fast'"),
    ({'name': 'rmsprop', 'lr': 0.1}, "unknown optimizer 'rmsprop'; available: adam, adamw, sgd"),
    ({'name': 'sgd'}, "optimizer 'sgd' needs lr"),
    ({'name': 'sgd', 'lr': 0.1, 'betas': (0.9, 0.99)},
     "optimizer 'sgd' does not take betas; it takes: lr, momentum, nesterov, weight_decay"),
    ({'name': 'adam', 'lr': 0.1, 'momentum': 0.9}, "optimizer 'adam' does not take momentum"),
    ({'lr': 0.1}, 'optimizer spec must be a mapping with a "name" key'),
])
def test_build_optimizer_rejects_bad_specs(spec, message):
    with pytest.raises(ValueError) as error:
        build_optimizer(torch.nn.Linear(2, 2).parameters(), spec)
    assert message in str(error.value)


# ---------------------------------------------------------------- per-step schedules

def cos_anneal(start, end, progress):
    return end + (start - end) * (1 + math.cos(math.pi * progress)) / 2


@pytest.mark.parametrize('opt_spec', [SGD, ADAM], ids=['sgd', 'adam'])
def test_onecycle_follows_the_formula_and_torch(opt_spec):
    total = 50
    _, optimizer, scheduler = make(opt_spec, {'name': 'onecycle'}, steps_per_epoch=10, epochs=5)
    values = run_steps(scheduler, optimizer, total)
    # Smith's 1cycle with fastai / torch defaults: peak at pct_start * T - 1 = 14.
    peak = 0.3 * total - 1
    assert values[0] == pytest.approx((0.1 / 25, 0.95))
    assert values[14] == pytest.approx((0.1, 0.85))
    assert values[7] == pytest.approx((cos_anneal(0.1 / 25, 0.1, 7 / peak), cos_anneal(0.95, 0.85, 7 / peak)))
    progress = (30 - peak) / (total - 1 - peak)
    assert values[30] == pytest.approx((cos_anneal(0.1, 0.1 / 25 / 1e4, progress),
                                        cos_anneal(0.85, 0.95, progress)))
    assert values[-1] == pytest.approx((0.1 / 25 / 1e4, 0.95))
    lrs = [lr for lr, _ in values]
    assert lrs.index(max(lrs)) == 14

    # The same values as torch's OneCycleLR (an independent implementation of the same policy).
    reference = build_optimizer(torch.nn.Linear(3, 4).parameters(), opt_spec)
    torch_schedule = torch.optim.lr_scheduler.OneCycleLR(reference, max_lr=0.1, total_steps=total)
    for step, (lr, momentum) in enumerate(values):
        group = reference.param_groups[0]
        assert lr == pytest.approx(group['lr'], rel=1e-12), step
        expected_momentum = group['betas'][0] if 'betas' in group else group['momentum']
        assert momentum == pytest.approx(expected_momentum, rel=1e-12)
        if step < total - 1:
            reference.step()
            torch_schedule.step()


def test_onecycle_options_and_parameter_groups():
    schedule = {'name': 'onecycle', 'pct_start': 0.5, 'div_factor': 10, 'final_div_factor': 100,
                'base_momentum': 0.8, 'max_momentum': 0.9}
    _, optimizer, scheduler = make(SGD, schedule, steps_per_epoch=11, epochs=2, groups=True)
    assert [g['lr'] for g in optimizer.param_groups] == pytest.approx([0.01, 0.001])
    assert optimizer.param_groups[1]['momentum'] == pytest.approx(0.9)
    values = run_steps(scheduler, optimizer, 22)
    assert values[10] == pytest.approx((0.1, 0.8))  # peak at 0.5 * 22 - 1
    assert values[21] == pytest.approx((0.1 / 10 / 100, 0.9))
    assert optimizer.param_groups[1]['lr'] == pytest.approx(0.01 / 10 / 100)
    _, optimizer, scheduler = make(SGD, {'name': 'onecycle', 'cycle_momentum': False})
    run_steps(scheduler, optimizer, 20)
    assert optimizer.param_groups[0]['momentum'] == 0.9


def test_poly_cosine_and_constant_values():
    total = 40
    _, optimizer, scheduler = make(SGD, {'name': 'poly'}, steps_per_epoch=8, epochs=5)
    lrs = [lr for lr, _ in run_steps(scheduler, optimizer, total)]
    assert lrs == pytest.approx([0.1 * (1 - t / total) ** 0.9 for t in range(total)])
    assert optimizer.param_groups[0]['momentum'] == 0.9  # only onecycle touches momentum

    _, optimizer, scheduler = make(SGD, {'name': 'poly', 'power': 2.0}, steps_per_epoch=8, epochs=5)
    assert [lr for lr, _ in run_steps(scheduler, optimizer, 3)] == pytest.approx(
        [0.1 * (1 - t / total) ** 2 for t in range(3)])

    _, optimizer, scheduler = make(SGD, {'name': 'cosine', 'min_lr_ratio': 0.1}, steps_per_epoch=8, epochs=5)
    lrs = [lr for lr, _ in run_steps(scheduler, optimizer, total)]
    assert lrs[0] == pytest.approx(0.1) and lrs[20] == pytest.approx(0.1 * (1 + 0.1) / 2)
    assert lrs == pytest.approx([0.01 + 0.09 * (1 + math.cos(math.pi * t / total)) / 2 for t in range(total)])
    scheduler.step_batch()
    assert scheduler.current_lr() == pytest.approx(0.01)  # the end holds, also past it

    _, optimizer, scheduler = make(SGD, {'name': 'constant'})
    assert {lr for lr, _ in run_steps(scheduler, optimizer, 60)} == {0.1}


def test_linear_warmup_then_the_schedule_over_the_remaining_steps():
    _, optimizer, scheduler = make(SGD, {'name': 'poly', 'warmup_epochs': 0.5}, steps_per_epoch=8, epochs=5)
    lrs = [lr for lr, _ in run_steps(scheduler, optimizer, 40)]
    warmup, main = 4, 36
    assert lrs[:warmup] == pytest.approx([0.1 * (t + 1) / (warmup + 1) for t in range(warmup)])
    assert lrs[warmup:] == pytest.approx([0.1 * (1 - t / main) ** 0.9 for t in range(main)])

    _, optimizer, scheduler = make(ADAM, {'name': 'onecycle', 'warmup_epochs': 1})
    values = run_steps(scheduler, optimizer, 50)
    assert values[0] == pytest.approx((0.1 / 25 / 11, 0.95))
    assert values[10] == pytest.approx((0.1 / 25, 0.95))  # the cycle starts after the warm-up
    assert max(lr for lr, _ in values) == pytest.approx(0.1)


# ---------------------------------------------------------------- step decay

def test_step_decay_multiplies_the_lr_by_gamma_every_step_epochs():
    _, optimizer, scheduler = make(ADAM, {'name': 'step', 'step_epochs': 3, 'gamma': 0.5}, steps_per_epoch=4,
                                   epochs=10, groups=True)
    for epoch in range(10):
        lrs = [lr for lr, _ in run_steps(scheduler, optimizer, 4)]
        assert lrs == pytest.approx([0.1 * 0.5 ** (epoch // 3)] * 4), epoch  # constant within an epoch
        assert optimizer.param_groups[1]['lr'] == pytest.approx(0.01 * 0.5 ** (epoch // 3))
        scheduler.step_epoch(0.5 - epoch / 100)  # the metric plays no part
    assert scheduler.current_lr() == pytest.approx(0.1 * 0.5 ** 3)
    assert optimizer.param_groups[0]['betas'] == (0.9, 0.999)

    _, optimizer, scheduler = make(SGD, {'name': 'step', 'step_epochs': 1, 'warmup_epochs': 1}, steps_per_epoch=4)
    assert [lr for lr, _ in run_steps(scheduler, optimizer, 4)] == pytest.approx([0.02, 0.04, 0.06, 0.08])
    scheduler.step_epoch()
    assert scheduler.current_lr() == pytest.approx(0.1 * 0.1)  # torch StepLR's default gamma, 0.1


# ---------------------------------------------------------------- plateau halving

def test_plateau_halving_halves_after_patience_epochs_without_improvement():
    _, optimizer, scheduler = make(ADAM, {'name': 'plateau_halving', 'patience': 2})
    lrs = []
    for miou in [0.30, 0.40, 0.40, 0.39, 0.41, 0.41, None, 0.40, 0.45, float('nan'), 0.44, 0.44, 0.44]:
        scheduler.step_epoch(miou)
        lrs.append(scheduler.current_lr())
    # Stalls at epochs 3-4 -> halve; 0.41 improves; 6-8 (None skipped) -> halve; nan counts as a stall.
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025, 0.0125, 0.0125,
                                 0.00625])
    assert optimizer.param_groups[0]['betas'] == (0.9, 0.999)  # momentum is left alone
    assert scheduler.epoch == 13


def test_plateau_halving_min_mode_min_delta_and_per_step_warmup():
    _, optimizer, scheduler = make(SGD, {'name': 'plateau_halving', 'patience': 1, 'mode': 'min',
                                         'min_delta': 0.01, 'warmup_epochs': 1}, steps_per_epoch=4)
    assert [lr for lr, _ in run_steps(scheduler, optimizer, 4)] == pytest.approx([0.02, 0.04, 0.06, 0.08])
    assert scheduler.current_lr() == pytest.approx(0.1)
    scheduler.step_epoch(1.0)
    scheduler.step_epoch(0.995)  # better, but not by more than min_delta
    assert scheduler.current_lr() == pytest.approx(0.05)
    scheduler.step_epoch(0.9)
    assert scheduler.current_lr() == pytest.approx(0.05)


# ---------------------------------------------------------------- resume

@pytest.mark.parametrize('schedule', [
    {'name': 'onecycle', 'warmup_epochs': 0.5},
    {'name': 'poly'},
    {'name': 'cosine'},
    {'name': 'plateau_halving', 'patience': 1},
    {'name': 'step', 'step_epochs': 2, 'gamma': 0.5},
    {'name': 'constant', 'warmup_epochs': 2},
])
def test_state_dict_round_trip_resumes_identically(schedule):
    metrics = [0.3, 0.35, 0.34, 0.36, 0.36, 0.37]

    def train(model, optimizer, scheduler, epochs, start=0):
        trace = []
        for epoch in range(start, start + epochs):
            for _ in range(10):
                optimizer.zero_grad()
                model(torch.ones(2, 3)).square().sum().backward()
                optimizer.step()
                scheduler.step_batch()
                trace.append((optimizer.param_groups[0]['lr'], optimizer.param_groups[1]['momentum']))
            scheduler.step_epoch(metrics[epoch])
        return trace

    model, optimizer, scheduler = make(SGD, schedule, steps_per_epoch=10, epochs=6, groups=True)
    uninterrupted = train(model, optimizer, scheduler, 6)
    final_weights = [p.detach().clone() for p in model.parameters()]

    model, optimizer, scheduler = make(SGD, schedule, steps_per_epoch=10, epochs=6, groups=True)
    first_half = train(model, optimizer, scheduler, 3)
    buffer = io.BytesIO()
    torch.save({'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
                'scheduler': scheduler.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # checkpoints load weights-only

    model, optimizer, scheduler = make(SGD, schedule, steps_per_epoch=10, epochs=6, groups=True)
    model.load_state_dict(saved['model'])
    optimizer.load_state_dict(saved['optimizer'])
    scheduler.load_state_dict(saved['scheduler'])
    second_half = train(model, optimizer, scheduler, 3, start=3)
    assert first_half + second_half == uninterrupted
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), final_weights, strict=True))
    assert scheduler.epoch == 6 and scheduler.state_dict()['step_count'] == 60


def test_load_state_dict_rejects_a_different_schedule():
    _, _, scheduler = make(SGD, {'name': 'poly'}, steps_per_epoch=10, epochs=5)
    _, _, other = make(SGD, {'name': 'poly'}, steps_per_epoch=10, epochs=6)
    with pytest.raises(ValueError, match='total_steps: saved 50, now 60'):
        other.load_state_dict(scheduler.state_dict())
    _, _, cosine = make(SGD, {'name': 'cosine'}, steps_per_epoch=10, epochs=5)
    with pytest.raises(ValueError, match="policy: saved 'poly', now 'cosine'"):
        cosine.load_state_dict(scheduler.state_dict())


@pytest.mark.parametrize('schedule, message', [
    ({'name': 'exponential'},
     "unknown lr schedule 'exponential'; available: constant, cosine, onecycle, plateau_halving, poly, step"),
    ({'name': 'step'}, "lr schedule 'step' needs step_epochs"),
    ({'name': 'step', 'step_epochs': 0}, 'step_epochs must be a positive integer, got 0'),
    ({'name': 'step', 'step_epochs': 10, 'gamma': 2}, 'gamma must be in (0, 1), got 2'),
    ({'name': 'poly', 'gamma': 0.9}, "lr schedule 'poly' does not take gamma; it takes: power"),
    ({'name': 'onecycle', 'max_lr': 1.0}, "lr schedule 'onecycle' does not take max_lr"),
    ({'name': 'poly', 'warmup_epochs': 5}, 'warmup_epochs must be in [0, epochs=5)'),
    ({'name': 'onecycle', 'pct_start': 0.02}, 'onecycle needs pct_start * steps > 1'),
    ({'name': 'onecycle', 'pct_start': 1.0}, 'pct_start must be in (0, 1)'),
    ({'name': 'plateau_halving', 'mode': 'up'}, "mode must be 'max' or 'min'"),
    ({'name': 'plateau_halving', 'patience': 0}, 'patience must be a positive integer'),
    ({'name': 'cosine', 'min_lr_ratio': 2}, 'min_lr_ratio must be in [0, 1]'),
    ('poly', 'lr schedule spec must be a mapping'),
])
def test_build_scheduler_rejects_bad_specs(schedule, message):
    optimizer = build_optimizer(torch.nn.Linear(2, 2).parameters(), SGD)
    with pytest.raises(ValueError) as error:
        build_scheduler(optimizer, schedule, steps_per_epoch=10, epochs=5)
    assert message in str(error.value)
    with pytest.raises(ValueError, match='steps_per_epoch must be a positive integer'):
        build_scheduler(optimizer, {'name': 'poly'}, steps_per_epoch=0, epochs=5)
