"""Inference: the one path every frame takes, in the node, the bag tool, the benchmark and seg-eval.

- ``segmenter``: ``Segmenter`` (upload, resize, normalise, forward, arg-max, palette, statistics)
  and its ``SegmentationResult``.
- ``preparation``: a trained network made ready to serve (batch norm folded, layout, precision).
- ``backends``: PyTorch, ONNX Runtime and OpenVINO forwards, and the measured automatic choice.
- ``onnx``: the exported graph and the two backends that run it.
- ``cli``: ``seg-export``.
"""

from seg_ros.inference.segmenter import (
    SegmentationError,
    SegmentationResult,
    Segmenter,
    resolve_device,
    resolve_precision,
)

__all__ = ['SegmentationError', 'SegmentationResult', 'Segmenter', 'resolve_device', 'resolve_precision']
