"""Every registered network: any input size, deterministic eval, gradients, registry errors, sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seg_ros.models import build_model, count_parameters, get_model_builder, list_models, register_model

NUM_CLASSES = 11

# The project's networks (test helpers register others, from outside seg_ros.models).
NETWORKS = [name for name in list_models()
            if get_model_builder(name).__module__.startswith('seg_ros.models.')]

# Exact trainable parameters, {num_classes: count}, measured with count_parameters; the papers' figures
# are in PAPER_COUNTS. A network without its exact counts here fails test_parameter_count_is_pinned.
PINNED_COUNTS: dict[str, dict[int, int] | None] = {
    'enet': {11: 363_791, 19: 364_311},
    'erfnet': {11: 2_065_090, 19: 2_066_642},  # includes the 1x1 encoder-stage classifier (2,451 at 19)
    'dsnet': {11: 909_961, 19: 910_473},  # without the training-only context head (+6,643 at 19)
    'segfast': {11: 606_603, 19: 607_123},
    'segfast_basic': {11: 2_969_611, 19: 2_970_131},
}

# (parameters, num_classes) as the papers print them.
PAPER_COUNTS: dict[str, tuple[int, int]] = {
    'enet': (370_000, 19),  # ENet paper, Table 3: 0.37 M (DSNet paper, Table 1: 0.36 M)
    'erfnet': (2_060_000, 19),  # 2.06 M for Cityscapes' 19 classes (DSNet paper, Table 1: 2.1 M)
    'dsnet': (910_000, 19),  # DSNet paper, Table 1: 0.91 M
    'segfast': (603_288, 19),  # SegFast paper, Table 5 (its class count is not stated)
    'segfast_basic': (2_965_976, 19),  # SegFast paper, Table 5 (its class count is not stated)
}
PAPER_TOLERANCE = 0.02


@pytest.fixture(scope='module')
def eval_models() -> dict[str, torch.nn.Module]:
    return {name: build_model(name, num_classes=NUM_CLASSES).eval() for name in NETWORKS}


def test_every_project_network_is_registered_and_pinned():
    assert sorted(NETWORKS) == sorted(PINNED_COUNTS)


@pytest.mark.parametrize('name', NETWORKS)
@pytest.mark.parametrize(('batch', 'height', 'width'), [(1, 360, 480), (1, 375, 1242), (2, 101, 203)])
def test_logits_have_the_input_size(eval_models, name, batch, height, width):
    with torch.no_grad():
        logits = eval_models[name](torch.randn(batch, 3, height, width))
    assert logits.shape == (batch, NUM_CLASSES, height, width)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize('name', NETWORKS)
def test_eval_mode_is_deterministic(eval_models, name):
    x = torch.randn(1, 3, 45, 70)
    with torch.no_grad():
        first = eval_models[name](x)
        second = eval_models[name](x.clone())
    assert torch.equal(first, second)


@pytest.mark.parametrize('name', NETWORKS)
def test_gradients_flow_in_train_mode(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=NUM_CLASSES).train()
    x = torch.randn(2, 3, 64, 96, requires_grad=True)
    target = torch.randint(0, NUM_CLASSES, (2, 64, 96))
    F.cross_entropy(model(x), target).backward()

    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    first_layer = next(model.parameters())
    assert first_layer.grad is not None and first_layer.grad.abs().sum() > 0
    parameters = dict(model.named_parameters())
    assert all(torch.isfinite(p.grad).all() for p in parameters.values() if p.grad is not None)
    # Only training-path heads (ERFNet's encoder classifier, ...) may sit out a plain forward.
    idle = [n for n, p in parameters.items() if p.grad is None]
    idle_share = sum(parameters[n].numel() for n in idle) / count_parameters(model)
    assert idle_share < 0.01, f'{name}: no gradient reaches {idle}'


@pytest.mark.parametrize('name', NETWORKS)
def test_unknown_option_is_rejected_by_name(name):
    with pytest.raises(ValueError, match=f'{name!r} does not take option.*no_such_option'):
        build_model(name, num_classes=NUM_CLASSES, no_such_option=True)


@pytest.mark.parametrize('num_classes', [0, -3, 2.5, True, '11', None])
def test_bad_num_classes_is_rejected(num_classes):
    with pytest.raises(ValueError, match='num_classes must be a positive integer'):
        build_model(NETWORKS[0], num_classes=num_classes)


def test_unknown_network_lists_the_known_ones():
    with pytest.raises(KeyError, match='unknown model .*enet'):
        build_model('no_such_net', num_classes=NUM_CLASSES)


def test_registry_rejects_a_duplicate_name():
    original = get_model_builder('enet')
    with pytest.raises(ValueError, match="'enet' is already registered"):
        register_model('enet')(lambda *, num_classes: None)
    assert get_model_builder('enet') is original


@pytest.mark.parametrize('name', NETWORKS)
def test_input_without_batch_dimension_is_explained(eval_models, name):
    with pytest.raises(ValueError, match='unsqueeze'):
        eval_models[name](torch.zeros(3, 32, 32))


@pytest.mark.parametrize('name', NETWORKS)
def test_parameter_count_is_pinned(name):
    pinned = PINNED_COUNTS.get(name)
    assert pinned, f'pin the exact parameter counts of {name!r} in PINNED_COUNTS'
    measured = {classes: count_parameters(build_model(name, num_classes=classes)) for classes in pinned}
    assert measured == pinned


@pytest.mark.parametrize('name', NETWORKS)
def test_parameter_count_is_the_papers(name):
    figure, classes = PAPER_COUNTS[name]
    measured = count_parameters(build_model(name, num_classes=classes))
    assert abs(measured - figure) <= PAPER_TOLERANCE * figure, f'{name}: {measured:,} vs paper {figure:,}'
