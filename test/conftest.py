"""Shared test set-up: a private DDS domain per run, small thread pools, shared fixtures."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# A private DDS domain for this run (set before rclpy is imported anywhere), so parallel runs on
# one machine never hear each other.
os.environ.setdefault('ROS_DOMAIN_ID', str(100 + os.getpid() % 100))
os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE',
                      str(Path(__file__).resolve().parents[1] / 'config' / 'fastdds.xml'))
# Decisions of the automatic backend choice go to a cache of this run, not the user's.
os.environ['XDG_CACHE_HOME'] = tempfile.mkdtemp(prefix='seg_ros_test_cache_')

import torch

# One thread: on a small shared machine torch oversubscribes the cores and slows by an order of
# magnitude; the tests measure behaviour, not speed.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
CAMVID_ROOT = REPO.parent / 'shared' / 'data' / 'camvid'


@pytest.fixture(scope='module')
def ros():
    """A private rclpy context whose probe node publishes frames and records what comes back."""
    from test.support.ros import Ros  # rclpy loads only for the tests that use it

    ros = Ros()
    yield ros
    ros.close()


@pytest.fixture
def one_thread():
    """One torch thread for the test, whatever an earlier test set: tiny networks train far faster on
    one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption('--run-reliability', action='store_true',
                     help='run the long soak / flood / fuzz / fault tests (marker: reliability)')


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption('--run-reliability'):
        return
    # Deselected rather than skipped: the default run is the quick suite, not a list of skips.
    # By marker, not keyword: every test under test/reliability/ has the keyword 'reliability'.
    long_runs = [item for item in items if item.get_closest_marker('reliability')]
    if long_runs:
        config.hook.pytest_deselected(items=long_runs)
        items[:] = [item for item in items if not item.get_closest_marker('reliability')]


@pytest.fixture(scope='session')
def camvid_root() -> Path:
    """The real CamVid frames in ../shared; the tests that need them skip, with the reason, where they
    are absent (a clone outside this workspace)."""
    if not (CAMVID_ROOT / 'train.txt').is_file():
        pytest.skip(f'CamVid not found at {CAMVID_ROOT}: the tests on real frames need ../shared/data/camvid')
    return CAMVID_ROOT
