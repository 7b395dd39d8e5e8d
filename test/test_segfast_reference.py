"""The SegFast authors' network kept for timing comparisons: their layer table, and the comparison tool."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from seg_ros.bench.segfast_reference import AuthorsSegFast, AuthorsStyleSegFast, main
from seg_ros.models import build_model, count_parameters


@pytest.mark.parametrize(('separable', 'parameters'), [(True, 627_287), (False, 2_851_763)])
def test_authors_network_has_their_parameter_count_and_output_size(separable, parameters):
    # The counts the authors' models/segfast.py and segfast_basic.py give at C = 64 and 19 classes.
    model = AuthorsSegFast(19, separable=separable).eval()
    assert count_parameters(model) == parameters
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, 19, 64, 96)


@pytest.mark.parametrize('name', ['segfast', 'segfast_basic'])
def test_our_table_in_the_authors_layers_has_our_convolutions(name):
    def convolutions(model: nn.Module) -> list[tuple]:
        return sorted((isinstance(m, nn.ConvTranspose2d), m.in_channels, m.out_channels, m.kernel_size, m.stride,
                       m.groups) for m in model.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d))

    theirs = AuthorsStyleSegFast(11, separable=name == 'segfast').eval()
    assert convolutions(theirs) == convolutions(build_model(name, num_classes=11))
    with torch.no_grad():
        assert theirs(torch.randn(1, 3, 45, 70)).shape == (1, 11, 45, 70)


def test_side_by_side_table_names_the_networks_and_the_machine(capsys):
    assert main(['--sizes', '48x32', '--rounds', '2']) == 0
    out = capsys.readouterr().out
    assert 'fp32 eager, batch 1, 2 rounds' in out and 'torch thread' in out
    for ours in ('segfast', 'segfast_basic'):
        for network in (ours, f"{ours} table, authors' layers", f"authors' {ours} (their table)"):
            assert f'| {network} | 48x32 |' in out
