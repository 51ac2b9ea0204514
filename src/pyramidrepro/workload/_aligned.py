"""Tensor-core widths for PyramidNet, computing the paper's function exactly.

Additive widening gives channel counts such as 21, 26, 31 ... 286; NVIDIA's convolution guide asks
for multiples of 8 on tensor cores.  :func:`widen` rounds every layer of a built PyramidNet up to a
multiple, copying its weights into the first channels and leaving every added entry zero: the
added rows and columns of each convolution and of the classifier, and the added BatchNorm scales
and shifts.  An added channel then carries exactly zero forward (a zero-weight convolution gives
0, BatchNorm of an all-zero channel gives its shift, 0), and every added entry's gradient is zero
too (it multiplies a zero activation or a zero upstream gradient), so SGD with momentum and weight
decay keeps them at zero: the network computes, and trains along, the paper's trajectory.

:func:`fit_state_dict` lets a state dict of either layout load into the other: the added channels
are dropped or added as zeros.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def aligned(channels: int, multiple: int) -> int:
    """``channels`` rounded up to a multiple of ``multiple``."""
    return -(-channels // multiple) * multiple


def widen(model: Any, multiple: int) -> None:
    """Round every layer of ``model`` (a PyramidNet) up to ``multiple`` channels, in place.

    The image's 3 input channels stay as they are; each block's shortcut keeps adding the paper's
    channels only (an added channel never feeds a real one).  Sets ``model.padding_parameters``:
    the parameters the added channels hold.
    """
    before = sum(p.numel() for p in model.parameters())
    model.stem, channels = _widen_sequence(model.stem, 3, multiple)
    for block in model.blocks:
        block.branch, out = _widen_sequence(block.branch, channels, multiple)
        block.out_channels = channels = out
    model.head_bn = _padded_batch_norm(model.head_bn, channels)
    fc = nn.Linear(channels, model.fc.out_features)
    _copy_into(fc.weight, model.fc.weight)
    _copy_into(fc.bias, model.fc.bias)
    model.fc = fc
    model.padding_parameters = sum(p.numel() for p in model.parameters()) - before


def _widen_sequence(layers: nn.Sequential, channels: int, multiple: int) -> tuple[nn.Sequential, int]:
    """``layers`` rebuilt for ``channels`` input channels, each convolution's output rounded up."""
    out = []
    for layer in layers:
        if isinstance(layer, nn.Conv2d):
            layer = _padded_conv(layer, channels, aligned(layer.out_channels, multiple))
            channels = layer.out_channels
        elif isinstance(layer, nn.BatchNorm2d):
            layer = _padded_batch_norm(layer, channels)
        out.append(layer)
    return nn.Sequential(*out), channels


def _padded_conv(conv: nn.Conv2d, cin: int, cout: int) -> nn.Conv2d:
    new = nn.Conv2d(cin, cout, conv.kernel_size, conv.stride, conv.padding, bias=False)
    _copy_into(new.weight, conv.weight)
    return new


def _padded_batch_norm(bn: nn.BatchNorm2d, channels: int) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(channels, eps=bn.eps, momentum=bn.momentum)
    _copy_into(new.weight, bn.weight)  # the added scales are zero too: an added channel ignores its input
    _copy_into(new.bias, bn.bias)
    for name in ("running_mean", "running_var"):
        getattr(new, name)[: bn.num_features].copy_(getattr(bn, name))
    return new


@torch.no_grad()
def _copy_into(target: torch.Tensor, source: torch.Tensor) -> None:
    """``target`` zeroed, with ``source`` in its leading corner."""
    target.zero_()
    target[tuple(slice(0, n) for n in source.shape)].copy_(source)


def fit_state_dict(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """A ``load_state_dict`` pre-hook: each tensor of the other layout (aligned or not) cut or
    zero-padded to this model's shape, in place in ``state_dict``."""
    for name, own in module.state_dict().items():
        key = prefix + name
        given = state_dict.get(key)
        if not isinstance(given, torch.Tensor) or given.shape == own.shape or given.dim() != own.dim():
            continue
        fitted = torch.ones_like(own) if name.endswith("running_var") else torch.zeros_like(own)
        corner = tuple(slice(0, min(a, b)) for a, b in zip(given.shape, own.shape))
        fitted[corner] = given[corner].to(own.dtype)
        state_dict[key] = fitted
