"""QoS profiles of the segmentation node, and the event-callback import that moved after Humble."""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

try:  # Iron and later
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import SubscriptionEventCallbacks

__all__ = ['LATCHED', 'OUTPUT', 'RELIABILITY_CHOICES', 'SubscriptionEventCallbacks', 'input_qos']

RELIABILITY_CHOICES = {'best_effort': ReliabilityPolicy.BEST_EFFORT, 'reliable': ReliabilityPolicy.RELIABLE}

OUTPUT = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                    durability=DurabilityPolicy.VOLATILE)
"""Results: a reliable publisher matches both reliable and best-effort subscribers."""

LATCHED = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
"""Published once, delivered to late subscribers too (class_info)."""


def input_qos(reliability: str, depth: int) -> QoSProfile:
    """Camera subscriptions: sensor-data style (keep last ``depth``, volatile) with ``reliability``."""
    if reliability not in RELIABILITY_CHOICES:
        raise ValueError(f'qos_reliability {reliability!r} is not one of {", ".join(RELIABILITY_CHOICES)}')
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=RELIABILITY_CHOICES[reliability], durability=DurabilityPolicy.VOLATILE)
