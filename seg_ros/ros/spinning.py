"""rclpy set up for a node process that stops cleanly at any moment (see ``stopping``).

rclpy's own handler shuts the context down on SIGINT at once, under a frame being published, and
leaves later signals to raise inside the clean-up; ``init`` installs ``stop_on_signals`` instead,
in the mode that only records the stop, and ``spin`` checks it between short waits (the Python
handler runs only when the main thread is in Python).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import rclpy
from rclpy.executors import Executor, ExternalShutdownException
from rclpy.signals import SignalHandlerOptions

from seg_ros.ros.stopping import defer_stops, stop_on_signals, stop_requested

__all__ = ['init', 'spin']

WAIT_SLICE_SEC = 0.1  # how soon a stop signal is noticed while nothing else happens


def init(args: list[str] | None = None) -> None:
    """``rclpy.init`` with this package's stop-signal handling instead of rclpy's."""
    stop_on_signals()
    defer_stops()
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)


def spin(executor: Executor, done: Callable[[], bool] = lambda: False) -> None:
    """Spin until ``done()``, a stop signal, or the context shuts down."""
    with contextlib.suppress(ExternalShutdownException):
        while not stop_requested() and executor.context.ok() and not done():
            executor.spin_once(timeout_sec=WAIT_SLICE_SEC)
