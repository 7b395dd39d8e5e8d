"""Entry points of the node executables (``bin/<name>`` and ``lib/seg_ros/<name>``).

The stop-signal handlers go in before the node's module is imported: rclpy and torch take seconds to
load, and a Ctrl-C in those seconds must end the process as quietly as one later (exit code 0, no
traceback). Only the standard library is imported here.

SIGINT or SIGTERM raises one ``KeyboardInterrupt`` in the main thread; every later one is ignored,
so the clean-up the first one started runs to its end. That matters under ``ros2 launch``: a
terminal's Ctrl-C reaches the nodes directly and launch passes on another SIGINT, and launch sends
SIGTERM to a process that has not exited 5 s after SIGINT.
"""

from __future__ import annotations

import importlib
import signal
from types import FrameType

__all__ = ['STOP_SIGNALS', 'sample_camera', 'segment_lifecycle_node', 'segment_node', 'stop_on_signals']

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, signal.SIG_IGN)
    raise KeyboardInterrupt


def stop_on_signals() -> None:
    """The first SIGINT or SIGTERM raises KeyboardInterrupt in the main thread; later ones are ignored."""
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, _interrupt)


def _run(module: str) -> int:
    stop_on_signals()
    try:
        main = importlib.import_module(module).main
    except KeyboardInterrupt:  # stopped while loading: nothing started yet
        return 0
    return main()


def segment_node() -> int:
    return _run('seg_ros.ros.node')


def segment_lifecycle_node() -> int:
    return _run('seg_ros.ros.lifecycle_node')


def sample_camera() -> int:
    return _run('seg_ros.ros.sample_camera')
