"""Reading bags back in tests: rosbags' own reader, decoded pixels, IoU from masks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from rosbags.rosbag2 import Reader

from seg_ros.frames.bagfiles import TYPESTORE
from seg_ros.labels import IGNORE_INDEX


def read_bag(path: Path) -> dict[str, list[tuple[int, object]]]:
    """topic -> [(bag time, deserialised message)] with rosbags' own reader."""
    messages: dict[str, list[tuple[int, object]]] = {}
    with Reader(path) as reader:
        for connection, timestamp, raw in reader.messages():
            msg = TYPESTORE.deserialize_cdr(raw, connection.msgtype)
            messages.setdefault(connection.topic, []).append((timestamp, msg))
    return messages


def pixels(msg: object) -> np.ndarray:
    """An Image's pixels, or a CompressedImage's decoded (RGB for colour), with OpenCV alone."""
    if hasattr(msg, 'format'):
        decoded = cv2.imdecode(np.asarray(msg.data, np.uint8), cv2.IMREAD_UNCHANGED)
        return decoded if decoded.ndim == 2 else decoded[..., ::-1]
    channels = {'mono8': 1, 'rgb8': 3, 'bgr8': 3}[msg.encoding]
    shape = (msg.height, msg.width) if channels == 1 else (msg.height, msg.width, channels)
    return np.asarray(msg.data, np.uint8).reshape(shape)


def iou_from_masks(predictions: list[np.ndarray], labels: list[np.ndarray], classes: int) -> np.ndarray:
    """Per-class IoU in percent, numpy only; a prediction that is no class counts against its pixel."""
    prediction = np.concatenate([p.ravel() for p in predictions])
    label = np.concatenate([t.ravel() for t in labels])
    valid = label != IGNORE_INDEX
    iou = np.full(classes, np.nan)
    for c in range(classes):
        tp = np.sum(valid & (prediction == c) & (label == c))
        union = np.sum(valid & (label == c)) + np.sum(valid & (prediction == c)) - tp
        if union:
            iou[c] = 100.0 * tp / union
    return iou

