"""Words every module and command shares, defined once: precisions, image files, sizes, percentages.

Sizes are (height, width) in code, as tensors and arrays hold them, and ``WIDTHxHEIGHT`` on every
command line and in every report, as cameras and the papers write them (``640x360``).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

__all__ = ['IMAGE_SUFFIXES', 'PRECISIONS', 'PRECISION_CHOICES', 'format_size', 'parse_size', 'percent',
           'percent_text', 'size_argument']

PRECISIONS = ('fp32', 'fp16', 'bf16')
"""Number formats a network runs or trains in."""

PRECISION_CHOICES = ('auto', *PRECISIONS)
"""What a user may ask for: ``auto`` lets the code measure which is fastest on the device."""

IMAGE_SUFFIXES = frozenset({'.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.ppm', '.pgm', '.webp'})
"""Image file suffixes (lower case) that folders of frames and datasets are read from."""


def parse_size(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` (``640x360``) as (height, width); ``ValueError`` naming the text otherwise."""
    try:
        width, height = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise ValueError(f'size {text!r} is not WIDTHxHEIGHT, for example 640x360') from None
    if height < 1 or width < 1:
        raise ValueError(f'size {text!r} must be positive')
    return height, width


def size_argument(text: str) -> tuple[int, int]:
    """``parse_size`` as an argparse ``type``: a bad size is a usage error naming the option."""
    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def format_size(size: Sequence[int]) -> str:
    """(height, width) as ``WIDTHxHEIGHT``."""
    return f'{size[1]}x{size[0]}'


def percent(share: float) -> float | None:
    """A share (0-1) in percent; None for an undefined (nan) score, which JSON and YAML can carry."""
    return None if math.isnan(share) else 100.0 * float(share)


def percent_text(value: float | None, missing: str = 'n/a') -> str:
    """A value already in percent, for a report: one decimal, ``missing`` where it is undefined."""
    return missing if value is None else f'{value:.1f}'
