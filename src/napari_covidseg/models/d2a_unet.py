"""D2A U-Net (Zhao et al. 2021), the from-scratch variant with a VGG-style (U-Net) encoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from napari_covidseg.models.blocks import (
    ConvNormAct,
    DoubleConv,
    GateAttentionModule,
    HybridDilatedResidualAttentionBlock,
    Norm,
    PadMode,
    crop_padding,
    init_weights,
    pad_to_multiple,
)
from napari_covidseg.models.registry import Architecture, register

PAPER = (
    "X. Zhao, P. Zhang, F. Song, G. Fan, Y. Sun, Y. Wang, Z. Tian, L. Zhang, G. Zhang, 'D2A U-Net: Automatic "
    "Segmentation of COVID-19 Lesions from CT Slices with Dilated Convolution and Dual Attention Mechanism', "
    "arXiv:2102.05210, 2021"
)


class _D2ADecoderStage(nn.Module):
    """Bilinear up-sampling + 3x3 conv, GAM on the skip (guided by the coarser decoder features), RAB."""

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        use_gam: bool,
        use_rab: bool,
        dilations: Sequence[int],
        reduction: int,
        norm: Norm,
    ) -> None:
        super().__init__()
        self.up_conv = ConvNormAct(in_channels, skip_channels, 3, norm=norm)
        self.gam = GateAttentionModule(skip_channels, in_channels, reduction) if use_gam else None
        if use_rab:
            self.block: nn.Module = HybridDilatedResidualAttentionBlock(
                2 * skip_channels, skip_channels, dilations, reduction, norm
            )
        else:
            self.block = DoubleConv(2 * skip_channels, skip_channels, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.up_conv(F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False))
        if self.gam is not None:
            skip = self.gam(skip, x)
        return self.block(torch.cat([skip, up], dim=1))


class D2AUNet(nn.Module):
    """Dilated dual-attention U-Net, simplified (from scratch) version with a VGG-style encoder.

    Zhao, Zhang, Song, Fan, Sun, Wang, Tian, Zhang, Zhang, "D2A U-Net: Automatic Segmentation of COVID-19
    Lesions from CT Slices with Dilated Convolution and Dual Attention Mechanism", arXiv:2102.05210, 2021. The
    encoder is the U-Net one (two 3x3 conv-norm-ReLU per stage, 2x2 max-pool), as in the paper's "simplified
    D2A U-Net with VGG-style backbone" (the full model uses a pretrained ResNeXt-50 32x4d, not built here).
    Each decoder stage:

    * up-sampling: bilinear x2 interpolation followed by a 3x3 conv-norm-ReLU (instead of transposed conv);
    * gate attention module (GAM) on the skip: channel attention from GAP + MLP (reduce ratio 16) of the
      guiding signal (the coarser decoder features before up-sampling) times spatial attention from the
      1x1-squeezed guide (up-sampled) and skip through summed 3x3/5x5/7x7 convs and a sigmoid;
    * residual attention block (RAB) on the concatenation: 3x3 convs with dilation rates (1, 2, 5), decoder
      attention module (DAM: the same fused channel x spatial attention on one input), residual connection.

    The input is padded to a multiple of ``2**depth`` and the logits cropped back, so any ``H, W`` works.

    Args:
        in_channels: image channels.
        num_classes: output channels (logits).
        base_width: channels of the first stage (widths double per stage; 64 in the paper's VGG-style
            encoder).
        depth: number of down-samplings.
        dilations: dilation rates of the RAB's stacked convs.
        reduction: reduce ratio of the channel attention MLPs.
        use_gam: gate attention on the skips (False = ablation without GAM).
        use_rab: residual attention blocks in the decoder (False = U-Net double conv, ablation without RAB).
        norm: normalisation.
        pad_mode: ``"reflect"``, ``"replicate"`` or ``"constant"``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 4,
        base_width: int = 32,
        depth: int = 4,
        dilations: Sequence[int] = (1, 2, 5),
        reduction: int = 16,
        use_gam: bool = True,
        use_rab: bool = True,
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
        self.decoder = nn.ModuleList(
            _D2ADecoderStage(widths[i + 1], widths[i], use_gam, use_rab, tuple(dilations), reduction, norm)
            for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, pads = pad_to_multiple(x, self.stride, self.pad_mode)
        skips = []
        for i, stage in enumerate(self.encoder):
            x = stage(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for dec in self.decoder:
            x = dec(x, skips.pop())
        return crop_padding(self.head(x), pads)


register(
    Architecture(
        name="d2a_unet",
        builder=D2AUNet,
        task="segmentation",
        spatial_dims=2,
        default_config={"base_width": 32, "depth": 4},
        summary="D2A U-Net (VGG-style encoder): gate attention on skips, dilated residual attention decoder",
        paper=PAPER,
    )
)
