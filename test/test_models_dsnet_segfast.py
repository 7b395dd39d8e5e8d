"""DSNet and SegFast: the papers' layer tables, the units, the context head, sizes, counts, ONNX export."""

from __future__ import annotations

import copy
import io

import numpy as np
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seg_ros.checkpoint import load_checkpoint
from seg_ros.models import build_model, count_parameters
from seg_ros.models.dsnet import BasicUnit, ContextEncoding, DownUnit, InitUnit, UpUnit, channel_shuffle
from seg_ros.models.segfast import (
    ConvUnit,
    DecoderBlock,
    DepthwiseUpsample,
    FireModule,
    SeparableConv,
    SeparableTransposedConv,
    SparkModule,
)
from seg_ros.paths import default_checkpoint

from .support import output_shapes, randomise_batchnorm

NUM_CLASSES = 11
NETWORKS = ['dsnet', 'segfast', 'segfast_basic']




def test_dsnet_follows_table_3():
    model = build_model('dsnet', num_classes=NUM_CLASSES).eval()
    units = [model.init, model.down1, model.stage1, model.down2, model.stage2, model.stage3,
             model.up4, model.stage4, model.up5, model.stage5, model.fullconv]
    # Table 3 at 800x800 scaled to 96x64: 16 @ 1/2, 64 @ 1/4, 128 @ 1/8, back up to C @ 1.
    assert output_shapes(model, units, torch.randn(1, 3, 64, 96)) == [
        (16, 32, 48), (64, 16, 24), (64, 16, 24), (128, 8, 12), (128, 8, 12), (128, 8, 12),
        (64, 16, 24), (64, 16, 24), (16, 32, 48), (16, 32, 48), (NUM_CLASSES, 64, 96)]

    assert isinstance(model.init, InitUnit) and model.init.conv[0].out_channels == 13
    assert [type(u) for u in (model.down1, model.down2, model.up4, model.up5)] == [
        DownUnit, DownUnit, UpUnit, UpUnit]
    basic_units = [*model.stage1, *model.stage2, *model.stage3, *model.stage4, *model.stage5]
    assert all(isinstance(u, BasicUnit) for u in basic_units)
    assert [len(s) for s in (model.stage1, model.stage2, model.stage3, model.stage4, model.stage5)] == [
        4, 8, 8, 1, 1]

    def spatial_conv(unit: BasicUnit) -> nn.Conv2d:
        return unit.branch[1][0]

    # HDC: 1, 2, 5, 9 twice in stage 2; 2, 5, 9, 17 twice in stage 3; 1 elsewhere.
    assert [spatial_conv(u).dilation[0] for u in basic_units] == (
        [1] * 4 + [1, 2, 5, 9] * 2 + [2, 5, 9, 17] * 2 + [1, 1])
    # The dilated 3x3 replaces ShuffleNet V2's depth-wise one: a full convolution over the half.
    assert all(spatial_conv(u).groups == 1 and spatial_conv(u).kernel_size == (3, 3) for u in basic_units)
    assert isinstance(model.fullconv, nn.ConvTranspose2d) and model.fullconv.kernel_size == (2, 2)


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(8.0).view(1, 8, 1, 1).expand(2, 8, 3, 5)
    shuffled = channel_shuffle(x, 4)
    assert shuffled[0, :, 0, 0].tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    assert torch.equal(shuffled[:, :, 1:, 2:], shuffled[:, :, :1, :1].expand(2, 8, 2, 3))


def test_basic_unit_passes_one_half_through_and_shuffles():
    torch.manual_seed(0)
    unit = BasicUnit(16, dilation=2).eval()
    x = torch.randn(2, 16, 6, 10)
    with torch.no_grad():
        out = unit(x)
        transformed = unit.branch(x[:, 8:])
    order = channel_shuffle(torch.arange(16.0).view(1, 16, 1, 1), 4).flatten().long()
    expected = torch.cat([x[:, :8], transformed], dim=1)[:, order]
    assert torch.equal(out, expected)


def test_down_unit_indices_serve_the_up_unit():
    torch.manual_seed(0)
    down, up = DownUnit(16, 64).eval(), UpUnit(64, 16).eval()
    x = torch.randn(2, 16, 12, 20)
    with torch.no_grad():
        out, indices = down(x)
        restored = up(out, indices)
    assert out.shape == (2, 64, 6, 10)
    assert torch.equal(indices, F.max_pool2d(x, 2, stride=2, return_indices=True)[1])
    assert restored.shape == (2, 16, 12, 20) and (restored >= 0).all()


