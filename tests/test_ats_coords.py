"""Specification of `patch_top_left` (grid position -> high-level patch corner) and
`extract_patches` (zero-padded patches from in-memory images)."""

import pytest
import torch

from wsi_ats.ats import extract_patches, patch_top_left


def _at(*positions):
    """A [1, n, d] index tensor from n position tuples."""
    return torch.tensor([positions], dtype=torch.long)


def test_same_level_maps_a_cell_to_itself():
    # high = low = A = 100: scale 1, steps 1, offset 0.
    # patch 1: s + 0.5 - 0.5 = s.   patch 3: 7 + 0.5 - 1.5 = 6 (the cell is the patch centre).
    assert patch_top_left(_at((7, 42)), 100, 100, 100, 1).tolist() == [[[7, 42]]]
    assert patch_top_left(_at((7, 42)), 100, 100, 100, 3).tolist() == [[[6, 41]]]


def test_ten_times_finer_level_centres_the_patch_on_the_cell():
    # high 1000, low 100, A 25, patch 50 (API.md): scale 10, steps 100 * 10 / 25 = 40.
    # s = 12: 12*40 + 20 - 25 = 475.   s = 3: 120 + 20 - 25 = 115.
    assert patch_top_left(_at((12, 3)), 25, 100, 1000, 50).tolist() == [[[475, 115]]]


def test_receptive_field_shifts_and_shrinks_the_covered_area():
    # low 100, rf 4 -> a valid-conv net gives A = 96; high 1000: scale 10,
    # steps (100 - 4) * 10 / 96 = 10, offset 4 / 2 * 10 = 20.
    # s = 0, patch 10: 20 + 0 + 5 - 5 = 20.   s = 95: 20 + 950 + 5 - 5 = 970.
    top_left = patch_top_left(_at((0, 95)), 96, 100, 1000, 10, receptive_field=4)
    assert top_left.tolist() == [[[20, 970]]]


def test_corner_cells_can_give_negative_or_past_the_edge_corners():
    # high 1000, low 100, A 25, patch 50: steps 40.
    # s = 0: 0 + 20 - 25 = -5.   s = 24: 960 + 20 - 25 = 955, and 955 + 50 > 1000.
    assert patch_top_left(_at((0, 24)), 25, 100, 1000, 50).tolist() == [[[-5, 955]]]


def test_halves_round_to_even():
    # high = low = A = 10, patch 2: s + 0.5 - 1 = s - 0.5.
    # s = 1 -> 0.5 -> 0;  s = 2 -> 1.5 -> 2;  s = 3 -> 2.5 -> 2;  s = 0 -> -0.5 -> -0.
    top_left = patch_top_left(_at((1,), (2,), (3,), (0,)), 10, 10, 10, 2)
    assert top_left.tolist() == [[[0], [2], [2], [0]]]


def test_per_dimension_shapes_for_non_square_and_three_dimensional_grids():
    # dim 0: high 64, low 32, A 16, patch 4: scale 2, steps 4 -> s=5: 20 + 2 - 2 = 20.
    # dim 1: high 90, low 30, A 10, patch 6: scale 3, steps 9 -> s=5: 45 + 4.5 - 3 = 46.5 -> 46.
    # dim 2: high 10, low 10, A 5,  patch 1: scale 1, steps 2 -> s=5: 10 + 1 - 0.5 = 10.5 -> 10.
    top_left = patch_top_left(_at((5, 5, 5)), (16, 10, 5), (32, 30, 10), (64, 90, 10), (4, 6, 1))
    assert top_left.dtype == torch.long
    assert top_left.tolist() == [[[20, 46, 10]]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attention_shape": (4, 4, 4)}, "attention_shape has 3 dims, expected 2"),
        ({"patch_size": 0}, "patch_size must be integers >= 1"),
        ({"low_shape": (8, 2.5)}, "low_shape must be integers"),
        ({"receptive_field": 8}, "receptive_field 8 leaves nothing of low_shape 8"),
        ({"receptive_field": -1}, "receptive_field must be integers >= 0"),
    ],
)
def test_bad_shapes_are_refused(kwargs, message):
    arguments = {"attention_shape": 4, "low_shape": 8, "high_shape": 16, "patch_size": 2}
    with pytest.raises(ValueError, match=message):
        patch_top_left(_at((1, 1)), **{**arguments, **kwargs})


def test_float_indices_are_refused():
    with pytest.raises(ValueError, match="integer tensor"):
        patch_top_left(torch.zeros(1, 1, 2), 4, 8, 16, 2)


# ---------------------------------------------------------------- extract_patches


def _image(shape):
    """A [B, C, *S] image whose values name their position, so a wrong index shows."""
    return torch.arange(1, 1 + torch.Size(shape).numel(), dtype=torch.float32).reshape(shape)


def test_patches_inside_the_image_are_plain_slices():
    images = _image((2, 3, 12, 10))
    top_left = torch.tensor([[[0, 0], [5, 4]], [[9, 7], [2, 6]]])
    patches = extract_patches(images, top_left, (3, 3))
    assert patches.shape == (2, 2, 3, 3, 3)
    for b in range(2):
        for k in range(2):
            y, x = top_left[b, k].tolist()
            assert torch.equal(patches[b, k], images[b, :, y : y + 3, x : x + 3])


def test_outside_the_image_is_zero_padded():
    images = _image((1, 2, 6, 6))
    top_left = torch.tensor([[[-2, 4], [10, 10]]])  # crosses the top and right edges; all outside
    patches = extract_patches(images, top_left, 4)
    expected = torch.zeros(2, 4, 4)
    expected[:, 2:, :2] = images[0, :, 0:2, 4:6]
    assert torch.equal(patches[0, 0], expected)
    assert torch.equal(patches[0, 1], torch.zeros(2, 4, 4))


def test_one_dimensional_signals():
    images = _image((1, 2, 20))
    patches = extract_patches(images, torch.tensor([[[-1], [18]]]), 3)
    assert patches.shape == (1, 2, 2, 3)
    assert torch.equal(patches[0, 0], torch.cat([torch.zeros(2, 1), images[0, :, 0:2]], dim=1))
    assert torch.equal(patches[0, 1], torch.cat([images[0, :, 18:20], torch.zeros(2, 1)], dim=1))


def test_three_dimensional_volumes():
    images = _image((1, 2, 6, 7, 8))
    patches = extract_patches(images, torch.tensor([[[-1, 1, 6]]]), 3)
    expected = torch.zeros(2, 3, 3, 3)
    expected[:, 1:, :, :2] = images[0, :, 0:2, 1:4, 6:8]
    assert patches.shape == (1, 1, 2, 3, 3, 3)
    assert torch.equal(patches[0, 0], expected)


def test_patches_keep_the_image_dtype_and_take_no_gradient():
    images = _image((1, 3, 8, 8)).requires_grad_()
    patches = extract_patches(images, torch.tensor([[[1, 1]]]), 2)
    assert not patches.requires_grad
    as_bytes = extract_patches(images.detach().to(torch.uint8), torch.tensor([[[7, 7]]]), 2)
    assert as_bytes.dtype == torch.uint8 and as_bytes[0, 0, :, 1, 1].eq(0).all()


def test_top_left_must_match_the_image_batch_and_dims():
    with pytest.raises(ValueError, match=r"top_left must be an integer tensor \[2, n, 2\]"):
        extract_patches(_image((2, 1, 4, 4)), torch.zeros(1, 3, 2, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="images must be"):
        extract_patches(torch.zeros(4, 4), torch.zeros(1, 3, 2, dtype=torch.long), 2)
