"""What every network shares: any input size in, logits at the input size out."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['SegmentationNet']


def is_symbolic() -> bool:
    """Whether the forward is being traced or exported (ONNX, ``torch.export``) rather than run."""
    return torch.jit.is_tracing() or torch.compiler.is_exporting()


class SegmentationNet(nn.Module):
    """Base class of the networks.

    Subclasses implement ``forward_padded`` for inputs whose height and width are multiples of
    ``size_divisor`` (the product of the network's down-sampling strides). ``forward`` pads any
    other size on the bottom and right, and crops the outputs back, so a network accepts 1242x375
    as readily as 480x360. Padding, unlike resizing, keeps every output pixel aligned with its
    input pixel.

    ``forward_padded`` returns logits, or a tuple whose first item is the logits and whose other
    items are training-only outputs (DSNet's class-presence logits, ...). Keyword options select
    training-only paths (ERFNet's ``encoder_only``) and go through ``forward`` so that wrappers
    such as DistributedDataParallel see every call. 4-D outputs at a lower resolution are
    cropped in proportion.
    """

    size_divisor: int = 8

    def forward_padded(self, x: torch.Tensor, **options):  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor, **options):
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f'{type(self).__name__} expects a (batch, 3, height, width) tensor, got shape '
                f'{tuple(x.shape)}; add a batch dimension with x.unsqueeze(0) or convert to RGB'
            )
        height, width = x.shape[-2:]
        pad_h = (-height) % self.size_divisor
        pad_w = (-width) % self.size_divisor
        # A traced or exported graph pads and crops by the amounts computed from the shape, always,
        # so that it serves every input size and not only the one it was traced at; eager calls skip
        # the copy that a zero padding would cost.
        if not (is_symbolic() or pad_h or pad_w):
            return self.forward_padded(x, **options)
        padded = F.pad(x, (0, pad_w, 0, pad_h))
        out = self.forward_padded(padded, **options)

        def crop(t: torch.Tensor) -> torch.Tensor:
            if t.dim() != 4:
                return t
            # ceil(height * t_height / padded_height) in integer arithmetic, which traces.
            keep_h = (height * t.shape[-2] + padded.shape[-2] - 1) // padded.shape[-2]
            keep_w = (width * t.shape[-1] + padded.shape[-1] - 1) // padded.shape[-1]
            return t[..., :keep_h, :keep_w]

        return tuple(crop(t) for t in out) if isinstance(out, tuple) else crop(out)
