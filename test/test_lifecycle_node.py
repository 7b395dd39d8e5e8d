"""segment_lifecycle_node in-process over real DDS: each transition does what README says, and the
processing is segment_node's (the same outputs for the same frame)."""

from __future__ import annotations

import gc
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from lifecycle_msgs.msg import State
from rclpy.lifecycle import TransitionCallbackReturn
from sensor_msgs.msg import Image

from seg_ros.ros.lifecycle_node import ManagedSegmentNode

from .support import CHANNEL_NET, channel_checkpoint, expected_channel_mask
from .support.ros import HEIGHT, WIDTH, Ros, camera_image, pixels, stamped, started_nodes, wait_for

CAMERA = '/managed/image_raw'
MASK = '/managed/segmentation/mask'
QUIET_SEC = 1.0  # how long "nothing arrives" is watched


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return channel_checkpoint(tmp_path_factory.mktemp('lifecycle') / 'channel.pt', input_size=(HEIGHT, WIDTH))


@pytest.fixture
def managed(ros: Ros, checkpoint: Path):
    with started_nodes(ros, ManagedSegmentNode, model=CHANNEL_NET, weights=str(checkpoint),
                       image_topics=[CAMERA]) as start:
        yield start


def _state(node: ManagedSegmentNode) -> int:
    return node._state_machine.current_state[0]


def _answered(ros: Ros, publisher: Any, inbox: list, image: np.ndarray) -> Image:
    msg = ros.probe.frame(image)
    return ros.probe.exchange(publisher, msg, inbox)


def _nothing_answered(ros: Ros, publisher: Any, inbox: list) -> None:
    before = len(inbox)
    deadline = time.monotonic() + QUIET_SEC
    while time.monotonic() < deadline:
        publisher.publish(ros.probe.frame(camera_image(0)))
        time.sleep(0.05)
    assert len(inbox) == before


def test_transitions_configure_activate_deactivate_cleanup_and_again(ros: Ros, managed) -> None:
    node = managed()
    probe = ros.probe
    inbox = probe.listen(MASK, Image)
    publisher = probe.create_publisher(Image, CAMERA, 10)
    assert _state(node) == State.PRIMARY_STATE_UNCONFIGURED
    assert node.segmenter is None and probe.count_publishers(MASK) == 0

    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.segmenter is not None
    wait_for(lambda: probe.count_publishers(MASK) == 1, what='mask publisher after configure')
    assert probe.count_subscribers(CAMERA) == 0  # configured, not yet segmenting
    _nothing_answered(ros, publisher, inbox)

    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    image = camera_image(3)
    mask = _answered(ros, publisher, inbox, image)
    np.testing.assert_array_equal(pixels(mask), node.segmenter.segment(image).mask)
    dominant = np.sort(image, axis=2)
    dominant = dominant[:, :, 2] > dominant[:, :, 1]
    np.testing.assert_array_equal(pixels(mask)[dominant], expected_channel_mask(image)[dominant])

    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    received = node._cameras[0].counters.received
    wait_for(lambda: probe.count_subscribers(CAMERA) == 0, what='camera subscription gone after deactivate')
    _nothing_answered(ros, publisher, inbox)
    assert node._cameras[0].counters.received == received  # inactive: nothing counted

    model = weakref.ref(node.segmenter.model)
    assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    gc.collect()
    assert node.segmenter is None and model() is None  # the network is freed
    wait_for(lambda: probe.count_publishers(MASK) == 0, what='publishers gone after cleanup')

    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert stamped(inbox, _answered(ros, publisher, inbox, camera_image(4)).header.stamp)
    assert node.trigger_shutdown() == TransitionCallbackReturn.SUCCESS
    assert _state(node) == State.PRIMARY_STATE_FINALIZED
    assert node.segmenter is None
    wait_for(lambda: probe.count_subscribers(CAMERA) == 0 and probe.count_publishers(MASK) == 0,
             what='everything released at shutdown')


@pytest.mark.parametrize('steps', [(), ('configure',)])
def test_shutdown_from_unconfigured_and_inactive(managed, steps: tuple[str, ...]) -> None:
    node = managed()
    for step in steps:
        assert getattr(node, f'trigger_{step}')() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_shutdown() == TransitionCallbackReturn.SUCCESS
    assert _state(node) == State.PRIMARY_STATE_FINALIZED and node.segmenter is None


def test_a_misconfiguration_fails_configure_and_leaves_it_unconfigured(managed, tmp_path: Path) -> None:
    node = managed(weights=str(tmp_path / 'missing.pt'), model='')
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert _state(node) == State.PRIMARY_STATE_UNCONFIGURED
    assert node.segmenter is None and node._cameras == []
