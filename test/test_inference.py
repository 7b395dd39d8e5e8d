"""The Segmenter: exact masks from a known network, every output, encodings, batching, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seg_ros.checkpoint import Checkpoint, load_checkpoint
from seg_ros.inference.preparation import fold_batchnorm
from seg_ros.inference.segmenter import SegmentationError, Segmenter, resolve_device
from seg_ros.labels import CAMVID11, IGNORE_INDEX
from seg_ros.models import build_model

from .support import CHANNEL_LABELS, channel_checkpoint, expected_channel_mask


def blocks(height: int = 48, width: int = 64) -> np.ndarray:
    """Three vertical bands, red | green | blue, with some shading."""
    image = np.zeros((height, width, 3), np.uint8)
    for index, band in enumerate(np.array_split(np.arange(width), 3)):
        image[:, band, index] = 200
        image[:, band, (index + 1) % 3] = 40
    return image


@pytest.fixture(scope='module')
def segmenter(tmp_path_factory):
    path = channel_checkpoint(tmp_path_factory.mktemp('ckpt') / 'net.pt', input_size=(48, 64))
    return Segmenter(path, device='cpu')


def test_mask_is_exact_and_outputs_are_consistent(segmenter):
    image = blocks()
    result = segmenter.segment(image, overlay_alpha=0.25)
    np.testing.assert_array_equal(result.mask, expected_channel_mask(image))
    assert result.mask.dtype == np.uint8 and result.mask.shape == image.shape[:2]
    assert result.class_counts.sum() == image.shape[0] * image.shape[1]
    np.testing.assert_array_equal(result.class_counts, np.bincount(result.mask.ravel(), minlength=3))
    np.testing.assert_allclose(result.class_fractions.sum(), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(result.color_mask, CHANNEL_LABELS.palette()[result.mask])
    expected_overlay = np.round(image * 0.75 + result.color_mask * 0.25).astype(np.uint8)
    assert np.abs(result.overlay.astype(int) - expected_overlay).max() <= 1
    # Confidence: softmax of the network's logits, computed independently.
    # The checkpoint's mean 0 / std 1 are on the 0..1 scale, so the network sees image / 255.
    logits = segmenter.model(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)
    probs = logits.softmax(1).max(1).values[0].numpy()
    assert np.abs(result.confidence.astype(int) - np.round(probs * 255)).max() <= 1
    for cls in range(3):
        np.testing.assert_allclose(result.class_confidence[cls], probs[result.mask == cls].mean(), rtol=1e-4)


@pytest.mark.parametrize('encoding', ['bgr8', 'rgba8', 'bgra8'])
def test_encodings_give_the_same_mask(segmenter, encoding):
    image = blocks()
    converted = {
        'bgr8': image[..., ::-1],
        'rgba8': np.dstack([image, np.full(image.shape[:2], 7, np.uint8)]),
        'bgra8': np.dstack([image[..., ::-1], np.full(image.shape[:2], 7, np.uint8)]),
    }[encoding]
    result = segmenter.segment(np.ascontiguousarray(converted), encoding)
    np.testing.assert_array_equal(result.mask, expected_channel_mask(image))
    np.testing.assert_array_equal(result.overlay, segmenter.segment(image).overlay)


def test_mono_and_padded_rows(segmenter):
    gray = np.full((30, 40), 90, np.uint8)
    assert (segmenter.segment(gray, 'mono8').mask == 0).all()  # equal channels: first class wins
    image = blocks(30, 42)
    padded = np.zeros((30, 50, 3), np.uint8)
    padded[:, :42] = image
    view = padded[:, :42]  # rows longer than the image, as a message with step > width * 3
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(segmenter.segment(view).mask, segmenter.segment(image).mask)


def test_outputs_only_when_asked(segmenter):
    result = segmenter.segment(blocks(), outputs=set())
    assert result.confidence is None and result.color_mask is None and result.overlay is None
    assert result.mask is not None and result.class_counts.sum() == 48 * 64


def test_resizes_back_to_each_image_and_batches(segmenter):
    small, large = blocks(24, 30), blocks(96, 150)
    batch = segmenter.segment_batch([small, large[..., ::-1].copy()], ['rgb8', 'bgr8'])
    assert batch[0].mask.shape == (24, 30) and batch[1].mask.shape == (96, 150)
    for single, batched in zip([segmenter.segment(small), segmenter.segment(large)], batch, strict=True):
        np.testing.assert_array_equal(single.mask, batched.mask)
        np.testing.assert_array_equal(single.overlay, batched.overlay)


def test_network_output_size_and_min_confidence(tmp_path):
    path = channel_checkpoint(tmp_path / 'net.pt', input_size=(32, 40))
    small = Segmenter(path, device='cpu', output_size='network')
    assert small.segment(blocks(96, 150)).mask.shape == (32, 40)
    strict = Segmenter(path, device='cpu', min_confidence=0.8)
    image = np.full((20, 20, 3), 100, np.uint8)
    image[:, :, 0] = 104  # red barely dominant: low confidence
    image[:10, :, 0] = 255  # clearly red: confident
    mask = strict.segment(image).mask
    assert (mask[:10] == 0).all() and (mask[10:] == IGNORE_INDEX).all()
    assert strict.segment(image).class_counts.sum() == 20 * 20 - (mask == IGNORE_INDEX).sum()


def test_bad_frames_are_rejected_clearly(segmenter):
    with pytest.raises(ValueError, match='uint8'):
        segmenter.segment(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r'shape \(8, 8, 4\) does not match encoding rgb8'):
        segmenter.segment(np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match='yuv422.*conversions'):
        segmenter.segment(np.zeros((8, 8, 2), np.uint8), 'yuv422')
    with pytest.raises(ValueError, match='shape'):
        segmenter.segment(np.zeros((0, 8, 3), np.uint8))
    with pytest.raises(ValueError, match='overlay_alpha'):
        segmenter.segment(blocks(), overlay_alpha=1.5)
    with pytest.raises(ValueError, match='unknown output'):
        segmenter.segment(blocks(), outputs={'depth'})


def test_device_and_precision_choices(tmp_path):
    path = channel_checkpoint(tmp_path / 'net.pt')
    assert resolve_device('auto').type == ('cuda' if torch.cuda.is_available() else 'cpu')
    with pytest.raises(ValueError, match='not one of auto, cpu'):
        resolve_device('tpu:0')
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda:1' requested but CUDA is not available"):
            Segmenter(path, device='cuda:1')
        with pytest.warns(UserWarning, match='fp16 does not speed up inference on this CPU'):
            assert Segmenter(path, device='cpu', precision='fp16').precision == 'fp32'
    with pytest.raises(ValueError, match="precision 'fp8'"):
        Segmenter(path, device='cpu', precision='fp8')


def test_non_finite_network_output_is_a_segmentation_error(tmp_path):
    ckpt = load_checkpoint(channel_checkpoint(tmp_path / 'net.pt'))
    ckpt.state_dict['bn.running_var'] = torch.full((3,), float('nan'))
    segmenter = Segmenter(ckpt, device='cpu', fold_bn=False, warmup=False)
    with pytest.raises(SegmentationError, match='non-finite'):
        segmenter.segment(blocks())


@pytest.mark.parametrize('name', ['enet', 'erfnet', 'dsnet', 'segfast', 'segfast_basic'])
def test_batchnorm_folding_keeps_real_networks_exact(name):
    torch.manual_seed(0)
    model = build_model(name, 11)
    # Non-trivial running statistics, as after training.
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(2, 3, 64, 96))
    model.eval()
    example = torch.randn(1, 3, 64, 96)
    folded = fold_batchnorm(model, example)

    def batch_norms_run(net: torch.nn.Module) -> int:
        ran = []
        hooks = [m.register_forward_hook(lambda *_: ran.append(1)) for m in net.modules()
                 if isinstance(m, torch.nn.BatchNorm2d)]
        with torch.no_grad():
            net(example)
        for hook in hooks:
            hook.remove()
        return len(ran)

    # SegFast's units absorb their batch norms in eval mode themselves; what still runs (SegFast-Basic's
    # before its transposed convolutions) folds into nothing exactly.
    ran, remaining = batch_norms_run(model), batch_norms_run(folded)
    if name.startswith('segfast'):
        assert remaining == ran <= 3
    else:
        assert remaining < ran, f'{name}: no batch-norm was folded'
    x = torch.randn(1, 3, 72, 100)
    torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)


def test_real_network_end_to_end(tmp_path):
    model = build_model('enet', 11).eval()
    ckpt = Checkpoint.from_model(model, 'enet', CAMVID11, input_size=(64, 96))
    image = np.random.default_rng(0).integers(0, 255, (120, 160, 3), np.uint8)
    result = Segmenter(ckpt, device='cpu').segment(image)
    assert result.mask.shape == (120, 160) and result.mask.max() < 11
    assert result.class_counts.sum() == 120 * 160
