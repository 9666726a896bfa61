"""U-Net (Ronneberger et al. 2015): the baseline of the segmentation papers."""

from __future__ import annotations

import torch
from torch import nn

from napari_covidseg.models.blocks import (
    DoubleConv,
    Norm,
    PadMode,
    crop_padding,
    init_weights,
    pad_to_multiple,
)
from napari_covidseg.models.registry import Architecture, register

PAPER = (
    "O. Ronneberger, P. Fischer, T. Brox, 'U-Net: Convolutional Networks for Biomedical Image Segmentation', "
    "MICCAI 2015"
)


class UNet(nn.Module):
    """U-Net for 2D slice segmentation.

    Ronneberger, Fischer, Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation", MICCAI
    2015. Each stage has two 3x3 conv-norm-ReLU layers ("same" padding, so no cropping of skips); 2x2
    max-pooling down, 2x2 transposed convolution up (halving the channels), concatenated skips, 1x1 head.
    Widths double at every down-sampling. The input is padded to a multiple of ``2**depth`` and the logits
    cropped back, so any ``H, W >= 1`` works.

    Args:
        in_channels: image channels.
        num_classes: output channels (logits, no softmax).
        base_width: channels of the first stage (64 in the paper).
        depth: number of down-samplings (4 in the paper).
        norm: ``"batch"``, ``"instance"``, ``"group"`` or ``"none"`` (the 2015 paper has none).
        pad_mode: how the input is padded to a multiple of the stride: ``"reflect"``, ``"replicate"`` or
            ``"constant"`` (zeros).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 4,
        base_width: int = 32,
        depth: int = 4,
        norm: Norm = "batch",
        pad_mode: PadMode = "reflect",
    ) -> None:
        super().__init__()
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.stride = 2**depth
        self.pad_mode = pad_mode
        self.encoder = nn.ModuleList([DoubleConv(in_channels, widths[0], norm)])
        self.encoder.extend(DoubleConv(widths[i - 1], widths[i], norm) for i in range(1, depth + 1))
        self.pool = nn.MaxPool2d(2)
        levels = list(reversed(range(depth)))
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, 2) for i in levels)
        self.decoder = nn.ModuleList(DoubleConv(2 * widths[i], widths[i], norm) for i in levels)
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, pads = pad_to_multiple(x, self.stride, self.pad_mode)
        skips = []
        for i, stage in enumerate(self.encoder):
            x = stage(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, dec in zip(self.up, self.decoder):
            x = dec(torch.cat([skips.pop(), up(x)], dim=1))
        return crop_padding(self.head(x), pads)


register(
    Architecture(
        name="unet",
        builder=UNet,
        task="segmentation",
        spatial_dims=2,
        default_config={"base_width": 32, "depth": 4},
        summary="U-Net baseline: double 3x3 convs, max-pool down, transposed-conv up, concatenated skips",
        paper=PAPER,
    )
)
