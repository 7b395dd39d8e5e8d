"""Entry points of the node executables (``bin/<name>`` and ``lib/seg_ros/<name>``).

The stop-signal handlers go in before the node's module is imported: rclpy and torch take seconds to
load, and a Ctrl-C in those seconds must end the process as quietly as one later (exit code 0, no
traceback). Only the standard library is imported here.

The first SIGINT or SIGTERM stops the process; every later one is ignored, so the clean-up the first
one started runs to its end. That matters under ``ros2 launch``: a terminal's Ctrl-C reaches the
nodes directly and launch passes on another SIGINT, and launch sends SIGTERM to a process that has
not exited 5 s after SIGINT. While modules load, the stop raises ``KeyboardInterrupt`` (nothing has
started); once rclpy is up (``defer_stops``) it only sets ``stop_requested()``, which the spin loop
checks: raised inside rclpy's C++ calls (taking a message), the interrupt surfaced as a RuntimeError
with a traceback.
"""

from __future__ import annotations

import importlib
import signal
import threading
from types import FrameType

__all__ = ['STOP_SIGNALS', 'defer_stops', 'sample_camera', 'segment_lifecycle_node', 'segment_node',
           'stop_on_signals', 'stop_requested']

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_stop = threading.Event()
_raise_on_stop = True


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, signal.SIG_IGN)
    _stop.set()
    if _raise_on_stop:
        raise KeyboardInterrupt


def stop_on_signals() -> None:
    """The first SIGINT or SIGTERM stops the process (see the module docstring); later ones are ignored."""
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, _on_stop_signal)


def defer_stops() -> None:
    """From now on a stop signal only sets ``stop_requested()`` instead of raising KeyboardInterrupt."""
    global _raise_on_stop
    _raise_on_stop = False


def stop_requested() -> bool:
    """Whether SIGINT or SIGTERM has arrived."""
    return _stop.is_set()


def _run(module: str) -> int:
    stop_on_signals()
    try:
        main = importlib.import_module(module).main
    except KeyboardInterrupt:  # stopped while loading: nothing started yet
        return 0
    except Exception:
        # Raised inside a C extension's initialisation (rclpy's), the interrupt surfaces as that
        # module's ImportError: after a stop signal, a failed import is the stop, not a fault.
        if stop_requested():
            return 0
        raise
    return main()


def segment_node() -> int:
    return _run('seg_ros.ros.node')


def segment_lifecycle_node() -> int:
    return _run('seg_ros.ros.lifecycle_node')


def sample_camera() -> int:
    return _run('seg_ros.ros.sample_camera')
