"""Building blocks shared by the networks.

Convolution-normalisation-activation, residual blocks (basic and ResNeXt), attention modules (Oktay attention
gate, squeeze-and-excitation channel attention, multi-kernel spatial attention, the gate and decoder attention
modules of D2A U-Net, the hybrid-dilated residual attention block), spatial self-attention, and the helpers
that pad an image to a multiple of a network's stride and crop the logits back.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Norm = Literal["batch", "instance", "group", "none"]
PadMode = Literal["reflect", "replicate", "constant"]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def make_norm(norm: Norm | None, channels: int, spatial_dims: int = 2) -> nn.Module:
    """Normalisation layer by name: ``"batch"``, ``"instance"`` (affine), ``"group"`` or ``"none"``."""
    if norm in (None, "none"):
        return nn.Identity()
    if norm == "batch":
        return (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[spatial_dims - 1](channels)
    if norm == "instance":
        instance = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)[spatial_dims - 1]
        return instance(channels, affine=True)
    if norm == "group":
        return nn.GroupNorm(math.gcd(channels, 32), channels)
    raise ValueError(f"unknown norm {norm!r}; use 'batch', 'instance', 'group' or 'none'")


class ConvNormAct(nn.Sequential):
    """Convolution ("same" padding for odd kernels), normalisation, optional ReLU.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: kernel size (int, same along every axis) or per-axis tuple.
        stride: stride (int or tuple).
        dilation: dilation rate.
        groups: convolution groups.
        norm: normalisation (see ``make_norm``); the convolution has a bias only when there is none.
        act: whether to end with ReLU.
        spatial_dims: 1, 2 or 3.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] = 1,
        dilation: int = 1,
        groups: int = 1,
        norm: Norm | None = "batch",
        act: bool = True,
        spatial_dims: int = 2,
    ) -> None:
        ks = (kernel_size,) * spatial_dims if isinstance(kernel_size, int) else tuple(kernel_size)
        padding = tuple(dilation * (k - 1) // 2 for k in ks)
        use_bias = norm in (None, "none")
        conv = _CONV[spatial_dims](in_channels, out_channels, ks, stride, padding, dilation, groups, use_bias)
        layers: list[nn.Module] = [conv, make_norm(norm, out_channels, spatial_dims)]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class DoubleConv(nn.Sequential):
    """Two 3x3 conv-norm-ReLU layers (the U-Net stage). Args: in_channels, out_channels, norm."""

    def __init__(self, in_channels: int, out_channels: int, norm: Norm = "batch") -> None:
        super().__init__(
            ConvNormAct(in_channels, out_channels, norm=norm),
            ConvNormAct(out_channels, out_channels, norm=norm),
        )


class BasicResBlock(nn.Module):
    """ResNet basic block: two 3x3 convs, optional attention on the residual branch, projection shortcut.

    He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the first conv (and of the projection shortcut).
        norm: normalisation.
        spatial_dims: 2 or 3.
        attention: module applied to the residual branch before the addition (e.g. SE), or ``None``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int | Sequence[int] = 1,
        norm: Norm = "batch",
        spatial_dims: int = 2,
        attention: nn.Module | None = None,
    ) -> None:
        super().__init__()
        dims = spatial_dims
        self.conv1 = ConvNormAct(in_channels, out_channels, 3, stride, norm=norm, spatial_dims=dims)
        self.conv2 = ConvNormAct(out_channels, out_channels, 3, norm=norm, act=False, spatial_dims=dims)
        self.attention = attention if attention is not None else nn.Identity()
        strided = any(s != 1 for s in ((stride,) if isinstance(stride, int) else stride))
        self.shortcut: nn.Module = nn.Identity()
        if strided or in_channels != out_channels:
            proj = ConvNormAct(in_channels, out_channels, 1, stride, norm=norm, act=False, spatial_dims=dims)
            self.shortcut = proj
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.attention(self.conv2(self.conv1(x))) + self.shortcut(x))


class ResNeXtBlock(nn.Module):
    """Aggregated residual transformation (ResNeXt bottleneck): 1x1 reduce, grouped 3x3, 1x1 expand, shortcut.

    Xie et al., "Aggregated Residual Transformations for Deep Neural Networks", CVPR 2017. The ``cardinality``
    parallel paths are the groups of the 3x3 convolution (the equivalent form (c) of that paper).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        cardinality: number of aggregated transformations (groups of the 3x3 conv).
        bottleneck_ratio: inner width relative to ``out_channels`` (rounded up to a multiple of
            ``cardinality``).
        stride: stride of the grouped conv.
        norm: normalisation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cardinality: int = 8,
        bottleneck_ratio: float = 0.5,
        stride: int = 1,
        norm: Norm = "batch",
    ) -> None:
        super().__init__()
        mid = math.ceil(max(1.0, out_channels * bottleneck_ratio) / cardinality) * cardinality
        self.body = nn.Sequential(
            ConvNormAct(in_channels, mid, 1, norm=norm),
            ConvNormAct(mid, mid, 3, stride, groups=cardinality, norm=norm),
            ConvNormAct(mid, out_channels, 1, norm=norm, act=False),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = ConvNormAct(in_channels, out_channels, 1, stride, norm=norm, act=False)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class AttentionGate(nn.Module):
    """Additive attention gate on a skip connection: ``x_hat = sigmoid(psi(ReLU(W_x x + W_g g))) * x``.

    Oktay et al., "Attention U-Net: Learning Where to Look for the Pancreas", MIDL 2018. ``W_x``, ``W_g`` and
    ``psi`` are 1x1 convs (with normalisation); when ``g`` is coarser than ``x``, ``W_g g`` is upsampled
    bilinearly to the size of ``x``.

    Args:
        x_channels: channels of the gated (skip) features.
        g_channels: channels of the gating signal.
        inter_channels: channels of ``A = W_x x + W_g g``; default ``x_channels // 2``.
        norm: normalisation.
    """

    def __init__(
        self,
        x_channels: int,
        g_channels: int,
        inter_channels: int | None = None,
        norm: Norm = "batch",
    ) -> None:
        super().__init__()
        inter = inter_channels or max(x_channels // 2, 1)
        self.w_x = ConvNormAct(x_channels, inter, 1, norm=norm, act=False)
        self.w_g = ConvNormAct(g_channels, inter, 1, norm=norm, act=False)
        self.psi = ConvNormAct(inter, 1, 1, norm=norm, act=False)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        gg = self.w_g(g)
        if gg.shape[-2:] != x.shape[-2:]:
            gg = F.interpolate(gg, size=x.shape[-2:], mode="bilinear", align_corners=False)
        alpha = torch.sigmoid(self.psi(F.relu(self.w_x(x) + gg)))
        return x * alpha


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation channel attention: ``sigmoid(W1 ReLU(W0 GAP(x)))``, ``W0``/``W1`` 1x1 convs.

    Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018. ``forward`` rescales ``x``; ``attention_map``
    returns the ``(B, out_channels, 1, ...)`` weights, which may drive features other than the input (the D2A
    gate attention computes them from the guiding signal).

    Args:
        channels: input channels.
        out_channels: channels of the attention map; default ``channels``.
        reduction: reduction ratio ``r`` of the hidden layer (at least ``min_hidden`` units).
        spatial_dims: 2 or 3.
        min_hidden: lower bound of the hidden width (narrow layers would otherwise get 0 units).
    """

    def __init__(
        self,
        channels: int,
        out_channels: int | None = None,
        reduction: int = 16,
        spatial_dims: int = 2,
        min_hidden: int = 4,
    ) -> None:
        super().__init__()
        hidden = max(channels // reduction, min_hidden)
        conv = _CONV[spatial_dims]
        self.mlp = nn.Sequential(
            conv(channels, hidden, 1), nn.ReLU(inplace=True), conv(hidden, out_channels or channels, 1)
        )
        self.spatial_dims = spatial_dims

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=tuple(range(2, 2 + self.spatial_dims)), keepdim=True)
        return torch.sigmoid(self.mlp(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention_map(x)


class SpatialAttention(nn.Module):
    """Multi-kernel spatial attention ``sigmoid(conv3x3(s) + conv5x5(s) + conv7x7(s))`` of a small map ``s``.

    The spatial branch of the D2A U-Net attention modules (Zhao et al. 2021); with ``kernel_sizes=(7,)`` and
    ``s = [mean_c(x), max_c(x)]`` it is the CBAM spatial attention (Woo et al., ECCV 2018). Returns the
    ``(B, 1, H, W)`` map.

    Args:
        in_maps: channels of ``s``.
        kernel_sizes: kernels of the summed convolutions.
    """

    def __init__(self, in_maps: int = 1, kernel_sizes: Sequence[int] = (3, 5, 7)) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(in_maps, 1, k, padding=k // 2) for k in kernel_sizes)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(sum(conv(s) for conv in self.convs))


class GateAttentionModule(nn.Module):
    """D2A U-Net gate attention module (GAM): fused channel x spatial attention on skip features ``x``.

    Zhao et al., "D2A U-Net: Automatic Segmentation of COVID-19 Lesions from CT Slices with Dilated
    Convolution and Dual Attention Mechanism", 2021. Channel attention ``M_c = sigmoid(W1 ReLU(W0 GAP(g)))``
    comes from the guiding signal ``g`` (deeper, coarser decoder features; reduce ratio 16). Spatial
    attention: ``g`` and ``x`` are each squeezed to one channel by a 1x1 conv, the squeezed ``g`` is upsampled
    to the size of ``x``, the two maps are concatenated and passed through summed 3x3/5x5/7x7 convs and a
    sigmoid (the paper does not say how the two squeezed maps are combined; concatenation contains the sum as
    a special case). Output ``x * M_c * M_s``.

    Args:
        x_channels: channels of the features to refine.
        g_channels: channels of the guiding signal.
        reduction: reduce ratio of the channel MLP.
    """

    def __init__(self, x_channels: int, g_channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.channel = ChannelAttention(g_channels, x_channels, reduction)
        self.squeeze_x = nn.Conv2d(x_channels, 1, 1)
        self.squeeze_g = nn.Conv2d(g_channels, 1, 1)
        self.spatial = SpatialAttention(in_maps=2)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        sg = F.interpolate(self.squeeze_g(g), size=x.shape[-2:], mode="bilinear", align_corners=False)
        m_s = self.spatial(torch.cat([self.squeeze_x(x), sg], dim=1))
        return x * self.channel.attention_map(g) * m_s


class DecoderAttentionModule(nn.Module):
    """D2A U-Net decoder attention module (DAM): the GAM's fused channel x spatial attention on one input.

    Zhao et al. 2021 (see ``GateAttentionModule``):
    ``x * sigmoid(MLP(GAP(x))) * sigmoid(sum_k conv_k(1x1(x)))``.

    Args:
        channels: channels of the features.
        reduction: reduce ratio of the channel MLP (16 in the paper).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction=reduction)
        self.squeeze = nn.Conv2d(channels, 1, 1)
        self.spatial = SpatialAttention(in_maps=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.channel.attention_map(x) * self.spatial(self.squeeze(x))


class HybridDilatedResidualAttentionBlock(nn.Module):
    """D2A U-Net residual attention block (RAB): ``ReLU(DAM(HDC(x)) + shortcut(x))``.

    Zhao et al. 2021. HDC is a stack of 3x3 conv-norm layers with hybrid dilation rates (1, 2, 5) (Wang et
    al., "Understanding Convolution for Semantic Segmentation", WACV 2018), receptive field 17x17; the first
    conv maps ``in_channels`` to ``out_channels`` and the shortcut is a 1x1 projection when they differ.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        dilations: dilation rates of the stacked convs.
        reduction: reduce ratio of the DAM channel attention.
        norm: normalisation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dilations: Sequence[int] = (1, 2, 5),
        reduction: int = 16,
        norm: Norm = "batch",
    ) -> None:
        super().__init__()
        chans = [in_channels] + [out_channels] * len(dilations)
        self.hdc = nn.Sequential(
            *(
                ConvNormAct(chans[i], chans[i + 1], 3, dilation=d, norm=norm, act=i < len(dilations) - 1)
                for i, d in enumerate(dilations)
            )
        )
        self.dam = DecoderAttentionModule(out_channels, reduction)
        self.shortcut: nn.Module = nn.Identity()
        if in_channels != out_channels:
            self.shortcut = ConvNormAct(in_channels, out_channels, 1, norm=norm, act=False)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dam(self.hdc(x)) + self.shortcut(x))


def _divisor_at_most(n: int, k: int) -> int:
    return max(d for d in range(1, min(n, k) + 1) if n % d == 0)


class SpatialSelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention over the flattened spatial positions of a feature map.

    ``softmax(Q K^T / sqrt(d_k)) V`` per head (Vaswani et al., "Attention Is All You Need", NeurIPS 2017),
    pre-LayerNorm, output projection and residual: ``x + MHSA(LN(x))``. Positions are encoded by a depthwise
    3x3 conv added before the attention (works for any size). Memory stays bounded: when the map has more than
    ``max_kv_tokens`` positions, keys and values are average-pooled (queries keep full resolution), a cheap
    stand-in for the LSH attention (Kitaev et al., "Reformer", ICLR 2020) used by Chen et al. 2020. The
    attention itself uses ``torch.nn.functional.scaled_dot_product_attention`` (fused, memory-efficient
    kernels).

    Args:
        channels: feature channels (``d_model``).
        num_heads: heads; reduced to the largest divisor of ``channels`` not above it.
        max_kv_tokens: most key/value positions before pooling.
        pos_encoding: whether to add the depthwise-conv positional encoding.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 8,
        max_kv_tokens: int = 1024,
        pos_encoding: bool = True,
    ) -> None:
        super().__init__()
        self.num_heads = _divisor_at_most(channels, num_heads)
        self.max_kv_tokens = max_kv_tokens
        self.pos = nn.Conv2d(channels, channels, 3, padding=1, groups=channels) if pos_encoding else None
        self.norm = nn.LayerNorm(channels)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(channels, 2 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos is not None:
            x = x + self.pos(x)
        b, c, h, w = x.shape
        y = self.norm(x.flatten(2).transpose(1, 2))  # (B, N, C)
        kv_src = y
        if h * w > self.max_kv_tokens:
            f = math.ceil(math.sqrt(h * w / self.max_kv_tokens))
            grid = y.transpose(1, 2).reshape(b, c, h, w)
            kv_src = F.avg_pool2d(grid, f, f, ceil_mode=True).flatten(2).transpose(1, 2)
        heads, dh = self.num_heads, c // self.num_heads
        q = self.q(y).reshape(b, -1, heads, dh).transpose(1, 2)
        k, v = self.kv(kv_src).reshape(b, -1, 2, heads, dh).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        return x + self.proj(out).transpose(1, 2).reshape(b, c, h, w)


def pad_to_multiple(
    x: torch.Tensor, multiple: int, mode: PadMode = "reflect", spatial_dims: int = 2
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Pad the last ``spatial_dims`` axes of ``x`` (split evenly on both sides) to a multiple of ``multiple``.

    Returns the padded tensor and the ``F.pad``-ordered padding for ``crop_padding``. ``"reflect"`` falls back
    to ``"replicate"`` where an axis is too short to reflect; ``"constant"`` pads with zeros.
    """
    pads: list[int] = []
    for size in reversed(x.shape[-spatial_dims:]):
        total = (-size) % multiple
        pads += [total // 2, total - total // 2]
    if not any(pads):
        return x, tuple(pads)
    if mode == "reflect" and any(
        p >= size for i, size in enumerate(reversed(x.shape[-spatial_dims:])) for p in pads[2 * i : 2 * i + 2]
    ):
        mode = "replicate"
    return F.pad(x, pads, mode=mode), tuple(pads)


def crop_padding(x: torch.Tensor, pads: Sequence[int]) -> torch.Tensor:
    """Undo ``pad_to_multiple`` (``pads`` as it returned them) on the last ``len(pads) // 2`` axes."""
    n = len(pads) // 2
    index: list[slice] = []
    for i in range(n):  # pads run from the last axis backwards
        lo, hi = pads[2 * (n - 1 - i)], pads[2 * (n - 1 - i) + 1]
        size = x.shape[x.ndim - n + i]
        index.append(slice(lo, size - hi))
    return x[(..., *index)]


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan-out, ReLU) convs with zero bias; unit/zero affine norms; zero linear biases.

    Nothing to initialise on the ``meta`` device (the model-card check builds there only to count parameters)."""
    if any(p.is_meta for p in module.parameters()):
        return
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """An inference copy of ``module`` with every convolution-then-batch-norm pair folded into one convolution.

    In eval mode batch norm is the affine map ``y = (x - mean) / sqrt(var + eps) * gamma + beta`` per channel, so
    ``bn(conv(x))`` equals a convolution with weights scaled by ``gamma / sqrt(var + eps)`` and a new bias; the norm
    becomes ``nn.Identity``. The result differs from the original by float rounding only, and saves a full read
    and write of every activation (batch norm was 13 % of the U-Net's operator time in a CPU profile; end to end the
    gain is small next to this machine's noise, see docs/BENCHMARKS.md). Only pairs that are adjacent in an
    ``nn.Sequential`` (``ConvNormAct``) are folded; ``module`` itself is left untouched (it may be fine-tuned later).
    """
    folded = copy.deepcopy(module).eval()
    for seq in folded.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if type(conv) in _CONV.values() and isinstance(bn, _BATCH_NORMS) and bn.track_running_stats:
                seq[i], seq[i + 1] = _folded_conv(conv, bn), nn.Identity()
    return folded


@torch.no_grad()
def _folded_conv(conv: nn.Module, bn: nn.Module) -> nn.Module:
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.affine:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale + (bn.bias.double() if bn.affine else 0.0)
    if conv.bias is not None:
        shift = shift + conv.bias.double() * scale
    new = type(conv)(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        True,
        conv.padding_mode,
        device=conv.weight.device,
    )
    shape = (-1,) + (1,) * (conv.weight.ndim - 1)
    new.weight.copy_((conv.weight.double() * scale.reshape(shape)).to(conv.weight.dtype))
    new.bias.copy_(shift.to(conv.weight.dtype))
    return new.eval()
