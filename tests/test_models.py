"""Network shapes, registry entries, switches, parameter counts and gradient flow (small widths, CPU)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from napari_covidseg.models import build_model, get_architecture, list_architectures
from napari_covidseg.models.blocks import (
    AttentionGate,
    GateAttentionModule,
    HybridDilatedResidualAttentionBlock,
    ResNeXtBlock,
    SpatialSelfAttention,
    crop_padding,
    pad_to_multiple,
)
from napari_covidseg.models.d2a_unet import D2AUNet
from napari_covidseg.models.daresnet3d import DAResNet18_3D, DepthAttention
from napari_covidseg.models.resattunet import ResAttUNet
from napari_covidseg.models.unet import UNet

SEGMENTATION = [a.name for a in list_architectures() if a.task == "segmentation"]
CLASSIFICATION = [a.name for a in list_architectures() if a.task == "classification"]
SMALL = 8


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_the_networks():
    names = {a.name for a in list_architectures()}
    expected = {
        "unet",
        "resattunet",
        "resattunet_no_attention",
        "resattunet_plain_encoder",
        "resattunet_resnet34_ag",
        "d2a_unet",
        "daresnet18_3d",
        "resnet18_3d",
    }
    assert expected <= names
    for arch in list_architectures():
        assert arch.summary and arch.paper
        assert arch.task in ("segmentation", "classification")
        assert arch.spatial_dims == (2 if arch.task == "segmentation" else 3)
        assert arch.builder.__doc__ and "Args:" in arch.builder.__doc__


@pytest.mark.parametrize("name", SEGMENTATION)
def test_segmentation_shapes(name):
    torch.manual_seed(0)
    model = build_model(name, base_width=SMALL).eval()
    with torch.no_grad():
        for shape in [(2, 1, 256, 256), (1, 1, 97, 131), (1, 1, 255, 257), (1, 1, 5, 3)]:
            out = model(torch.randn(shape))
            assert out.shape == (shape[0], 4, *shape[2:]), (name, shape, out.shape)
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", SEGMENTATION)
def test_segmentation_num_classes_and_channels(name):
    model = build_model(name, in_channels=3, num_classes=2, base_width=SMALL).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 40, 33)).shape == (1, 2, 40, 33)


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_classifier_shapes(name):
    torch.manual_seed(0)
    model = build_model(name, base_width=SMALL).eval()
    with torch.no_grad():
        for shape in [(1, 1, 16, 64, 64), (2, 1, 12, 48, 56)]:
            b, _, d, h, w = shape
            x = torch.randn(shape)
            logits = model(x)
            feats = model.forward_features(x)
            assert logits.shape == (b, 3)
            assert feats.shape == (b, 8 * SMALL, math.ceil(d / 8), math.ceil(h / 16), math.ceil(w / 16))
            assert isinstance(model.fc, nn.Linear)
            cam = torch.einsum("kc,bcdhw->bkdhw", model.fc.weight, feats)
            assert cam.shape == (b, 3, *feats.shape[2:])
            # CAM averaged over space plus the bias is the logit (global average pooling + linear).
            torch.testing.assert_close(cam.mean(dim=(2, 3, 4)) + model.fc.bias, logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", [a.name for a in list_architectures()])
def test_default_config_parameter_count(name):
    arch = get_architecture(name)
    with torch.device("meta"):  # no memory for the full-width weights
        model = arch.build()
    count = n_params(model)
    print(f"\n{name:26s} default {arch.default_config}: {count / 1e6:.3f} M parameters")
    assert count > 0


def test_published_parameter_count_of_3d_resnet18():
    # Shi et al. 2021, Table 3: 3D ResNet18 baseline 33.15M parameters.
    with torch.device("meta"):
        count = n_params(build_model("resnet18_3d"))
    assert abs(count / 1e6 - 33.15) < 0.05


def test_switches_change_parameter_count():
    full = n_params(ResAttUNet(base_width=SMALL))
    no_att = n_params(ResAttUNet(base_width=SMALL, use_attention=False))
    plain = n_params(ResAttUNet(base_width=SMALL, encoder="plain"))
    r34 = n_params(ResAttUNet(base_width=SMALL, encoder="resnet34"))
    r34_no_att = n_params(ResAttUNet(base_width=SMALL, encoder="resnet34", use_attention=False))
    assert len({full, no_att, plain, r34}) == 4
    assert no_att < full and r34_no_att < r34
    plain_3d = n_params(DAResNet18_3D(base_width=SMALL, attention=False))
    assert plain_3d < n_params(DAResNet18_3D(base_width=SMALL))
    assert n_params(D2AUNet(base_width=SMALL, use_gam=False)) < n_params(D2AUNet(base_width=SMALL))
    print(f"\nResAttUNet@{SMALL}: full {full}, M-A {no_att}, M-R {plain}, resnet34+AG {r34}")


def test_resattunet_attention_layout():
    assert ResAttUNet(base_width=SMALL).stage_attention == ["self", "gate", "gate", "gate"]
    assert ResAttUNet(base_width=SMALL, encoder="resnet34").stage_attention == ["gate"] * 4
    assert ResAttUNet(base_width=SMALL, use_attention=False).stage_attention == ["none"] * 4
    assert ResAttUNet(base_width=SMALL, attention_max_tokens=64 * 64).stage_attention == [
        "self",
        "self",
        "gate",
        "gate",
    ]
    with pytest.raises(ValueError):
        ResAttUNet(encoder="resnet34", depth=3)
    with pytest.raises(ValueError):
        ResAttUNet(encoder="vgg")  # type: ignore[arg-type]


@pytest.mark.parametrize("norm", ["instance", "group", "none"])
def test_norm_options(norm):
    with torch.no_grad():
        for model in (UNet(base_width=SMALL, norm=norm), D2AUNet(base_width=SMALL, norm=norm)):
            assert model.eval()(torch.randn(1, 1, 33, 47)).shape == (1, 4, 33, 47)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "constant"])
def test_pad_and_crop_round_trip(mode):
    x = torch.randn(2, 3, 97, 131)
    padded, pads = pad_to_multiple(x, 16, mode)
    assert padded.shape[-2:] == (112, 144)
    torch.testing.assert_close(crop_padding(padded, pads), x)
    tiny, pads = pad_to_multiple(torch.randn(1, 1, 1, 2), 32, mode)  # too short to reflect: falls back
    assert tiny.shape[-2:] == (32, 32) and crop_padding(tiny, pads).shape[-2:] == (1, 2)
    vol, pads = pad_to_multiple(torch.randn(1, 1, 5, 6, 7), 4, mode, spatial_dims=3)
    assert vol.shape[-3:] == (8, 8, 8) and crop_padding(vol, pads).shape[-3:] == (5, 6, 7)


def test_blocks():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 12, 10)
    with torch.no_grad():
        assert ResNeXtBlock(16, 32, cardinality=8, stride=2).eval()(x).shape == (2, 32, 6, 5)
        assert AttentionGate(16, 32).eval()(x, torch.randn(2, 32, 6, 5)).shape == x.shape
        assert GateAttentionModule(16, 32).eval()(x, torch.randn(2, 32, 6, 5)).shape == x.shape
        assert HybridDilatedResidualAttentionBlock(16, 8).eval()(x).shape == (2, 8, 12, 10)
        att = SpatialSelfAttention(16, num_heads=8, max_kv_tokens=16).eval()
        assert att(x).shape == x.shape  # 120 positions > 16: keys/values pooled
        assert SpatialSelfAttention(12, num_heads=8).num_heads == 6
        v = torch.randn(2, 16, 7, 5, 6)
        weights = DepthAttention(16).attention_map(v)
        assert weights.shape == (2, 16, 7) and ((weights > 0) & (weights < 1)).all()


@pytest.mark.parametrize("name", [a.name for a in list_architectures()])
def test_gradients_reach_first_conv(name):
    torch.manual_seed(0)
    arch = get_architecture(name)
    model = arch.build(base_width=4 if arch.task == "classification" else SMALL).train()
    if arch.task == "segmentation":
        x = torch.randn(2, 1, 64, 48)
        target = torch.randint(0, 4, (2, 64, 48))
    else:
        x = torch.randn(2, 1, 8, 32, 32)
        target = torch.tensor([0, 2])
    loss = nn.functional.cross_entropy(model(x), target)
    loss.backward()
    first_conv = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)))
    assert first_conv.weight.grad is not None
    assert first_conv.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", SEGMENTATION + CLASSIFICATION)
def test_fold_batchnorm_gives_the_same_outputs_and_leaves_the_model_alone(name):
    """Inference folds batch norm into the convolutions; every network gives the same logits, up to float rounding,
    and the loaded model (which a fine-tune may train later) keeps its norms, parameters and mode."""
    from napari_covidseg.models.blocks import fold_batchnorm

    torch.manual_seed(0)
    model = build_model(name, base_width=SMALL)
    bns = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d))]
    assert bns, name
    with torch.no_grad():  # running statistics and affine terms far from the identity, as after training
        for bn in bns:
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.3, 3.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    x = torch.randn(2, 1, 64, 64) if name in SEGMENTATION else torch.randn(1, 1, 16, 48, 48)
    with torch.no_grad():
        ref = model.eval()(x)
        out = folded(x)
    ref = ref[0] if isinstance(ref, tuple) else ref
    out = out[0] if isinstance(out, tuple) else out
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max())), float((out - ref).abs().max())
    left = [m for m in folded.modules() if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d))]
    assert len(left) < len(bns)  # every conv-then-norm pair is folded (norms after other layers may stay)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert len([m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d))]) == len(bns)
