"""seg-bench ``messages``: the path around the network, message to array, the Segmenter's steps, array
to message and publish."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seg_ros.bench.common import load_average, random_checkpoint, summarize_times, time_calls
from seg_ros.inference.segmenter import Segmenter
from seg_ros.vocabulary import format_size

__all__ = ['bench_messages']


def bench_messages(args: argparse.Namespace, device: torch.device, folder: Path) -> list[dict]:
    """Per node resolution: conversions, the Segmenter's pre/post-processing, publishing (ENet)."""
    import rclpy
    from sensor_msgs.msg import Image

    from seg_ros.frames.synthetic import SyntheticRoadScene

    rows = []
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node('seg_bench_messages', context=context)
        # A subscriber, so that publishing does all its work (a publisher without one may skip it).
        publisher = node.create_publisher(Image, 'seg_bench/messages', 1)
        node.create_subscription(Image, 'seg_bench/messages', lambda _msg: None, 1)
        for size in dict.fromkeys(size for _, size in args.node_configs):
            image, _ = SyntheticRoadScene(width=size[1], height=size[0]).frame(0.0)
            segmenter = Segmenter(random_checkpoint(args.node_networks[0], size, folder), device=str(device),
                                  precision=args.node_precision)
            steps = _message_steps(segmenter, image, publisher)
            for step, call in steps.items():
                times = time_calls(call, device, iterations=args.message_iterations)
                rows.append({'resolution': format_size(size), 'step': step, **summarize_times(times),
                             'load_average': load_average()})
    finally:
        rclpy.try_shutdown(context=context)
    return rows


def _message_steps(segmenter: Segmenter, image: np.ndarray, publisher: Any) -> dict[str, Callable[[], Any]]:
    """The steps of a frame's way through the node besides DDS, each as a call to time."""
    from seg_ros.ros.conversions import array_to_image, image_to_array

    batch = torch.from_numpy(image).permute(2, 0, 1)[None].float().to(segmenter.device)
    msg = array_to_image(image, 'rgb8')
    result = segmenter.segment(image, outputs={'color_mask', 'overlay'})
    mask_msg, overlay_msg = array_to_image(result.mask, 'mono8'), array_to_image(result.overlay, 'rgb8')
    # The steps of segment() one by one (its private parts: what each costs at this size).
    uploaded = segmenter._upload(image, 'rgb8')
    logits = segmenter.forward(batch)
    resize = segmenter._resize
    return {
        'camera Image -> array (image_to_array: a view)': lambda: image_to_array(msg),
        'upload (uint8 to the device, RGB order)': lambda: segmenter._upload(image, 'rgb8'),
        'resize to the input size + normalise': lambda: segmenter._normalise(
            resize(uploaded, segmenter.input_size, 'bilinear')),
        f'network forward (Segmenter.forward, {segmenter.backend} {segmenter.precision})':
            lambda: segmenter.forward(batch),
        'post-processing: soft-max, argmax, confidence, statistics':
            lambda: segmenter._postprocess(logits, uploaded, set(), 0.5),
        'post-processing: + color_mask + overlay':
            lambda: segmenter._postprocess(logits, uploaded, {'color_mask', 'overlay'}, 0.5),
        'segment, mask only (upload, forward, argmax, stats)':
            lambda: segmenter.segment(image, outputs=set()),
        'segment, mask + color_mask + overlay':
            lambda: segmenter.segment(image, outputs={'color_mask', 'overlay'}),
        'mask -> Image (array_to_image mono8)': lambda: array_to_image(result.mask, 'mono8'),
        'overlay -> Image (array_to_image rgb8)': lambda: array_to_image(result.overlay, 'rgb8'),
        'publish mask': lambda: publisher.publish(mask_msg),
        'publish overlay': lambda: publisher.publish(overlay_msg),
    }