def test_context_encoding_matches_equation_6():
    torch.manual_seed(0)
    head = ContextEncoding(8, num_classes=5, num_codewords=6)
    with torch.no_grad():
        head.smoothing.uniform_(0.5, 2.0)
        head.codewords.normal_()
    head.norm.eval()
    randomise_batchnorm(head)
    x = torch.randn(3, 8, 4, 7)

    # Eq. 6 written out: residuals r_ik = x_i - d_k, soft assignment over k, sum over i.
    features = x.flatten(2).transpose(1, 2)  # (N, HW, C)
    residuals = features.unsqueeze(2) - head.codewords  # (N, HW, K, C)
    weights = torch.softmax(-head.smoothing * residuals.pow(2).sum(3), dim=2)
    encoded = (weights.unsqueeze(3) * residuals).sum(1)  # (N, K, C)
    expected = head.fc(F.relu(head.norm(encoded)).sum(1))
    with torch.no_grad():
        assert torch.allclose(head(x), expected, rtol=1e-4, atol=1e-4)


def test_dsnet_context_head_gives_presence_logits_only_when_asked():
    torch.manual_seed(0)
    model = build_model('dsnet', num_classes=NUM_CLASSES, context_head=True).train()
    assert isinstance(model.context, ContextEncoding)
    calls = []
    model.context.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape))

    x = torch.randn(2, 3, 45, 70)
    logits, presence = model(x, with_context=True)
    assert logits.shape == (2, NUM_CLASSES, 45, 70)
    assert presence.shape == (2, NUM_CLASSES)
    assert calls == [(2, 128, 6, 9)]  # the encoder output at 1/8 of the padded 72x48

    target = torch.randint(0, 2, (2, NUM_CLASSES)).float()
    (F.cross_entropy(logits, torch.randint(0, NUM_CLASSES, (2, 45, 70)))
     + F.binary_cross_entropy_with_logits(presence, target)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.context.parameters())

    plain = model.eval()(torch.randn(1, 3, 40, 56))
    assert isinstance(plain, torch.Tensor) and plain.shape == (1, NUM_CLASSES, 40, 56)
    assert len(calls) == 1


def test_dsnet_has_no_context_head_unless_built_with_one():
    model = build_model('dsnet', num_classes=NUM_CLASSES)
    assert model.context is None
    assert not any(name.startswith('context') for name in model.state_dict())
    with pytest.raises(ValueError, match='context_head=True'):
        model(torch.randn(1, 3, 32, 32), with_context=True)


@pytest.mark.parametrize(('name', 'module'), [('segfast', SparkModule), ('segfast_basic', FireModule)])
def test_segfast_follows_the_paper(name, module):
    model = build_model(name, num_classes=NUM_CLASSES).eval()
    # Blocks 2-4 of SqueezeNet 1.1: two, two and four fire (or spark) modules.
    assert [len(block) for block in model.encoder] == [2, 2, 4]
    fires = [m for block in model.encoder for m in block]
    assert all(type(m) is module for m in fires)
    assert [(m.squeeze[1].out_channels, m.expand1x1[1].out_channels) for m in fires] == [
        (16, 64), (16, 64), (32, 128), (32, 128), (48, 192), (48, 192), (64, 256), (64, 256)]
    assert all(isinstance(b, DecoderBlock) for b in model.decoder)

    layers = [model.stem, *model.encoder, *model.decoder, model.classifier]
    assert output_shapes(model, layers, torch.randn(1, 3, 64, 96)) == [
        (64, 32, 48), (128, 16, 24), (256, 8, 12), (512, 4, 6),
        (256, 8, 12), (128, 16, 24), (64, 32, 48), (NUM_CLASSES, 32, 48)]

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    spatial = [m for m in convs if m.kernel_size != (1, 1) and m is not model.stem[0]]
    if module is SparkModule:
        # Every 3x3 and every transposed convolution is depth-wise, followed by a 1x1 across channels.
        assert all(isinstance(m.expand3x3, SeparableConv) for m in fires)
        assert all(isinstance(b.upsample, SeparableTransposedConv) for b in model.decoder)
        assert all(m.groups == m.in_channels == m.out_channels for m in spatial)
    else:
        assert all(isinstance(m.expand3x3, ConvUnit) for m in fires)
        assert all(m.groups == 1 for m in spatial)
    upsampling = [m for m in convs if isinstance(m, nn.ConvTranspose2d)]
    assert len(upsampling) == 3 and all(m.kernel_size == m.stride == (2, 2) for m in upsampling)


