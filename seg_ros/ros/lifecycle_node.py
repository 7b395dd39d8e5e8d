"""``segment_lifecycle_node``: ``segment_node`` as a managed (lifecycle) node, for nav2-style bring-up.

It starts unconfigured, with its parameters declared; a lifecycle manager or
``ros2 lifecycle set /segment_node <transition>`` moves it on:

- ``configure``: load the checkpoint and create the publishers. A misconfiguration fails the
  transition with the reason in the log, and the node stays unconfigured;
- ``activate``: subscribe to the cameras and segment;
- ``deactivate``: finish the frame in the network and unsubscribe: nothing is published or counted;
- ``cleanup``: destroy the publishers and free the network and its device memory;
- ``shutdown``: from any state.

Parameters, topics and all processing are ``SegmentNode``'s: this class only maps the transitions
onto its phases.
"""

from __future__ import annotations

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from seg_ros.ros.node import SegmentNode, StartupError, run

__all__ = ['ManagedSegmentNode', 'main']


class ManagedSegmentNode(SegmentNode, LifecycleNode):
    """``SegmentNode`` whose configure and activate phases wait for lifecycle transitions."""

    def _bring_up(self) -> None:
        """Nothing at construction: the transitions bring the node up."""

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure()
        except StartupError as error:
            self.get_logger().error(f'configure failed: {error}')
            self._cleanup()
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(f'configured: {self.segmenter.describe()} from {self._checkpoint_path}')
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._activate()
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        self.get_logger().info('deactivated: not subscribed, nothing published')
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._cleanup()
        self.get_logger().info('cleaned up: network and publishers released')
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        self._cleanup()
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        self._cleanup()
        return super().on_error(state)


def main(args: list[str] | None = None) -> int:
    """``segment_lifecycle_node``: unconfigured until a lifecycle transition brings it up."""
    return run(ManagedSegmentNode, args)
