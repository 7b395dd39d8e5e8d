"""Backends (PyTorch, ONNX Runtime, OpenVINO) and the measured automatic choice among them."""

from __future__ import annotations

import json
import time

import cv2
import numpy as np
import pytest
import torch

from seg_ros.inference.backends import (
    MIN_AGREEMENT,
    REFERENCE,
    WARMUP_CALLS,
    Candidate,
    ChoiceCache,
    candidates,
    choose_forward,
    cpu_supports_bf16,
    make_forward,
)
from seg_ros.inference.onnx import OpenVinoForward
from seg_ros.inference.preparation import prepare_model
from seg_ros.inference.segmenter import Segmenter
from seg_ros.paths import default_checkpoint

from .support import channel_checkpoint, expected_channel_mask
from .support.networks import TinyNet, blocks

BF16 = ('bf16',) if cpu_supports_bf16() else ()
CPU = torch.device('cpu')


@pytest.fixture(scope='module')
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    model = TinyNet().train()
    with torch.no_grad():
        model(torch.randn(2, 3, 16, 24) * 3 + 1)
    return prepare_model(model.eval(), example_size=(16, 24))


def test_candidates_follow_backend_precision_and_the_cpu():
    every = candidates(CPU)
    assert every[:3] == [REFERENCE, Candidate('onnxruntime', 'fp32'), Candidate('openvino', 'fp32')]
    assert every[3:] == ([Candidate('torch', 'bf16'), Candidate('openvino', 'bf16')] if BF16 else [])
    assert candidates(CPU, 'openvino', 'fp32') == [Candidate('openvino', 'fp32')]  # explicit: forced
    assert candidates(CPU, 'auto', 'fp32') == every[:3]
    assert candidates(CPU, 'torch') == [c for c in every if c.backend == 'torch']


def test_candidate_errors_name_the_fix():
    with pytest.raises(ValueError, match="backend 'tensorrt' is not one of auto, torch, onnxruntime, openvino"):
        candidates(CPU, 'tensorrt')
    with pytest.raises(ValueError, match="precision 'fp8' is not one of auto"):
        candidates(CPU, 'auto', 'fp8')
    with pytest.raises(ValueError, match='onnxruntime backend runs fp32, not bf16.*use backend "torch"'):
        candidates(CPU, 'onnxruntime', 'bf16')
    with pytest.raises(ValueError, match='openvino backend runs on a CPU, not cuda'):
        candidates(torch.device('cuda'), 'openvino')


def test_every_candidate_computes_the_network(tiny):
    x = torch.randn(2, 3, 37, 91)  # another batch and an odd size than folded at
    with torch.inference_mode():
        expected = tiny(x)
        for candidate in [*candidates(CPU), Candidate('torch', 'bf16')]:
            got = make_forward(candidate, tiny)(x).float()
            assert got.shape == expected.shape, candidate
            tolerance = 1e-4 if candidate.precision == 'fp32' else 0.1  # bf16: 8 bits of mantissa
            torch.testing.assert_close(got, expected, atol=tolerance, rtol=tolerance, msg=str(candidate))


def test_openvino_runs_fp32_or_bf16_only(tiny):
    with pytest.raises(ValueError, match='openvino backend runs fp32 or bf16'):
        OpenVinoForward(tiny, precision='fp16')
    with pytest.raises(ValueError, match='float32 CPU tensors'):
        OpenVinoForward(tiny)(torch.zeros(1, 3, 8, 8, dtype=torch.float64))


class Sleeper:
    """A stand-in forward: takes ``ms`` per call and answers ``classes`` (logits of one-hot rows)."""

    def __init__(self, ms: float, flip_share: float = 0.0) -> None:
        self.ms, self.flip_share, self.calls = ms, flip_share, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        time.sleep(self.ms / 1e3)
        logits = torch.zeros(x.shape[0], 2, *x.shape[2:])
        flipped = int(self.flip_share * x.shape[-1])
        logits[:, 0, :, flipped:] = 1.0  # class 0, except the first columns
        logits[:, 1, :, :flipped] = 1.0
        return logits


