"""Inference-only graph rewrites: batch-norm folding.

Folding needs to know which batch-norm reads which convolution's output, which the module tree
alone does not say. One traced forward answers it: a hook records each convolution's output
tensor, and a batch-norm whose input *is* that tensor (and the convolution's only reader) is folded
into it. The folded network is checked against the original on the traced input; a mismatch
keeps the original, so a network with an unusual wiring is never silently broken.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

__all__ = ['fold_batchnorm']

log = logging.getLogger(__name__)

_FOLDABLE = (nn.Conv2d, nn.ConvTranspose2d)


def _trace_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """(conv name, batch-norm name) pairs where the batch-norm is the conv output's sole reader."""
    produced: dict[int, str] = {}
    readers: dict[str, list[str]] = {}
    keep_alive: list[torch.Tensor] = []
    hooks = []

    def on_conv(name: str):
        def hook(_module, _inputs, output):
            produced[id(output)] = name
            keep_alive.append(output)
        return hook

    def on_any(name: str):
        def hook(_module, inputs):
            for tensor in inputs:
                if isinstance(tensor, torch.Tensor) and id(tensor) in produced:
                    readers.setdefault(produced[id(tensor)], []).append(name)
        return hook

    for name, module in model.named_modules():
        if isinstance(module, _FOLDABLE):
            hooks.append(module.register_forward_hook(on_conv(name)))
        if not list(module.children()):
            hooks.append(module.register_forward_pre_hook(on_any(name)))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    modules = dict(model.named_modules())
    return [(conv, users[0]) for conv, users in readers.items()
            if len(users) == 1 and isinstance(modules[users[0]], nn.BatchNorm2d)]


def _fold(conv: nn.Module, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias.detach() - bn.running_mean * scale
    weight = conv.weight.detach()
    if isinstance(conv, nn.ConvTranspose2d):
        # weight is (in, out / groups, kh, kw): output channel o = g * (out / groups) + j.
        groups = conv.groups
        w = weight.view(groups, weight.shape[0] // groups, weight.shape[1], *weight.shape[2:])
        w = w * scale.view(groups, 1, -1, 1, 1)
        conv.weight.data = w.reshape_as(weight)
    else:
        conv.weight.data = weight * scale.view(-1, 1, 1, 1)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(shift)
    conv.bias = nn.Parameter(bias * scale + shift)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition('.')
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def fold_batchnorm(model: nn.Module, example: torch.Tensor, atol: float = 1e-4) -> nn.Module:
    """A copy of ``model`` (in eval mode) with batch-norms folded into their convolutions."""
    model = model.eval()
    folded = copy.deepcopy(model)
    pairs = _trace_pairs(folded, example)
    modules = dict(folded.named_modules())
    for conv_name, bn_name in pairs:
        _fold(modules[conv_name], modules[bn_name])
        _replace(folded, bn_name, nn.Identity())
    with torch.no_grad():
        reference, result = model(example), folded(example)
    error = (reference - result).abs().max().item()
    scale = reference.abs().max().item() + 1e-6
    if error > atol * max(scale, 1.0):
        log.warning('batch-norm folding changed the output by %.3g; keeping the unfolded network', error)
        return model
    log.debug('folded %d batch-norm layers (max output change %.2g)', len(pairs), error)
    return folded
