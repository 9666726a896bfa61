"""Residual Attention U-Net (Chen, Yao, Zhang 2020), its ablations, and a ResNet34 attention-gate variant."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from napari_covidseg.models.blocks import (
    AttentionGate,
    BasicResBlock,
    ConvNormAct,
    DoubleConv,
    Norm,
    PadMode,
    ResNeXtBlock,
    SpatialSelfAttention,
    crop_padding,
    init_weights,
    pad_to_multiple,
)
from napari_covidseg.models.registry import Architecture, register

PAPER = (
    "X. Chen, L. Yao, Y. Zhang, 'Residual Attention U-Net for Automated Multi-Class Segmentation of COVID-19 "
    "Chest CT Images', arXiv:2004.05645, 2020"
)
PAPER_RESNET34 = (
    "Ye Duansheng, Hua Yunsong, ResAttUnet: U-Net with a ResNet34 encoder and attention gates for "
    "COVID-19 CT lesion segmentation (in Chinese), Software Engineering and Applications, 2022, "
    "doi:10.12677/sea.2022.116154; "
    "attention gate after "
    "O. Oktay et al., 'Attention U-Net: Learning Where to Look for the Pancreas', MIDL 2018"
)

Encoder = Literal["resnext", "plain", "resnet34"]
StageAttention = Literal["none", "gate", "self"]


class _DecoderStage(nn.Module):
    """Transposed-conv up-sampling, attention, concatenation with the skip, two 3x3 convs."""

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        attention: StageAttention,
        num_heads: int,
        max_kv_tokens: int,
        norm: Norm,
    ) -> None:
        super().__init__()
        self.attention = attention
        self.up = nn.ConvTranspose2d(in_channels, skip_channels, 2, 2)
        self.gate = AttentionGate(skip_channels, skip_channels, norm=norm) if attention == "gate" else None
        self.self_attention = (
            SpatialSelfAttention(2 * skip_channels, num_heads, max_kv_tokens) if attention == "self" else None
        )
        self.conv = DoubleConv(2 * skip_channels, skip_channels, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.up(x)
        if self.gate is not None:
            skip = self.gate(skip, up)
        y = torch.cat([skip, up], dim=1)
        if self.self_attention is not None:
            y = self.self_attention(y)
        return self.conv(y)


class ResAttUNet(nn.Module):
    """Residual Attention U-Net: aggregated-residual (ResNeXt) encoder and attention in every decoder stage.

    Chen, Yao, Zhang, "Residual Attention U-Net for Automated Multi-Class Segmentation of COVID-19 Chest CT
    Images", arXiv:2004.05645, 2020. The U-Net encoder stages are replaced by ResNeXt blocks (grouped 3x3 conv
    with ``cardinality`` paths); the decoder is the U-Net decoder (2x2 transposed conv, concatenation, two 3x3
    convs) with soft attention after the concatenation. The paper's LSH attention is memory-cheap multi-head
    scaled dot-product self-attention; here it is exact multi-head self-attention over the spatial positions
    (``SpatialSelfAttention``, keys/values pooled beyond ``max_kv_tokens``), used at the coarse decoder stages
    (at most ``attention_max_tokens`` positions for an ``attention_ref_size`` input). Finer stages, where full
    self-attention is too costly, get an additive attention gate on the skip instead (Oktay et al. 2018), so
    every decoder stage has attention. Which stages get which is fixed at construction, not by the input size.

    Switches reproduce the paper's ablations and the ResNet34 variant:

    * ``use_attention=False``: no attention (ablation M-A).
    * ``encoder="plain"``: U-Net double-conv encoder (ablation M-R, close to Attention U-Net).
    * ``encoder="resnet34"``: Ye & Hua 2022 (ResAttUnet, in Chinese): ResNet34 encoder (7x7 stride-2 stem,
      3x3 max-pool, basic blocks 3, 4, 6, 3 with widths 64, 128, 256, 512 scaled by ``base_width / 64``),
      U-Net decoder with an attention gate ``alpha = sigmoid(psi(ReLU(W_g g + W_x x)))`` on every skip (``g``
      the up-sampled decoder features), a last transposed-conv up-sampling to the input size and a 1x1 head.
      ``depth`` must be 4; the total stride is 32. ``attention_max_tokens`` defaults to 0 (gates only).

    The input is padded to a multiple of the total stride and the logits cropped back, so any ``H, W`` works.

    Args:
        in_channels: image channels.
        num_classes: output channels (logits).
        base_width: channels of the first stage (widths double per stage).
        depth: number of down-samplings (resnext/plain encoders).
        encoder: ``"resnext"``, ``"plain"`` or ``"resnet34"``.
        use_attention: attention in the decoder (False = ablation M-A).
        cardinality: ResNeXt groups.
        bottleneck_ratio: ResNeXt inner width relative to the stage width.
        blocks_per_stage: ResNeXt blocks per encoder stage.
        attention_max_tokens: self-attention at decoder stages with at most this many positions at
            ``attention_ref_size``; default 1024 (32x32: the first decoder stage at 256x256, depth 4), 0 for
            ``encoder="resnet34"``.
        attention_ref_size: reference input side for ``attention_max_tokens``.
        num_heads: self-attention heads.
        max_kv_tokens: key/value positions above which self-attention pools keys and values.
        norm: normalisation of the conv layers.
        pad_mode: ``"reflect"``, ``"replicate"`` or ``"constant"``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 4,
        base_width: int = 32,
        depth: int = 4,
        encoder: Encoder = "resnext",
        use_attention: bool = True,
        cardinality: int = 8,
        bottleneck_ratio: float = 1.0,
        blocks_per_stage: int = 2,
        attention_max_tokens: int | None = None,
        attention_ref_size: int = 256,
        num_heads: int = 8,
        max_kv_tokens: int = 1024,
        norm: Norm = "batch",
        pad_mode: PadMode = "reflect",
    ) -> None:
        super().__init__()
        self.pad_mode = pad_mode
        self.encoder_name = encoder
        if encoder == "resnet34":
            if depth != 4:
                raise ValueError("encoder='resnet34' has a fixed layout: depth must be 4")
            skip_channels, skip_strides, bottom = self._build_resnet34(in_channels, base_width, norm)
        elif encoder in ("resnext", "plain"):
            skip_channels, skip_strides, bottom = self._build_unet_encoder(
                in_channels, base_width, depth, encoder, cardinality, bottleneck_ratio, blocks_per_stage, norm
            )
        else:
            raise ValueError(f"unknown encoder {encoder!r}; use 'resnext', 'plain' or 'resnet34'")
        self.stride = skip_strides[-1] * 2
        if attention_max_tokens is None:
            attention_max_tokens = 0 if encoder == "resnet34" else 1024
        self.stage_attention: list[StageAttention] = []
        self.decoder = nn.ModuleList()
        channels = bottom
        for ch, st in zip(reversed(skip_channels), reversed(skip_strides)):
            kind: StageAttention = "none"
            if use_attention:
                kind = "self" if (attention_ref_size // st) ** 2 <= attention_max_tokens else "gate"
            self.stage_attention.append(kind)
            self.decoder.append(_DecoderStage(channels, ch, kind, num_heads, max_kv_tokens, norm))
            channels = ch
        self.final_up: nn.Module = nn.Identity()
        if skip_strides[0] > 1:  # resnet34: the finest skip is at stride 2
            half = max(channels // 2, 1)
            up = nn.ConvTranspose2d(channels, half, 2, 2)
            self.final_up = nn.Sequential(up, ConvNormAct(half, half, norm=norm))
            channels = half
        self.head = nn.Conv2d(channels, num_classes, 1)
        init_weights(self)

    def _build_unet_encoder(
        self,
        in_channels: int,
        base_width: int,
        depth: int,
        encoder: str,
        cardinality: int,
        ratio: float,
        nb: int,
        norm: Norm,
    ) -> tuple[list[int], list[int], int]:
        widths = [base_width * 2**i for i in range(depth + 1)]

        def stage(cin: int, cout: int) -> list[nn.Module]:
            if encoder == "plain":
                return [DoubleConv(cin, cout, norm)]
            return [ResNeXtBlock(cout if b else cin, cout, cardinality, ratio, 1, norm) for b in range(nb)]

        stem = ConvNormAct(in_channels, widths[0], norm=norm)
        self.stages = nn.ModuleList([nn.Sequential(stem, *stage(widths[0], widths[0]))])
        for i in range(1, depth + 1):
            self.stages.append(nn.Sequential(nn.MaxPool2d(2), *stage(widths[i - 1], widths[i])))
        return widths[:depth], [2**i for i in range(depth)], widths[depth]

    def _build_resnet34(self, in_ch: int, base_width: int, norm: Norm) -> tuple[list[int], list[int], int]:
        w = [max(1, round(c * base_width / 64)) for c in (64, 128, 256, 512)]

        def layer(cin: int, cout: int, n: int, stride: int) -> list[nn.Module]:
            return [BasicResBlock(cout if b else cin, cout, 1 if b else stride, norm) for b in range(n)]

        self.stages = nn.ModuleList(
            [
                ConvNormAct(in_ch, w[0], 7, 2, norm=norm),
                nn.Sequential(nn.MaxPool2d(3, 2, 1), *layer(w[0], w[0], 3, 1)),
                nn.Sequential(*layer(w[0], w[1], 4, 2)),
                nn.Sequential(*layer(w[1], w[2], 6, 2)),
                nn.Sequential(*layer(w[2], w[3], 3, 2)),
            ]
        )
        return [w[0], w[0], w[1], w[2]], [2, 4, 8, 16], w[3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, pads = pad_to_multiple(x, self.stride, self.pad_mode)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        for dec in self.decoder:
            x = dec(x, skips.pop())
        return crop_padding(self.head(self.final_up(x)), pads)


_COMMON = {"base_width": 32}
for _name, _config, _summary, _paper in [
    (
        "resattunet",
        {"depth": 4, "encoder": "resnext", "use_attention": True, "cardinality": 8},
        "Residual Attention U-Net: ResNeXt encoder, decoder self-attention (coarse) / attention gates (fine)",
        PAPER,
    ),
    (
        "resattunet_no_attention",
        {"depth": 4, "encoder": "resnext", "use_attention": False, "cardinality": 8},
        "Residual Attention U-Net ablation M-A: ResNeXt encoder, no attention",
        PAPER,
    ),
    (
        "resattunet_plain_encoder",
        {"depth": 4, "encoder": "plain", "use_attention": True},
        "Residual Attention U-Net ablation M-R: plain double-conv encoder, decoder attention kept",
        PAPER,
    ),
    (
        "resattunet_resnet34_ag",
        {"encoder": "resnet34", "use_attention": True},
        "ResAttUnet: ResNet34 encoder (3,4,6,3 basic blocks), attention gate on every skip",
        PAPER_RESNET34,
    ),
]:
    register(
        Architecture(
            name=_name,
            builder=ResAttUNet,
            task="segmentation",
            spatial_dims=2,
            default_config={**_COMMON, **_config},
            summary=_summary,
            paper=_paper,
        )
    )
