"""Models give logits and normalize inside."""

from __future__ import annotations

import pytest
import torch

from uncertainty_robust.data import dataset_info
from uncertainty_robust.models import Normalize, build_model


@pytest.mark.parametrize(
    "name, dataset, width",
    [
        ("small_cnn", "mnist_embedded", 1.0),
        ("small_cnn", "mnist_embedded", 0.25),
        ("preact_resnet18", "cifar10", 0.25),
        ("wrn_16_4", "cifar10", 0.25),
    ],
)
def test_models_give_logits_and_normalize_inside(name, dataset, width):
    info = dataset_info(dataset)
    torch.manual_seed(0)
    m = build_model(name, info.channels, info.num_classes, info.size, info.mean, info.std, width).eval()
    x = torch.rand(3, info.channels, info.size, info.size)  # shapes only
    with torch.no_grad():
        z = m(x)
        assert z.shape == (3, 10) and bool(torch.isfinite(z).all())
        assert isinstance(m[0], Normalize)
        mean = torch.tensor(info.mean).view(1, -1, 1, 1)
        std = torch.tensor(info.std).view(1, -1, 1, 1)
        assert torch.allclose(m[0].mean, mean) and torch.allclose(m[0].std, std)
        assert torch.allclose(m[1]((x - mean) / std), z, atol=1e-6)
    assert {"0.mean", "0.std"} <= set(m.state_dict())  # normalization travels in checkpoints


def test_small_cnn_needs_size_divisible_by_4():
    with pytest.raises(ValueError):
        build_model("small_cnn", 1, 10, 30, (0.5,), (0.5,))
    with pytest.raises(ValueError):
        build_model("resnet9000", 1, 10, 28, (0.5,), (0.5,))
