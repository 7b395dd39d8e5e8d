"""ENet and ERFNet: the papers' layer tables, unpooling, the encoder-only stage and ONNX export."""

from __future__ import annotations

import io

import numpy as np
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seg_ros.models import build_model
from seg_ros.models.enet import (
    DownsamplingBottleneck,
    InitialBlock,
    RegularBottleneck,
    UpsamplingBottleneck,
    max_pool2x2_with_indices,
    max_unpool2x2,
)
from seg_ros.models.erfnet import DownsamplerBlock, NonBottleneck1d, UpsamplerBlock

from .support import output_shapes, randomise_batchnorm

NUM_CLASSES = 11




def main_convolution(block: RegularBottleneck) -> list[tuple]:
    """(kernel, dilation) of the convolutions between a bottleneck's projection and its expansion."""
    convs = [m for m in block.branch if isinstance(m, nn.Conv2d)][1:-1]
    return [(conv.kernel_size, conv.dilation) for conv in convs]


def dilated(rate: int) -> list[tuple]:
    return [((3, 3), (rate, rate))]


def test_max_unpool_matches_torch_and_routes_gradients():
    x = torch.randn(2, 5, 8, 12)
    pooled, indices = F.max_pool2d(x, 2, stride=2, return_indices=True)
    pooled.requires_grad_(True)
    unpooled = max_unpool2x2(pooled, indices)
    assert torch.equal(unpooled, F.max_unpool2d(pooled, indices, 2))

    weights = torch.randn_like(unpooled)
    (unpooled * weights).sum().backward()
    expected = weights.flatten(2).gather(2, indices.flatten(2)).view_as(pooled)
    assert torch.equal(pooled.grad, expected)


def test_traced_pooling_indices_match_torch_with_ties():
    # Ties in every window position (post-ReLU zeros, repeated values): the first maximum in row
    # order, as PyTorch's kernel takes it, whether computed eagerly or by the traced comparisons.
    x = torch.randint(0, 3, (2, 4, 10, 14)).float()
    traced = torch.jit.trace(max_pool2x2_with_indices, (torch.randn(1, 2, 6, 8),))
    expected = F.max_pool2d(x, 2, stride=2, return_indices=True)
    for got in (traced(x), max_pool2x2_with_indices(x)):
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_enet_follows_table_1():
    model = build_model('enet', num_classes=NUM_CLASSES).eval()
    stages = [model.initial, model.down1, model.stage1, model.down2, model.stage23,
              model.up4, model.stage4, model.up5, model.stage5, model.fullconv]
    shapes = output_shapes(model, stages, torch.randn(1, 3, 64, 96))
    assert shapes == [(16, 32, 48), (64, 16, 24), (64, 16, 24), (128, 8, 12), (128, 8, 12),
                      (64, 16, 24), (64, 16, 24), (16, 32, 48), (16, 32, 48), (NUM_CLASSES, 64, 96)]

    assert isinstance(model.initial, InitialBlock) and model.initial.conv.out_channels == 13
    assert [type(m) for m in (model.down1, model.down2, model.up4, model.up5)] == [
        DownsamplingBottleneck, DownsamplingBottleneck, UpsamplingBottleneck, UpsamplingBottleneck]
    assert len(model.stage1) == 4 and len(model.stage23) == 16 and len(model.stage4) == 2
    assert all(isinstance(m, RegularBottleneck) for m in [*model.stage1, *model.stage23, *model.stage4])

    # Stages 2 and 3 (Table 1): regular, dilated 2, asymmetric 5, dilated 4, regular, dilated 8,
    # asymmetric 5, dilated 16.
    regular, asymmetric = [((3, 3), (1, 1))], [((1, 5), (1, 1)), ((5, 1), (1, 1))]
    one_pass = [regular, dilated(2), asymmetric, dilated(4), regular, dilated(8), asymmetric, dilated(16)]
    assert [main_convolution(block) for block in model.stage23] == one_pass * 2


def test_enet_dropout_and_activations():
    model = build_model('enet', num_classes=NUM_CLASSES)

    def dropout(block: nn.Module) -> float:
        return next(m.p for m in block.modules() if isinstance(m, nn.Dropout2d))

    assert [dropout(b) for b in (model.down1, *model.stage1)] == [0.01] * 5
    assert [dropout(b) for b in (model.down2, *model.stage23)] == [0.1] * 17
    assert [dropout(b) for b in (*model.stage4, model.stage5)] == [0.0] * 3

    encoder = [model.initial, model.down1, model.stage1, model.down2, model.stage23]
    decoder = [model.up4, model.stage4, model.up5, model.stage5]
    assert not any(isinstance(m, nn.ReLU) for part in encoder for m in part.modules())
    assert any(isinstance(m, nn.PReLU) for part in encoder for m in part.modules())
    assert not any(isinstance(m, nn.PReLU) for part in decoder for m in part.modules())


