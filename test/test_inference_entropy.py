"""The Segmenter's optional mean soft-max entropy, against a direct computation from the logits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seg_ros.inference.segmenter import Segmenter

from .support import channel_checkpoint


@pytest.fixture(scope='module')
def segmenter(tmp_path_factory):
    path = channel_checkpoint(tmp_path_factory.mktemp('ckpt') / 'net.pt', input_size=(24, 32))
    return Segmenter(path, device='cpu')


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    log_p = logits.double().log_softmax(1)
    return -(log_p.exp() * log_p).sum(1)


def direct_entropy(segmenter: Segmenter, rgb: np.ndarray) -> float:
    """Mean entropy of the soft-max of the network's logits (the checkpoint's input scale is 0..1)."""
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
    return float(softmax_entropy(segmenter.model(x)).mean())


def test_entropy_matches_a_direct_computation(segmenter):
    rgb = np.random.default_rng(3).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    result = segmenter.segment(rgb, outputs={'entropy'})
    assert result.mean_entropy == pytest.approx(direct_entropy(segmenter, rgb), rel=1e-5)
    assert 0.0 < result.mean_entropy < math.log(3)


def test_entropy_of_known_distributions_and_only_on_request(segmenter):
    red = np.zeros((24, 32, 3), np.uint8)
    red[..., 0] = 255  # logits (4, 0, 0): the sharpness of the test network
    expected = float(softmax_entropy(torch.tensor([[4.0, 0.0, 0.0]])))
    assert segmenter.segment(red, outputs={'entropy'}).mean_entropy == pytest.approx(expected, rel=1e-4)
    grey = np.full((24, 32, 3), 90, np.uint8)  # equal logits: the uniform distribution
    assert segmenter.segment(grey, outputs={'entropy'}).mean_entropy == pytest.approx(math.log(3), rel=1e-6)
    assert segmenter.segment(grey).mean_entropy is None