@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last])
def test_depthwise_upsample_is_the_transposed_convolution(memory_format):
    torch.manual_seed(0)
    fast = DepthwiseUpsample(6, 2)
    plain = nn.ConvTranspose2d(6, 6, 2, stride=2, groups=6)
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(2, 6, 5, 7).contiguous(memory_format=memory_format).requires_grad_()
    out, expected = fast(x), plain(x)
    assert out.shape == expected.shape == (2, 6, 10, 14)
    assert torch.allclose(out, expected, atol=1e-6)
    with torch.inference_mode():  # inference writes the output in one pass: the same numbers
        assert torch.allclose(fast(x.detach()), expected, atol=1e-6)
    # An exported graph takes the broadcast product in the input's layout: the same numbers.
    exported = torch.export.export(fast, (x.detach(),)).module()
    assert torch.allclose(exported(x.detach()), expected, atol=1e-6)
    # Training goes through it too: the same gradients for the input, the kernel and the bias.
    grad = torch.randn_like(expected)
    for ours, theirs in zip(torch.autograd.grad(out, (x, fast.weight, fast.bias), grad),
                            torch.autograd.grad(expected, (x, plain.weight, plain.bias), grad), strict=True):
        assert torch.allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last])
def test_depthwise_upsample_trains_in_bf16_as_the_transposed_convolution(memory_format):
    """Under bf16 autocast, in a training ConvUnit (batch norm, upsampling, in-place ReLU): the output
    in bf16 and the layout of the input, as the plain layer gives them; the same gradients to bf16's
    precision, in float for the parameters."""
    torch.manual_seed(0)
    fast = ConvUnit(8, 8, 2, stride=2, groups=8, transposed=True).train()
    plain = copy.deepcopy(fast)
    plain[1] = nn.ConvTranspose2d(8, 8, 2, stride=2, groups=8)
    plain[1].load_state_dict(fast[1].state_dict())
    x = torch.randn(3, 8, 6, 10).contiguous(memory_format=memory_format)
    grads = []
    for unit in (fast, plain):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = unit(x)
        assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=memory_format)
        grads.append(torch.autograd.grad(out.float().square().sum(), list(unit.parameters())))
        assert all(g.dtype == torch.float32 for g in grads[-1])
    for ours, theirs in zip(*grads, strict=True):
        assert torch.allclose(ours, theirs, rtol=0.05, atol=0.05 * theirs.abs().max().item())


