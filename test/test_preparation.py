"""The inference fast path: model preparation, shape-specialised forwards, the timer,
and the Segmenter options built on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from seg_ros.inference.preparation import StaticShapeForward, latencies_ms, prepare_model
from seg_ros.inference.segmenter import Segmenter

from .support import channel_checkpoint, expected_channel_mask
from .support.networks import TinyNet, blocks


@pytest.fixture(scope='module')
def tiny() -> nn.Module:
    """TinyNet with non-trivial batch-norm statistics, as after training, in eval mode."""
    torch.manual_seed(0)
    model = TinyNet().train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, 3, 16, 24) * 3 + 1)
    return model.eval()


def test_prepared_model_is_folded_frozen_and_equal(tiny):
    fast = prepare_model(tiny, channels_last=True, example_size=(16, 24))
    kept = [name for name, m in fast.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert kept == ['merge_bn', 'smooth.0']
    assert all(not p.requires_grad for p in fast.parameters())
    assert fast.down[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(1, 3, 15, 27)
    with torch.no_grad():
        expected = tiny(x)
        got = fast(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in tiny.modules()) == 5  # the original is untouched


def test_prepared_model_in_bf16_is_cast_once(tiny):
    fast = prepare_model(tiny, precision='bf16', example_size=(16, 24))
    assert {p.dtype for p in fast.parameters()} == {torch.bfloat16}
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(fast(x.bfloat16()).float(), tiny(x), atol=0.1, rtol=0.05)
    with pytest.raises(ValueError, match="precision 'fp8'"):
        prepare_model(tiny, precision='fp8')


def test_latencies_are_one_per_call_after_warmup():
    calls = []
    times = latencies_ms(calls.append, [torch.zeros(1), torch.ones(1)], iterations=5, warmup=2)
    assert times.shape == (5,) and (times >= 0).all()
    assert len(calls) == 7 and [float(c) for c in calls[2:]] == [0.0, 1.0, 0.0, 1.0, 0.0]  # rotates
    with pytest.raises(ValueError, match='at least one input and one iteration'):
        latencies_ms(calls.append, [], iterations=3)


def test_static_shape_forward_compiles_the_first_shapes_and_falls_back_after():
    torch.manual_seed(0)
    model = prepare_model(TinyNet().eval(), example_size=(8, 8))
    forward = StaticShapeForward(model, compile=True, max_shapes=1)
    first, second = torch.randn(1, 3, 8, 8), torch.randn(2, 3, 6, 10)
    with torch.inference_mode():
        torch.testing.assert_close(forward(first), model(first))
        torch.testing.assert_close(forward(second), model(second))  # eager: the one slot is taken
        torch.testing.assert_close(forward(first), model(first))
    assert forward.shapes == [(1, 3, 8, 8)]


def test_static_shape_forward_rejects_what_it_cannot_do(tiny):
    with pytest.raises(ValueError, match='compile and/or cuda_graph'):
        StaticShapeForward(tiny)
    with pytest.raises(ValueError, match='CUDA graphs need a network on a CUDA device'):
        StaticShapeForward(tiny, cuda_graph=True)




def test_segmenter_on_onnxruntime_gives_the_same_results(tmp_path):
    path = channel_checkpoint(tmp_path / 'net.pt', input_size=(48, 64))
    reference = Segmenter(path, device='cpu', backend='torch', precision='fp32')
    fast = Segmenter(path, device='cpu', backend='onnxruntime', channels_last=True)
    assert fast.backend == 'onnxruntime' and not fast.channels_last  # ONNX Runtime takes NCHW
    assert 'backend onnxruntime' in fast.describe() and 'backend torch' in reference.describe()
    for image in (blocks(), blocks(30, 101)):
        expected, got = reference.segment(image), fast.segment(image)
        np.testing.assert_array_equal(got.mask, expected_channel_mask(image))
        np.testing.assert_array_equal(got.mask, expected.mask)
        assert np.abs(got.confidence.astype(int) - expected.confidence.astype(int)).max() <= 1


def test_segmenter_rejects_cuda_graphs_on_a_cpu(tmp_path):
    with pytest.raises(ValueError, match='cuda_graphs needs a CUDA device, not cpu'):
        Segmenter(channel_checkpoint(tmp_path / 'net.pt'), device='cpu', cuda_graphs=True)


def test_a_failed_compilation_falls_back_to_eager(caplog):
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU()).eval()
    forward = StaticShapeForward(model, compile=True)
    x = torch.randn(1, 3, 4, 4)
    # PyTorch's own switch for a C++ compile error in inductor's generated code.
    with torch._inductor.config.patch({'cpp.inject_relu_bug_TESTING_ONLY': 'compile_error'}), \
            torch.inference_mode():
        torch.testing.assert_close(forward(x), model(x))
        torch.testing.assert_close(forward(x), model(x))
    assert 'torch.compile failed at input (1, 3, 4, 4)' in caplog.text and 'runs eagerly' in caplog.text
