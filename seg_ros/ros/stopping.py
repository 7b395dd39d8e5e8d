"""Stopping a node process cleanly at any moment, with the standard library alone.

The first SIGINT or SIGTERM stops the process; every later one is ignored, so the clean-up the first
one started runs to its end. That matters under ``ros2 launch``: a terminal's Ctrl-C reaches the
nodes directly and launch passes on another SIGINT, and launch sends SIGTERM to a process that has
not exited 5 s after SIGINT. While modules load, the stop raises ``KeyboardInterrupt`` (nothing has
started); once rclpy is up (``defer_stops``) it only sets ``stop_requested()``, which the spin loop
checks: raised inside rclpy's C++ calls (taking a message), the interrupt surfaced as a RuntimeError
with a traceback.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

__all__ = ['STOP_SIGNALS', 'defer_stops', 'stop_on_signals', 'stop_requested']

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