@pytest.mark.filterwarnings('ignore::DeprecationWarning', 'ignore::torch.jit.TracerWarning',
                            'ignore:Constant folding:UserWarning')
def test_enet_exports_to_onnx_with_dynamic_height_and_width():
    torch.manual_seed(0)
    model = randomise_batchnorm(build_model('enet', num_classes=NUM_CLASSES)).eval()
    onnx_file = io.BytesIO()
    # The dynamo exporter needs onnxscript; the TorchScript exporter handles MaxPool indices and the
    # scatter-based unpooling with symbolic sizes.
    torch.onnx.export(model, (torch.randn(1, 3, 64, 96),), onnx_file, dynamo=False, opset_version=17,
                      input_names=['image'], output_names=['logits'],
                      dynamic_axes={'image': {0: 'batch', 2: 'height', 3: 'width'},
                                    'logits': {0: 'batch', 2: 'height', 3: 'width'}})
    session = onnxruntime.InferenceSession(onnx_file.getvalue(), providers=['CPUExecutionProvider'])

    for shape in [(1, 3, 120, 160), (2, 3, 96, 200)]:
        image = torch.randn(shape)
        with torch.no_grad():
            expected = model(image).numpy()
        (logits,) = session.run(None, {'image': image.numpy()})
        assert logits.shape == (shape[0], NUM_CLASSES, *shape[2:])
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_erfnet_follows_table_1():
    model = build_model('erfnet', num_classes=NUM_CLASSES).eval()
    layers = [*model.encoder, *model.decoder]
    assert len(layers) == 23
    shapes = output_shapes(model, layers, torch.randn(1, 3, 64, 128))
    # Table I at 1024x512 scaled to 128x64: (out-F, out-Res) of layers 1-23.
    table = [(16, 2), (64, 4), *[(64, 4)] * 5, (128, 8), *[(128, 8)] * 8,
             (64, 4), (64, 4), (64, 4), (16, 2), (16, 2), (16, 2), (NUM_CLASSES, 1)]
    assert shapes == [(channels, 64 // factor, 128 // factor) for channels, factor in table]

    kinds = [type(layer) for layer in layers]
    assert [i + 1 for i, kind in enumerate(kinds) if kind is DownsamplerBlock] == [1, 2, 8]
    assert [i + 1 for i, kind in enumerate(kinds) if kind is UpsamplerBlock] == [17, 20]
    assert isinstance(layers[-1], nn.ConvTranspose2d) and layers[-1].kernel_size == (2, 2)


def test_erfnet_dilations_and_dropout_follow_the_reference():
    model = build_model('erfnet', num_classes=NUM_CLASSES)
    blocks = [m for m in model.encoder if isinstance(m, NonBottleneck1d)]
    assert [b.conv3x1_2.dilation[0] for b in blocks] == [1] * 5 + [2, 4, 8, 16] * 2
    assert [b.conv1x3_2.dilation[1] for b in blocks] == [1] * 5 + [2, 4, 8, 16] * 2
    assert [b.dropout.p for b in blocks] == [0.03] * 5 + [0.3] * 8
    assert [m.dropout.p for m in model.decoder if isinstance(m, NonBottleneck1d)] == [0.0] * 4


def test_erfnet_encoder_only_gives_encoder_logits_at_one_eighth():
    torch.manual_seed(0)
    model = randomise_batchnorm(build_model('erfnet', num_classes=NUM_CLASSES)).eval()
    x = torch.randn(2, 3, 101, 203)
    with torch.no_grad():
        coarse = model(x, encoder_only=True)
        reference = model.encoder_classifier(model.encoder(F.pad(x, (0, 5, 0, 3))))
        full = model(x)
    assert coarse.shape == (2, NUM_CLASSES, 13, 26)
    assert torch.equal(coarse, reference[..., :13, :26])
    assert full.shape == (2, NUM_CLASSES, 101, 203)


def test_erfnet_encoder_stage_trains_the_encoder_only():
    model = build_model('erfnet', num_classes=NUM_CLASSES).train()
    coarse = model(torch.randn(2, 3, 64, 64), encoder_only=True)
    F.cross_entropy(coarse, torch.randint(0, NUM_CLASSES, (2, 8, 8))).backward()
    assert all(p.grad is not None for p in model.encoder_classifier.parameters())
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert all(p.grad is None for p in model.decoder.parameters())
