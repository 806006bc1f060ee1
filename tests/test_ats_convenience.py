"""Specification of the in-memory entry point `attention_sampling` and of `entropy_regularizer`."""

import math

import pytest
import torch

from wsi_ats.ats import attention_sampling, entropy_regularizer, expectation


def _block_image(batch, grid, block):
    """[B, 1, grid*block, grid*block] where every block x block square holds its grid cell id."""
    ids = torch.arange(grid * grid, dtype=torch.float32).reshape(grid, grid)
    image = ids.repeat_interleave(block, 0).repeat_interleave(block, 1)
    return image.expand(batch, 1, -1, -1).clone()


def _patch_mean(patches):
    return patches.mean(dim=(2, 3))  # [B*n, C, P, P] -> [B*n, C]


@pytest.mark.parametrize("replace", [True, False])
def test_each_patch_is_the_high_resolution_area_of_its_attention_cell(replace):
    # A 8x8 grid on an 8x8 low view of a 64x64 image: scale 8, steps 8, patch 8 -> top_left = 8s,
    # so a patch is exactly the block of its cell and its mean is the cell id.
    g = torch.Generator().manual_seed(0)
    attention = torch.softmax(torch.randn(3, 64, generator=g), 1).reshape(3, 8, 8)
    result = attention_sampling(
        attention,
        torch.zeros(3, 1, 8, 8),
        _block_image(3, 8, 8),
        _patch_mean,
        5,
        patch_size=8,
        replace=replace,
        generator=g,
    )
    cell_ids = (result.indices[..., 0] * 8 + result.indices[..., 1]).float()
    assert torch.equal(result.top_left, result.indices * 8)
    assert torch.equal(result.patches.amin(dim=(2, 3, 4)), cell_ids)
    assert torch.equal(result.patches.amax(dim=(2, 3, 4)), cell_ids)
    rows = torch.arange(3)[:, None]
    assert torch.equal(result.probs, attention[rows, *result.indices.unbind(-1)])
    estimate = expectation(cell_ids[..., None], result.probs, replace=replace)
    assert torch.allclose(result.features, estimate)


def test_deterministic_one_hot_attention_returns_that_cells_features():
    attention = torch.zeros(2, 8, 8)
    attention[0, 6, 1] = attention[1, 2, 5] = 1
    result = attention_sampling(
        attention,
        torch.zeros(2, 1, 8, 8),
        _block_image(2, 8, 8),
        _patch_mean,
        1,
        patch_size=8,
        deterministic=True,
    )
    assert result.features.tolist() == [[6 * 8 + 1], [2 * 8 + 5]]


def test_valid_convolution_attention_maps_each_cell_to_its_window_centre():
    # A 3x3 valid conv on a 10x10 low view gives an 8x8 grid (receptive_field 2). On a 40x40
    # high view: scale 4, steps (10 - 2) * 4 / 8 = 4, offset 2 / 2 * 4 = 4, patch 4:
    # top_left = 4 + 4s + 2 - 2 = 4(s + 1), the high block of low pixel s + 1, the centre of
    # the window that produced cell s.
    class ValidConvAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 3)

        def forward(self, x):
            logits = self.conv(x)[:, 0]
            return torch.softmax(logits.flatten(1), 1).reshape(logits.shape)

    torch.manual_seed(1)
    x_high = _block_image(2, 10, 4)  # low pixel (y, x) has id 10y + x
    x_low = torch.nn.functional.avg_pool2d(x_high, 4)
    result = attention_sampling(
        ValidConvAttention(),
        x_low,
        x_high,
        _patch_mean,
        6,
        patch_size=4,
        receptive_field=2,
        generator=torch.Generator().manual_seed(2),
    )
    assert result.attention.shape == (2, 8, 8)
    centre_ids = ((result.indices[..., 0] + 1) * 10 + result.indices[..., 1] + 1).float()
    assert torch.equal(_patch_mean(result.patches.flatten(0, 1)).reshape(2, 6), centre_ids)


@pytest.mark.parametrize("replace", [True, False])
def test_gradients_reach_both_networks_but_not_the_image(replace):
    torch.manual_seed(3)
    attention_net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 1, 1),
        torch.nn.Flatten(),
        torch.nn.Softmax(dim=1),
        torch.nn.Unflatten(1, (8, 8)),
    )
    feature_net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 4), torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 2))
    x_high = torch.rand(2, 3, 64, 64, requires_grad=True)
    x_low = torch.nn.functional.avg_pool2d(x_high.detach(), 8)
    result = attention_sampling(
        attention_net,
        x_low,
        x_high,
        feature_net,
        4,
        patch_size=8,
        replace=replace,
        generator=torch.Generator().manual_seed(4),
    )
    assert result.features.shape == (2, 2) and result.patches.shape == (2, 4, 3, 8, 8)
    result.features.square().sum().backward()
    for parameter in [*attention_net.parameters(), *feature_net.parameters()]:
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    assert x_high.grad is None


def test_result_is_frozen():
    result = attention_sampling(
        torch.full((1, 4, 4), 1 / 16),
        torch.zeros(1, 1, 4, 4),
        torch.zeros(1, 1, 8, 8),
        _patch_mean,
        2,
        patch_size=2,
    )
    with pytest.raises(AttributeError):
        result.features = torch.zeros(1)


# ---------------------------------------------------------------- entropy_regularizer


def test_entropy_regularizer_value_on_uniform_and_one_hot_rows():
    # Row 0 uniform over 16 cells: sum = 16 * (1/16) log(1/16 + 1e-6) = log(1/16 + 1e-6).
    # Row 1 one-hot: 1 * log(1 + 1e-6) (zeros contribute 0 * log(1e-6) = 0). Mean of the two.
    attention = torch.zeros(2, 4, 4)
    attention[0] = 1 / 16
    attention[1, 3, 0] = 1
    strength = 0.5
    expected = strength * (math.log(1 / 16 + 1e-6) + math.log(1 + 1e-6)) / 2
    assert entropy_regularizer(attention, strength).item() == pytest.approx(expected, rel=1e-6)


def test_positive_strength_pushes_attention_towards_higher_entropy():
    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5]], requires_grad=True)

    def entropy(p):
        return -(p * p.log()).sum().item()

    before = torch.softmax(logits, 1)
    entropy_regularizer(before, 1.0).backward()
    with torch.no_grad():
        after = torch.softmax(logits - 0.1 * logits.grad, 1)
    assert entropy(after) > entropy(before.detach())
