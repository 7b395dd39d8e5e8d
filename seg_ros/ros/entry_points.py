"""Entry points of the node executables (``bin/<name>`` and ``lib/seg_ros/<name>``).

The stop-signal handlers (``stopping``) go in before the node's module is imported: rclpy and torch
take seconds to load, and a Ctrl-C in those seconds must end the process as quietly as one later
(exit code 0, no traceback). Only the standard library is imported here.
"""

from __future__ import annotations

import importlib

from seg_ros.ros.stopping import stop_on_signals, stop_requested

__all__ = ['sample_camera', 'segment_lifecycle_node', 'segment_node']


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
