"""PyramidNet for 32x32 inputs (Han, Kim, Kim, "Deep Pyramidal Residual Networks", CVPR 2017).

One model class; the variants (depth, widening factor alpha, basic or bottleneck blocks, additive or
multiplicative widening) are constructor arguments.  Nothing inside ``forward`` creates tensors on a
fixed device, so the same module runs on CPU, one GPU, under DataParallel, DDP and torch.compile.

``channel_multiple`` rounds every layer's channels up to a multiple (8: what tensor cores want) with
the added channels held at exactly zero (:mod:`._aligned`): the same function, the same training
trajectory and the same parameter count as the paper's widths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config.model_shape import BlockKind, Widening, block_widths, blocks_per_stage
from ._aligned import fit_state_dict, widen


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, bias=False)


class PyramidBlock(nn.Module):
    """One pyramidal residual unit, basic or bottleneck, with a parameter-free shortcut.

    The residual branch has no ReLU after the addition.  The shortcut average-pools 2x2 when the
    block downsamples and is added into the first channels of the branch's output: the paper's
    zero-padded shortcut, without allocating the zeros.
    """

    def __init__(self, in_channels: int, planes: int, stride: int, kind: BlockKind) -> None:
        super().__init__()
        self.stride = stride
        if kind == "basic":
            self.out_channels = planes
            self.branch = nn.Sequential(
                nn.BatchNorm2d(in_channels),
                _conv3x3(in_channels, planes, stride),
                nn.BatchNorm2d(planes),
                nn.ReLU(inplace=True),
                _conv3x3(planes, planes),
                nn.BatchNorm2d(planes),
            )
        else:
            self.out_channels = planes * 4
            self.branch = nn.Sequential(
                nn.BatchNorm2d(in_channels),
                _conv1x1(in_channels, planes),
                nn.BatchNorm2d(planes),
                nn.ReLU(inplace=True),
                _conv3x3(planes, planes, stride),
                nn.BatchNorm2d(planes),
                nn.ReLU(inplace=True),
                _conv1x1(planes, planes * 4),
                nn.BatchNorm2d(planes * 4),
            )
        if self.out_channels < in_channels:
            raise ValueError("pyramidal widening never narrows a block")
        self.shortcut_channels = in_channels  # the paper's input channels: an aligned model's added ones stay out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        shortcut = F.avg_pool2d(x, 2, ceil_mode=True) if self.stride != 1 else x
        n = self.shortcut_channels
        if shortcut.shape[1] == out.shape[1] == n:
            return out + shortcut
        # out + pad(shortcut) without the padded copy: the other channels gain zero, so they keep
        # their values.  BatchNorm's backward reads its input, not its output, so the in-place add
        # on the branch's fresh output is safe for autograd.
        out.narrow(1, 0, n).add_(shortcut.narrow(1, 0, n))
        return out


class PyramidNet(nn.Module):
    """PyramidNet for CIFAR-sized images.

    Args:
        depth: 6n+2 (basic) or 9n+2 (bottleneck), e.g. 110, 164, 272.
        alpha: widening factor summed (additive) or multiplied (multiplicative) over all blocks.
        block: ``"basic"`` or ``"bottleneck"``.
        widening: ``"additive"`` (the paper's main model) or ``"multiplicative"``.
        num_classes: classifier outputs.
        activation_checkpointing: recompute each block's activations in backward.
        channel_multiple: round every layer's channels up to this multiple, the added ones held at
            zero (1: the paper's widths as they are).  Weights are drawn as for the paper's widths,
            and a state dict of either layout loads into the other.
    """

    def __init__(
        self,
        depth: int = 110,
        alpha: float = 48,
        block: BlockKind = "basic",
        widening: Widening = "additive",
        num_classes: int = 10,
        activation_checkpointing: bool = False,
        channel_multiple: int = 1,
    ) -> None:
        super().__init__()
        n = blocks_per_stage(depth, block)
        self.activation_checkpointing = activation_checkpointing
        self.stem = nn.Sequential(_conv3x3(3, 16), nn.BatchNorm2d(16))
        blocks: list[PyramidBlock] = []
        channels = 16
        for i, planes in enumerate(block_widths(depth, alpha, block, widening)):
            stride = 2 if i in (n, 2 * n) else 1
            blk = PyramidBlock(channels, planes, stride, block)
            blocks.append(blk)
            channels = blk.out_channels
        self.blocks = nn.ModuleList(blocks)
        self.head_bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, num_classes)
        self.num_features = channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
        self.channel_multiple = channel_multiple
        self.padding_parameters = 0
        if channel_multiple > 1:
            with torch.random.fork_rng(devices=[]):  # the layers widened draw nothing from the run's stream
                widen(self, channel_multiple)
        self.register_load_state_dict_pre_hook(fit_state_dict)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for blk in self.blocks:
            if self.activation_checkpointing and self.training and x.requires_grad:
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        x = F.relu(self.head_bn(x))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm affine weights included, running statistics not), less the
    channels an aligned PyramidNet holds at zero: the paper's count either way."""
    padding = sum(getattr(m, "padding_parameters", 0) for m in model.modules())
    return sum(p.numel() for p in model.parameters() if p.requires_grad) - padding


def count_convolutions(model: nn.Module) -> int:
    """How many convolution layers the model has (what a compile's time grows with)."""
    return sum(isinstance(m, nn.Conv2d) for m in model.modules())


def count_macs(model: nn.Module, image_size: int = 32) -> int:
    """Forward multiply-accumulates for one image, counted on convolutions and linear layers."""
    total = 0

    def conv_hook(mod: nn.Conv2d, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = mod.kernel_size
        total += out.numel() // out.shape[0] * (mod.in_channels // mod.groups) * kh * kw

    def linear_hook(mod: nn.Linear, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += mod.in_features * mod.out_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


def model_info(depth: int, alpha: float, block: BlockKind, widening: Widening = "additive",
               channel_multiple: int = 1) -> dict:
    """Parameter count and forward MACs per 32x32 image for a PyramidNet variant; with a
    ``channel_multiple``, also the MACs its aligned layout computes and how many more that is."""
    model = PyramidNet(depth, alpha, block, widening)
    info = {
        "depth": depth,
        "alpha": alpha,
        "block": block,
        "widening": widening,
        "params": count_parameters(model),
        "macs_per_image": count_macs(model),
        "final_width": model.num_features,
    }
    if channel_multiple > 1:
        aligned = PyramidNet(depth, alpha, block, widening, channel_multiple=channel_multiple)
        macs = count_macs(aligned)
        info.update(channel_multiple=channel_multiple, aligned_macs_per_image=macs,
                    aligned_extra_macs=macs / info["macs_per_image"] - 1,
                    aligned_widths_already=sum(w % channel_multiple == 0 for w in _widths(model)),
                    widths=len(_widths(model)))
    return info


def _widths(model: PyramidNet) -> list[int]:
    """The output channels of every convolution."""
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
