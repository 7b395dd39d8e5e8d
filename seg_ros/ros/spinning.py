"""rclpy set up for a node process that stops cleanly at any moment (see ``stopping``).

rclpy's own handler shuts the context down on SIGINT at once, under a frame being published, and
leaves later signals to raise inside the clean-up; ``init`` installs ``stop_on_signals`` instead,
in the mode that only records the stop, and ``spin`` checks it between short waits (the Python
handler runs only when the main thread is in Python).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TypeVar

import rclpy
from rclpy.executors import Executor, ExternalShutdownException, SingleThreadedExecutor
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from seg_ros.ros.stopping import defer_stops, stop_on_signals, stop_requested

__all__ = ['init', 'run_node', 'spin']

NodeT = TypeVar('NodeT', bound=Node)

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


def run_node(make_node: Callable[[], NodeT], args: list[str] | None, *, name: str,
             startup_errors: tuple[type[Exception], ...], exit_code: Callable[[NodeT], int],
             done: Callable[[NodeT], Callable[[], bool]] | None = None) -> int:
    """A node process from start to exit: rclpy up, the node made and spun until ``done``, a stop signal
    or shutdown, everything torn down. A ``startup_errors`` exception is logged under ``name`` as one
    line (exit code 1); otherwise the exit code is ``exit_code(node)``."""
    executor = node = None
    try:
        init(args)
        executor = SingleThreadedExecutor()
        node = make_node()
        executor.add_node(node)
        spin(executor, **({'done': done(node)} if done else {}))
    except startup_errors as error:
        get_logger(name).error(str(error))
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        if node is not None:
            node.destroy_node()
        if executor is not None:
            executor.shutdown()
        rclpy.try_shutdown()
    return exit_code(node) if node is not None else 0
