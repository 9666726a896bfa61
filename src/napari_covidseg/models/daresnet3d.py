"""Dual-attention 3D ResNet18 (Shi et al. 2021) for whole-volume COVID-19 diagnosis, and its baseline."""

from __future__ import annotations

import torch
from torch import nn

from napari_covidseg.models.blocks import BasicResBlock, ChannelAttention, ConvNormAct, Norm, init_weights
from napari_covidseg.models.registry import Architecture, register

PAPER = (
    "J. Shi, H. Yi, X. Hao, H. An, W. Wei, 'Dual-Attention Residual Network for Automatic Diagnosis of "
    "COVID-19', arXiv:2105.06779, 2021"
)
PAPER_BASELINE = (
    "K. Hara, H. Kataoka, Y. Satoh, 'Can Spatiotemporal 3D CNNs Retrace the History of 2D CNNs and "
    "ImageNet?', CVPR 2018 (3D ResNet18), as configured by the baseline of " + PAPER
)


class DepthAttention(nn.Module):
    """Depth-wise attention (DA) of Shi et al. 2021: one weight per channel and depth slice.

    ``Z = GAP_{H,W}(F)`` in ``R^{C x D}``, ``Z_hat = sigmoid(W2 ReLU(W1 Z))``,
    ``F_out[c, d] = Z_hat[c, d] F[c, d]``. In the paper ``W1``, ``W2`` are fully connected layers, whose sizes
    the text does not give; fully connected layers over depth would fix the number of slices ``D`` (64 input
    slices there). To accept any depth, they are 1D convolutions over the depth axis with the channels as
    features: each is a fully connected layer across channels (``C -> C/r -> C``) shared by all depths, and
    its kernel of ``kernel_size`` slices (3 by default, zero-padded) lets neighbouring slices interact.

    Args:
        channels: feature channels ``C``.
        reduction: reduction ratio ``r`` of the hidden layer (at least 4 units).
        kernel_size: odd kernel along depth (1 = per-slice channel MLP only).
    """

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 3) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        pad = kernel_size // 2
        self.gate = nn.Sequential(
            nn.Conv1d(channels, hidden, kernel_size, padding=pad),
            nn.ReLU(inplace=True),
            nn.Conv1d(hidden, channels, kernel_size, padding=pad),
            nn.Sigmoid(),
        )

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """Weights ``(B, C, D)`` for features ``(B, C, D, H, W)``."""
        return self.gate(x.mean(dim=(-2, -1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention_map(x)[..., None, None]


class DAResNet18_3D(nn.Module):  # noqa: N801  (name mirrors the paper's network)
    """Dual-attention residual network: 3D ResNet18 with channel and depth attention in every residual block.

    Shi, Yi, Hao, An, Wei, "Dual-Attention Residual Network for Automatic Diagnosis of COVID-19",
    arXiv:2105.06779, 2021. Backbone 3D ResNet18 (basic blocks 2, 2, 2, 2); each block is two 3x3x3 conv-norm
    layers followed by channel attention (3D squeeze-and-excitation, ``r = 16``) and depth attention
    (``DepthAttention``), then the shortcut addition. The stem is a 7x7x7 conv with stride (1, 2, 2) (no depth
    down-sampling) followed by a 3x3x3 max-pool with stride 2; layers 2 and 3 have stride 2 and layer 4 stride
    1 ("one fewer down-sampling"), so features are ``ceil(D/8) x ceil(H/16) x ceil(W/16)``. Global average
    pooling and a linear layer give the logits (COVID-19, common pneumonia, normal). ``attention=False`` gives
    the plain 3D ResNet18 baseline of the paper.

    For class activation maps (Zhou et al., CVPR 2016) use ``forward_features`` and ``fc``:
    ``torch.einsum("kc,bcdhw->bkdhw", model.fc.weight, model.forward_features(x))`` (or ``cam``).

    Args:
        in_channels: volume channels.
        num_classes: output classes.
        base_width: channels of the stem and layer 1 (64 in the paper; widths double in layers 2-4).
        attention: channel + depth attention in every block (False = 3D ResNet18 baseline).
        reduction: reduction ratio of both attention modules.
        depth_kernel: kernel of the depth attention's convolutions along depth (see ``DepthAttention``).
        layers: basic blocks per layer.
        norm: normalisation.
        dropout: dropout before the classifier (0 in the paper).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 3,
        base_width: int = 64,
        attention: bool = True,
        reduction: int = 16,
        depth_kernel: int = 3,
        layers: tuple[int, int, int, int] = (2, 2, 2, 2),
        norm: Norm = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        widths = [base_width * 2**i for i in range(4)]
        strides = [1, 2, 2, 1]
        self.stem = nn.Sequential(
            ConvNormAct(in_channels, widths[0], 7, (1, 2, 2), norm=norm, spatial_dims=3),
            nn.MaxPool3d(3, 2, 1),
        )

        def block(cin: int, cout: int, stride: int) -> nn.Module:
            att = None
            if attention:
                att = nn.Sequential(
                    ChannelAttention(cout, reduction=reduction, spatial_dims=3),
                    DepthAttention(cout, reduction, depth_kernel),
                )
            return BasicResBlock(cin, cout, stride, norm, spatial_dims=3, attention=att)

        cin = widths[0]
        stages = []
        for width, stride, n in zip(widths, strides, layers):
            blocks = [block(cin if b == 0 else width, width, stride if b == 0 else 1) for b in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(widths[-1], num_classes)
        self.feature_channels = widths[-1]
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature maps ``(B, C, ceil(D/8), ceil(H/16), ceil(W/16))`` of input ``(B, C_in, D, H, W)``."""
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)``."""
        return self.fc(self.dropout(self.forward_features(x).mean(dim=(2, 3, 4))))

    def cam(self, features: torch.Tensor) -> torch.Tensor:
        """Class activation maps ``(B, num_classes, d, h, w)`` of ``forward_features`` output (no bias)."""
        return torch.einsum("kc,bcdhw->bkdhw", self.fc.weight, features)


register(
    Architecture(
        name="daresnet18_3d",
        builder=DAResNet18_3D,
        task="classification",
        spatial_dims=3,
        default_config={"base_width": 64, "attention": True},
        summary="Dual-attention 3D ResNet18 (channel + depth attention), COVID-19 / pneumonia / normal",
        paper=PAPER,
    )
)
register(
    Architecture(
        name="resnet18_3d",
        builder=DAResNet18_3D,
        task="classification",
        spatial_dims=3,
        default_config={"base_width": 64, "attention": False},
        summary="3D ResNet18 baseline (depth stride 1 in the stem, one fewer down-sampling), no attention",
        paper=PAPER_BASELINE,
    )
)
