"""config/fastdds.xml carries camera-sized images between processes (best effort and reliable).

With Fast DDS's built-in transports a frame larger than the default shared-memory segment goes
over UDP, where best-effort frames of 1280x720 rgb8 are lost whole; these tests run a publisher
and a subscriber as separate processes with the profile and check that the frames arrive intact:
all of them on reliable streams, at least 90 % best effort.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

PROFILE = Path(__file__).resolve().parents[1] / 'config' / 'fastdds.xml'
FRAMES = 20
BEST_EFFORT_MIN_SHARE = 0.9
FULL_HD_BYTES = 1920 * 1080 * 3
STREAMS = [  # width, height, reliability
    (1280, 720, 'best_effort'),
    (1280, 720, 'reliable'),
    (1920, 1080, 'best_effort'),
    (1920, 1080, 'reliable'),
]

# Both scripts get the streams as JSON in argv[1] and the frame count in argv[2]. Frame i of a stream
# has header.frame_id = str(i) and every byte equal to fill(i), so the subscriber can tell an intact
# frame from a damaged one. Queues are FRAMES deep on both sides: only the transport can lose a frame.
_COMMON = '''
import json, sys, time
import numpy as np
import rclpy
from seg_ros.ros.qos import input_qos
from sensor_msgs.msg import Image
STREAMS, FRAMES = json.loads(sys.argv[1]), int(sys.argv[2])
def topic(w, h, reliability):
    return f'/dds_test/image_{w}x{h}_{reliability}'
def fill(index):
    return (index * 37 + 11) % 256
rclpy.init()
'''

PUBLISHER = _COMMON + '''
from seg_ros.ros.conversions import array_to_image
node = rclpy.create_node('dds_test_publisher')
publishers = [node.create_publisher(Image, topic(*s), input_qos(s[2], FRAMES)) for s in STREAMS]
deadline = time.monotonic() + 20
while any(p.get_subscription_count() == 0 for p in publishers) and time.monotonic() < deadline:
    time.sleep(0.05)
for index in range(FRAMES):
    for (w, h, _), publisher in zip(STREAMS, publishers):
        msg = array_to_image(np.full((h, w, 3), fill(index), np.uint8), 'rgb8')
        msg.header.frame_id = str(index)
        publisher.publish(msg)
    time.sleep(0.1)
time.sleep(2.0)  # let reliable streams finish before the participant goes away
'''

SUBSCRIBER = _COMMON + '''
from seg_ros.ros.conversions import image_to_array
node = rclpy.create_node('dds_test_subscriber')
intact = {topic(*s): set() for s in STREAMS}
damaged = {topic(*s): 0 for s in STREAMS}
def callback(name, w, h, msg):
    pixels, _ = image_to_array(msg)
    index = int(msg.header.frame_id)
    if (msg.width, msg.height) == (w, h) and bool(np.all(pixels == fill(index))):
        intact[name].add(index)
    else:
        damaged[name] += 1
subscriptions = [node.create_subscription(Image, topic(*s), lambda m, s=s: callback(topic(*s), s[0], s[1], m),
                                          input_qos(s[2], FRAMES)) for s in STREAMS]
deadline = time.monotonic() + 30
while time.monotonic() < deadline and any(len(v) < FRAMES for v in intact.values()):
    rclpy.spin_once(node, timeout_sec=0.1)
print(json.dumps({'intact': {k: len(v) for k, v in intact.items()}, 'damaged': damaged}), flush=True)
'''


def _profile_tree() -> ET.Element:
    root = ET.parse(PROFILE).getroot()
    for element in root.iter():  # drop the XML namespace, which Fast DDS ignores too
        element.tag = element.tag.rpartition('}')[2]
    return root


def test_profile_is_the_default_participant_profile_with_shm_and_udp():
    root = _profile_tree()
    participants = root.findall('./profiles/participant')
    assert [p.get('is_default_profile') for p in participants] == ['true']
    rtps = participants[0].find('rtps')
    assert rtps.findtext('useBuiltinTransports').strip() == 'false'
    used = [t.text.strip() for t in rtps.findall('./userTransports/transport_id')]
    kinds = {d.findtext('transport_id').strip(): d for d in root.findall('./profiles/transport_descriptors/'
                                                                        'transport_descriptor')}
    assert sorted(kinds[name].findtext('type').strip() for name in used) == ['SHM', 'UDPv4']
    shm = next(kinds[name] for name in used if kinds[name].findtext('type').strip() == 'SHM')
    # Several full-HD rgb8 frames in flight at once, in one segment per process.
    assert int(shm.findtext('segment_size')) >= 4 * FULL_HD_BYTES


def _run_pair(env: dict[str, str]) -> dict:
    args = [json.dumps(STREAMS), str(FRAMES)]
    subscriber = subprocess.Popen([sys.executable, '-c', SUBSCRIBER, *args], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    publisher = subprocess.Popen([sys.executable, '-c', PUBLISHER, *args], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        sub_out, sub_err = subscriber.communicate(timeout=45)
        _, pub_err = publisher.communicate(timeout=30)
    finally:
        for process in (subscriber, publisher):
            if process.poll() is None:
                process.kill()
                process.wait()
    assert publisher.returncode == 0, pub_err
    assert subscriber.returncode == 0, sub_err
    return json.loads(sub_out.strip().splitlines()[-1])


@pytest.mark.slow
def test_large_frames_cross_processes_with_the_profile():
    env = dict(os.environ, FASTDDS_DEFAULT_PROFILES_FILE=str(PROFILE))
    assert env['ROS_DOMAIN_ID']  # the private domain of this test run (conftest)
    result = _run_pair(env)
    # Queues hold every frame (keep-last FRAMES), so a missing frame is one the transport lost.
    # Reliable streams must be complete. Best effort promises nothing, and on a loaded machine one
    # frame can go (seen once in a CI-like run); without the profile this harness received 1-7 of 10
    # at 1280x720 and 1-8 of 10 at 1920x1080, so 90 % still tells the profile's transport from UDP.
    for name, received in result['intact'].items():
        wanted = FRAMES if name.endswith('_reliable') else BEST_EFFORT_MIN_SHARE * FRAMES
        assert received >= wanted, (name, result)
    assert not any(result['damaged'].values()), result
