"""The shared training loop: rare classes are sampled more, cancellation stops it, a few steps lower the loss."""

from __future__ import annotations

import pytest
import torch

from napari_covidseg.inference import Cancelled
from napari_covidseg.training import dice_ce_loss, train_segmentation
from napari_covidseg.training.loop import slice_weights
from tests.helpers import build_for, segmentation_card


def test_slices_with_rare_classes_weigh_more():
    labels = torch.zeros(10, 4, 4, dtype=torch.long)
    labels[:5, 0, 0] = 1  # common class in half the slices
    labels[9, 1, 1] = 2  # rare class in one slice
    w = slice_weights(labels)
    assert w[9] > w[0] > w[5] == 1.0
    assert torch.equal(slice_weights(torch.zeros(3, 2, 2, dtype=torch.long)), torch.ones(3))


def test_dice_ce_loss_is_lower_for_the_right_answer():
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 2:5, 2:5] = 1
    right = torch.nn.functional.one_hot(target, 4).permute(0, 3, 1, 2).float() * 10
    wrong = torch.roll(right, 1, dims=1)
    assert dice_ce_loss(right, target) < 0.1 < dice_ce_loss(wrong, target)


def test_cancel_stops_training_and_loss_goes_down():
    torch.manual_seed(0)
    card = segmentation_card(size=32)
    images = torch.rand(6, 1, 32, 32)
    labels = (images[:, 0] > 0.7).long()  # learnable: bright pixels are class 1
    model = build_for(card)
    seen = []
    with pytest.raises(Cancelled):
        train_segmentation(
            model,
            images,
            labels,
            steps=50,
            batch_size=2,
            device="cpu",
            progress=lambda s, n, loss: seen.append(s),
            should_stop=lambda: len(seen) >= 3,
        )
    assert seen == [1, 2, 3]
    result = train_segmentation(
        build_for(card), images, labels, steps=40, batch_size=6, lr=1e-2, device="cpu", augment=False
    )
    assert result.steps == 40 and sum(result.losses[-5:]) < sum(result.losses[:5])