@pytest.mark.parametrize(('kernel_size', 'groups', 'transposed', 'absorbs'), [
    (1, 1, False, True),
    (2, 6, True, True),    # depth-wise upsampling
    (3, 6, False, True),   # padded, depth-wise: the border corrected
    (3, 1, False, True),   # padded, plain
    (2, 1, True, False),   # a plain transposed convolution runs its batch norm
])
@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize('size', [(9, 11), (1, 1), (1, 2), (2, 1), (3, 3)])
def test_conv_unit_in_eval_is_batch_norm_convolution_relu(kernel_size, groups, transposed, absorbs,
                                                          memory_format, size):
    torch.manual_seed(0)
    unit = randomise_batchnorm(ConvUnit(6, 6, kernel_size, stride=kernel_size if transposed else 1,
                                        groups=groups, transposed=transposed)).eval()
    assert unit.absorbs_norm == absorbs
    norm, conv, _ = unit
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
        x = torch.randn(2, 6, *size).contiguous(memory_format=memory_format)
        if transposed:
            expected = F.conv_transpose2d(norm(x), conv.weight, conv.bias, stride=kernel_size, groups=groups)
        else:
            expected = F.conv2d(norm(x), conv.weight, conv.bias, padding=kernel_size // 2, groups=groups)
        assert torch.allclose(unit(x), F.relu(expected), atol=1e-5)


@pytest.mark.parametrize('name', ['segfast', 'segfast_basic'])
def test_shipped_segfast_checkpoints_give_the_plain_layers_logits(name):
    """The checkpoints trained before the faster layers load as they are and give the logits of the
    plain PyTorch layers: ConvTranspose2d for the depth-wise upsampling, every batch norm run."""
    model = load_checkpoint(default_checkpoint(name)).build_model()
    plain = copy.deepcopy(model)
    for unit in plain.modules():
        if isinstance(unit, ConvUnit):
            unit.absorbs_norm = False
            if isinstance(unit[1], DepthwiseUpsample):
                transposed = nn.ConvTranspose2d(unit[1].in_channels, unit[1].out_channels, 2, stride=2,
                                                groups=unit[1].groups)
                transposed.load_state_dict(unit[1].state_dict())
                unit[1] = transposed
    assert any(isinstance(m, DepthwiseUpsample) for m in model.modules()) == (name == 'segfast')
    torch.manual_seed(0)
    x = torch.randn(2, 3, 90, 120)
    with torch.no_grad():
        logits, expected = model(x), plain(x)
    assert torch.allclose(logits, expected, rtol=1e-4, atol=1e-4)
    assert (logits.argmax(1) == expected.argmax(1)).float().mean() > 0.999


@pytest.mark.parametrize('name', NETWORKS)
@pytest.mark.parametrize(('batch', 'height', 'width'), [(1, 360, 480), (2, 101, 203)])
def test_logits_at_input_size_and_deterministic_in_eval(name, batch, height, width):
    torch.manual_seed(0)
    model = randomise_batchnorm(build_model(name, num_classes=NUM_CLASSES)).eval()
    x = torch.randn(batch, 3, height, width)
    with torch.no_grad():
        logits = model(x)
        # Deterministic in eval mode (checked on a crop, to keep the second pass cheap).
        crop = x[..., :45, :70]
        assert torch.equal(model(crop), model(crop.clone()))
    assert logits.shape == (batch, NUM_CLASSES, height, width)
    assert torch.isfinite(logits).all()


# Exact trainable parameters, measured with count_parameters (the head excluded unless built).
PARAMETER_COUNTS = {
    ('dsnet', 11): 909_961,
    ('dsnet', 19): 910_473,  # the paper's Table 1: 0.91 M for Cityscapes' 19 classes
    ('segfast', 11): 606_603,
    ('segfast', 19): 607_123,  # the paper's Table 5: 603,288
    ('segfast_basic', 11): 2_969_611,
    ('segfast_basic', 19): 2_970_131,  # the paper's Table 5: 2,965,976
}


@pytest.mark.parametrize(('name', 'classes'), sorted(PARAMETER_COUNTS))
def test_parameter_counts(name, classes):
    assert count_parameters(build_model(name, num_classes=classes)) == PARAMETER_COUNTS[name, classes]


def test_context_head_parameters():
    with_head = build_model('dsnet', num_classes=19, context_head=True)
    # 32 codewords x 128 channels, 32 smoothing factors, BN over codewords, FC 128 -> 19.
    assert count_parameters(with_head.context) == 32 * 128 + 32 + 2 * 32 + 128 * 19 + 19 == 6_643
    assert count_parameters(with_head) == PARAMETER_COUNTS['dsnet', 19] + 6_643


@pytest.mark.parametrize('name', NETWORKS)
@pytest.mark.filterwarnings('ignore::DeprecationWarning', 'ignore::torch.jit.TracerWarning',
                            'ignore:Constant folding:UserWarning')
def test_exports_to_onnx_with_dynamic_height_and_width(name):
    torch.manual_seed(0)
    model = randomise_batchnorm(build_model(name, num_classes=NUM_CLASSES)).eval()
    onnx_file = io.BytesIO()
    # The dynamo exporter needs onnxscript, which is not installed.
    torch.onnx.export(model, (torch.randn(1, 3, 32, 48),), onnx_file, dynamo=False, opset_version=17,
                      input_names=['image'], output_names=['logits'],
                      dynamic_axes={'image': {0: 'batch', 2: 'height', 3: 'width'},
                                    'logits': {0: 'batch', 2: 'height', 3: 'width'}})
    session = onnxruntime.InferenceSession(onnx_file.getvalue(), providers=['CPUExecutionProvider'])

    # Sizes other than the traced one, neither a multiple of the size divisor.
    for shape in [(1, 3, 45, 70), (2, 3, 37, 83)]:
        image = torch.randn(shape)
        with torch.no_grad():
            expected = model(image).numpy()
        (logits,) = session.run(None, {'image': image.numpy()})
        assert logits.shape == (shape[0], NUM_CLASSES, *shape[2:])
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