def choose(forwards: dict[Candidate, Sleeper], frames: int = 3, **options):
    built: list[Candidate] = []

    def build(candidate: Candidate) -> Sleeper:
        built.append(candidate)
        return forwards[candidate]

    choice = choose_forward(list(forwards), build, [torch.zeros(1, 3, 4, 100)] * frames, **options)
    return choice, built


def test_the_fastest_agreeing_candidate_is_kept():
    ort, ov, ov_bf16 = Candidate('onnxruntime', 'fp32'), Candidate('openvino', 'fp32'), Candidate('openvino', 'bf16')
    forwards = {REFERENCE: Sleeper(40), ort: Sleeper(30), ov: Sleeper(20),
                ov_bf16: Sleeper(5, flip_share=2 * (1 - MIN_AGREEMENT))}  # fastest, but 1 % of pixels differ
    choice, _ = choose(forwards)
    assert choice.candidate == ov and choice.forward is forwards[ov] and choice.how == 'measured'
    assert choice.agreement[str(ov_bf16)] == pytest.approx(0.99) and choice.agreement[str(ov)] == 1.0
    assert choice.timings_ms[str(ov)] == pytest.approx(20, abs=15)
    assert 'openvino fp32 (measured in' in choice.summary()


def test_reduced_precision_must_win_by_the_margin_and_a_slow_candidate_is_cut_short():
    ort, ov = Candidate('onnxruntime', 'fp32'), Candidate('openvino', 'fp32')
    ov_bf16 = Candidate('openvino', 'bf16')
    forwards = {REFERENCE: Sleeper(150), ort: Sleeper(100), ov: Sleeper(80), ov_bf16: Sleeper(75)}
    assert choose(forwards, frames=4)[0].candidate == ov  # bf16 within 10 % of the fastest fp32: fp32
    forwards = {REFERENCE: Sleeper(150), ort: Sleeper(100), ov_bf16: Sleeper(60)}
    assert choose(forwards, frames=4)[0].candidate == ov_bf16
    forwards = {REFERENCE: Sleeper(20), ort: Sleeper(50), ov: Sleeper(100)}
    choice, _ = choose(forwards, frames=5)
    assert choice.candidate == REFERENCE
    # The warm-up calls and one timed call: more than twice the best of its round.
    assert forwards[ort].calls == WARMUP_CALLS + 1 and str(ort) in choice.timings_ms
    # A first call more than three times the best: no further call, no timing.
    assert forwards[ov].calls == 1 and str(ov) not in choice.timings_ms


def test_a_spent_budget_leaves_candidates_out():
    ov = Candidate('openvino', 'fp32')
    choice, built = choose({REFERENCE: Sleeper(1), ov: Sleeper(1)}, budget_s=0.0)
    assert choice.candidate == REFERENCE and built == [REFERENCE]
    assert choice.left_out == {'openvino fp32': 'start-up budget of 0 s spent'}


def test_a_failing_candidate_is_left_out_with_its_reason():
    ov = Candidate('openvino', 'fp32')

    def build(candidate):
        if candidate == ov:
            raise RuntimeError('Cannot create Interpolate layer\nmore detail')
        return Sleeper(1)

    choice = choose_forward([REFERENCE, ov], build, [torch.zeros(1, 3, 4, 4)] * 2)
    assert choice.candidate == REFERENCE
    assert choice.left_out == {'openvino fp32': 'failed: Cannot create Interpolate layer'}


def test_one_candidate_is_built_without_timing():
    choice, built = choose({Candidate('openvino', 'bf16'): Sleeper(1)}, frames=0)
    assert choice.how == 'asked' and built == [Candidate('openvino', 'bf16')] and choice.timings_ms == {}


