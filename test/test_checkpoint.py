"""Checkpoints: round trip, weights-only loading, atomic writes, one clear error per bad file."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from seg_ros.checkpoint import (
    Checkpoint,
    CheckpointError,
    atomic_torch_save,
    load_checkpoint,
    save_checkpoint,
)
from seg_ros.labels import CAMVID11, LabelSet

from .support import CHANNEL_LABELS, CHANNEL_NET, ChannelArgmaxNet, channel_checkpoint


def test_round_trip_keeps_everything(tmp_path):
    path = channel_checkpoint(tmp_path / 'net.pt', input_size=(40, 56))
    ckpt = load_checkpoint(path)
    assert ckpt.model_name == CHANNEL_NET
    assert ckpt.labels == CHANNEL_LABELS
    assert ckpt.input_size == (40, 56)
    assert ckpt.mean == (0.0, 0.0, 0.0) and ckpt.std == (1.0, 1.0, 1.0)
    assert ckpt.meta == {'purpose': 'tests'}
    reference = ChannelArgmaxNet().eval()
    x = torch.rand(1, 3, 9, 13)
    assert torch.equal(ckpt.build_model()(x), reference(x))


def test_real_network_round_trip(tmp_path):
    from seg_ros.models import build_model
    model = build_model('enet', CAMVID11.num_classes).eval()
    path = save_checkpoint(Checkpoint.from_model(model, 'enet', CAMVID11), tmp_path / 'enet.pt')
    loaded = load_checkpoint(path).build_model()
    x = torch.rand(1, 3, 64, 80)
    assert torch.equal(loaded(x), model(x))


def test_pickled_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ('echo pwned > ' + str(tmp_path / 'pwned'),))

    path = tmp_path / 'evil.pt'
    torch.save({'format': 'seg_ros.checkpoint', 'payload': Payload()}, path)
    with pytest.raises(CheckpointError, match=r'evil\.pt.*refused'):
        load_checkpoint(path)
    assert not (tmp_path / 'pwned').exists()


@pytest.mark.parametrize('content, reason', [
    (b'', 'truncated or corrupt'),
    (b'not a torch file at all', 'truncated or corrupt'),
])
def test_garbage_files(tmp_path, content, reason):
    path = tmp_path / 'bad.pt'
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f'bad.pt.*{reason}'):
        load_checkpoint(path)


def test_truncated_file(tmp_path):
    path = channel_checkpoint(tmp_path / 'net.pt')
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match='net.pt.*truncated or corrupt'):
        load_checkpoint(path)


def test_foreign_and_malformed_files(tmp_path):
    bare = tmp_path / 'bare.pt'
    torch.save(ChannelArgmaxNet().state_dict(), bare)
    with pytest.raises(CheckpointError, match='bare.pt.*not a seg_ros checkpoint'):
        load_checkpoint(bare)

    data = torch.load(channel_checkpoint(tmp_path / 'ok.pt'), weights_only=True)
    data['version'] = 99
    torch.save(data, tmp_path / 'future.pt')
    with pytest.raises(CheckpointError, match='future.pt.*version 99'):
        load_checkpoint(tmp_path / 'future.pt')

    data['version'] = 1
    del data['labels']
    torch.save(data, tmp_path / 'nolabels.pt')
    with pytest.raises(CheckpointError, match="nolabels.pt.*malformed.*labels"):
        load_checkpoint(tmp_path / 'nolabels.pt')


def test_weights_that_do_not_fit(tmp_path):
    model = ChannelArgmaxNet()
    state = model.state_dict()
    state['conv.weight'] = torch.zeros(5, 3, 1, 1)
    ckpt = Checkpoint(model_name=CHANNEL_NET, num_classes=3, labels=CHANNEL_LABELS, state_dict=state)
    save_checkpoint(ckpt, tmp_path / 'misfit.pt')
    with pytest.raises(CheckpointError, match='misfit.pt.*do not fit'):
        load_checkpoint(tmp_path / 'misfit.pt')


def test_unknown_model_and_class_mismatch(tmp_path):
    state = ChannelArgmaxNet().state_dict()
    save_checkpoint(Checkpoint('no_such_net', 3, CHANNEL_LABELS, state), tmp_path / 'unknown.pt')
    with pytest.raises(CheckpointError, match="unknown.pt.*unknown model 'no_such_net'"):
        load_checkpoint(tmp_path / 'unknown.pt')
    two = LabelSet('two', ('a', 'b'), ((0, 0, 0), (1, 1, 1)))
    save_checkpoint(Checkpoint(CHANNEL_NET, 3, two, state), tmp_path / 'mismatch.pt')
    with pytest.raises(CheckpointError, match='mismatch.pt.*num_classes is 3 but it lists 2'):
        load_checkpoint(tmp_path / 'mismatch.pt')


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match='nothere.pt: no such file'):
        load_checkpoint(tmp_path / 'nothere.pt')


def test_atomic_write_leaves_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / 'ckpt.pt'
    atomic_torch_save({'generation': 1}, path)

    def explode(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, 'save', explode)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({'generation': 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {'generation': 1}
    assert [p.name for p in tmp_path.iterdir()] == ['ckpt.pt']  # no temporary file left behind


def test_pickle_module_error_type_is_what_torch_raises(tmp_path):
    # Guard: the refusal branch relies on torch raising UnpicklingError for forbidden globals.
    path = tmp_path / 'x.pt'
    torch.save({'f': print}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


def test_a_temporary_left_by_a_killed_writer_is_cleaned_on_the_next_save(tmp_path):
    path = tmp_path / 'last.pt'
    stale = tmp_path / '.last.pt.abc123.tmp'  # what SIGKILL during torch.save leaves behind
    stale.write_bytes(b'half a checkpoint')
    atomic_torch_save({'generation': 1}, path)
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['last.pt']
