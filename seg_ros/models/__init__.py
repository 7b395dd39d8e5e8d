"""The networks: one module per paper, all registered by name.

>>> from seg_ros.models import build_model, list_models
>>> net = build_model('erfnet', num_classes=19)
"""

from seg_ros.models import dsnet, enet, erfnet, segfast  # noqa: F401  (registers the networks)
from seg_ros.models._base import SegmentationNet
from seg_ros.models._registry import build_model, get_model_builder, list_models, register_model

__all__ = ['SegmentationNet', 'build_model', 'count_parameters', 'get_model_builder', 'list_models',
           'register_model']


def count_parameters(model) -> int:
    """Trainable parameters, as the papers count them."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
