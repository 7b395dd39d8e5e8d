"""seg-export: every network exports to ONNX with dynamic sizes and matches PyTorch in ONNX Runtime."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from seg_ros.inference.cli import main
from seg_ros.inference.onnx import ExportCheck, OpenVinoForward, export_onnx, verify_onnx
from seg_ros.inference.preparation import prepare_model
from seg_ros.labels import CAMVID11
from seg_ros.models import build_model, get_model_builder, list_models
from seg_ros.vocabulary import format_size, parse_size

from .support import CHANNEL_LABELS, CHANNEL_NET, channel_checkpoint

NETWORKS = [name for name in list_models()
            if get_model_builder(name).__module__.startswith('seg_ros.models.')]


def trained_like(name: str) -> torch.nn.Module:
    """``name`` with non-trivial batch-norm statistics (as after training), in eval mode."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=CAMVID11.num_classes).train()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 48) * 2 + 0.5)
    return model.eval()


@pytest.mark.parametrize('name', NETWORKS)
def test_every_network_exports_and_matches_pytorch_at_any_size(name):
    model = prepare_model(trained_like(name), example_size=(32, 48))
    onnx_model = export_onnx(model, example_size=(32, 48))
    # Traced at 48x32; checked at odd sizes (the padding and cropping are computed in the graph)
    # and another batch size.
    checks = verify_onnx(onnx_model, model, [(101, 203)])
    checks += verify_onnx(onnx_model, model, [(37, 53)], batch=2)
    for check in checks:
        assert check.passed(), f'{name} at {check.size}: {check}'
        assert check.argmax_agreement > 0.999 and check.max_abs_logit > 0
    # OpenVINO runs the same graph (ENet's pooling indices as comparisons, see enet.py).
    x = torch.randn(2, 3, 37, 53)
    with torch.inference_mode():
        torch.testing.assert_close(OpenVinoForward(onnx_model)(x), model(x), atol=1e-4, rtol=1e-3)


def test_export_refuses_what_it_cannot_trace_faithfully():
    model = build_model('enet', num_classes=3)
    with pytest.raises(ValueError, match='eval mode'):
        export_onnx(model.train())
    with pytest.raises(ValueError, match='float32 CPU model.*torch.float16'):
        export_onnx(model.eval().half())


def test_a_check_tolerates_a_few_moved_values_not_a_different_graph():
    model = trained_like('enet')
    onnx_model = export_onnx(model)
    (check,) = verify_onnx(onnx_model, model, [(40, 56)])
    assert check.passed() and check.changed_share <= 1e-3
    # The same graph judged against another network: most logits differ.
    (wrong,) = verify_onnx(onnx_model, build_model('enet', num_classes=CAMVID11.num_classes).eval(), [(40, 56)])
    assert not wrong.passed() and wrong.changed_share > 0.5
    # The tolerance is relative to the largest logit (and at least absolute).
    (loose,) = verify_onnx(onnx_model, model, [(40, 56)], tolerance=10.0)
    assert loose.changed_share == 0.0
    assert ExportCheck((8, 8), 1.0, 80.0, changed_share=0.0005, argmax_agreement=1.0).passed()


def test_resolutions_are_width_by_height():
    assert parse_size('640x360') == (360, 640)
    assert format_size((360, 640)) == '640x360'
    for bad in ('640', '640x', 'axb', '0x360'):
        with pytest.raises(ValueError, match='size'):
            parse_size(bad)


def test_command_line_exports_a_checkpoint_with_its_metadata(tmp_path, capsys):
    path = channel_checkpoint(tmp_path / 'rgb.pt', input_size=(48, 64))
    out = tmp_path / 'onnx'
    assert main(['--checkpoint', str(path), '--out', str(out), '--check-sizes', '64x48', '203x101']) == 0
    table = capsys.readouterr().out
    assert table.count('| ok |') == 2 and '203x101' in table and 'MISMATCH' not in table
    proto = onnx.load(out / 'rgb.onnx')
    props = {p.key: p.value for p in proto.metadata_props}
    assert props['model'] == CHANNEL_NET and json.loads(props['input_size']) == [48, 64]
    assert json.loads(props['labels'])['names'] == list(CHANNEL_LABELS.names)
    graph_input = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in graph_input] == ['batch', 3, 'height', 'width']


def test_command_line_errors(tmp_path, capsys):
    assert main(['--checkpoint', str(tmp_path / 'missing.pt')]) == 2
    assert 'missing.pt' in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(['--model', 'enet', '--check-sizes', '640'])
    assert exit_info.value.code == 2
    assert 'not WIDTHxHEIGHT' in capsys.readouterr().err
