"""The SegFast authors' network kept for timing comparisons: their layer table, and the comparison tool."""

from __future__ import annotations

import pytest
import torch

from seg_ros.models import count_parameters
from seg_ros.segfast_reference import AuthorsSegFast, main


@pytest.mark.parametrize(('separable', 'parameters'), [(True, 627_287), (False, 2_851_763)])
def test_authors_network_has_their_parameter_count_and_output_size(separable, parameters):
    # The counts the authors' models/segfast.py and segfast_basic.py give at C = 64 and 19 classes.
    model = AuthorsSegFast(19, separable=separable).eval()
    assert count_parameters(model) == parameters
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, 19, 64, 96)


def test_side_by_side_table_names_both_networks_and_the_machine(capsys):
    assert main(['--sizes', '48x32', '--rounds', '2']) == 0
    out = capsys.readouterr().out
    assert 'fp32 eager, batch 1, 2 rounds' in out and 'torch thread' in out
    for network in ('segfast', "segfast (authors' code)", 'segfast_basic', "segfast_basic (authors' code)"):
        assert f'| {network} | 48x32 |' in out