def test_a_decision_is_cached_per_key(tmp_path, caplog):
    cache = ChoiceCache(tmp_path / 'choices.json')
    ov = Candidate('openvino', 'fp32')
    forwards = {REFERENCE: Sleeper(20), ov: Sleeper(2)}
    first, _ = choose(forwards, cache=cache, key={'network': 'a'})
    assert first.how == 'measured' and first.candidate == ov
    again, built = choose(forwards, cache=cache, key={'network': 'a'})
    assert again.how == 'cached' and again.candidate == ov and built == [ov]  # nothing timed again
    assert again.timings_ms == first.timings_ms and 'cached in' in again.summary()
    assert choose(forwards, cache=cache, key={'network': 'b'})[0].how == 'measured'  # another key
    assert len(json.loads(cache.path.read_text())) == 2
    cache.path.write_text('{not json')
    assert choose(forwards, cache=cache, key={'network': 'a'})[0].how == 'measured'
    assert 'unreadable' in caplog.text


def test_an_unwritable_cache_does_not_stop_a_start(tmp_path, caplog):
    blocker = tmp_path / 'file'
    blocker.write_text('')
    cache = ChoiceCache(blocker / 'choices.json')  # its folder cannot be made
    choice, _ = choose({REFERENCE: Sleeper(1), Candidate('openvino', 'fp32'): Sleeper(1)}, cache=cache, key={})
    assert choice.how == 'measured' and 'not cached' in caplog.text


def test_segmenter_forced_backends_give_the_same_masks(tmp_path):
    path = channel_checkpoint(tmp_path / 'net.pt', input_size=(48, 64))
    for backend, precision in [('openvino', 'fp32'), ('onnxruntime', 'fp32'), ('torch', 'fp32'),
                               *[('openvino', p) for p in BF16]]:
        segmenter = Segmenter(path, device='cpu', backend=backend, precision=precision)
        assert (segmenter.backend, segmenter.precision, segmenter.choice.how) == (backend, precision, 'asked')
        assert segmenter.channels_last == (backend == 'torch')
        for image in (blocks(), blocks(30, 101)):
            np.testing.assert_array_equal(segmenter.segment(image).mask, expected_channel_mask(image))


def camvid_val_frames(camvid_root, count: int = 3) -> list[np.ndarray]:
    lines = (camvid_root / 'val.txt').read_text().split('\n')
    paths = [camvid_root / lines[i].split()[0] for i in np.linspace(0, len(lines) - 2, count).astype(int)]
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]


def test_automatic_choice_on_camvid_frames_agrees_with_fp32_pytorch(camvid_root, tmp_path, one_thread):
    frames = camvid_val_frames(camvid_root)
    size = (180, 240)
    cache = ChoiceCache(tmp_path / 'choices.json')
    auto = Segmenter(default_checkpoint('enet'), device='cpu', input_size=size, sample_frames=frames,
                     choice_cache=cache)
    choice = auto.choice
    assert choice.how == 'measured' and set(choice.timings_ms) <= {str(c) for c in candidates(CPU)}
    assert str(REFERENCE) in choice.timings_ms and choice.agreement[str(choice.candidate)] >= MIN_AGREEMENT
    fastest = min(ms for name, ms in choice.timings_ms.items() if choice.agreement[name] >= MIN_AGREEMENT)
    assert choice.timings_ms[str(choice.candidate)] * 0.9 <= fastest
    reference = Segmenter(default_checkpoint('enet'), device='cpu', input_size=size, backend='torch',
                          precision='fp32')
    same = [np.mean(auto.segment(f).mask == reference.segment(f).mask) for f in frames]
    assert np.mean(same) >= MIN_AGREEMENT, same
    # A restart reads the decision instead of measuring.
    again = Segmenter(default_checkpoint('enet'), device='cpu', input_size=size, sample_frames=frames,
                      choice_cache=cache, warmup=False)
    assert again.choice.how == 'cached' and again.choice.candidate == choice.candidate
