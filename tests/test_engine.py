"""The slide engine: plan, tissue windows, tiled attention, gradients through a slide, predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_models import CLASSES, tiny_model
from toy_cohort import toy_image

from wsi_ats import SlideResult, open_slide
from wsi_ats.device import to_device
from wsi_ats.engine import assemble
from wsi_ats.engine.attention import tissue_logits
from wsi_ats.engine.plan import plan_slide
from wsi_ats.engine.run import forward_slide, predict_slide
from wsi_ats.engine.windows import read_windows
from wsi_ats.models import ATSModel, ModelConfig, NetSpec, TissueSpec


@pytest.fixture(scope="module")
def slide():
    image, _ = toy_image(seed=7, positive=True, size=512)
    return open_slide(image)


# -- attention over tissue ---------------------------------------------------------------------


def whole_level_logits(model: ATSModel, slide, plan) -> torch.Tensor:
    """The reference: one pass of the attention net over the whole low level, read at the tissue cells."""
    image = slide.read_region(plan.low_level, (0, 0), plan.grid.low_shape)
    out = model.attention_logits(to_device(image, model.device))
    assert tuple(out.shape) == plan.grid.shape
    return out[plan.cells.coords[:, 0], plan.cells.coords[:, 1]]


@pytest.mark.parametrize("prior", [(), (("prior_kernel", 5), ("stain_prior", 4.0))], ids=["plain", "stain_prior"])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_tiled_inference_logits_equal_whole_level_logits(slide, padding, prior):
    model = tiny_model(padding, attention=NetSpec("small_cnn", (("channels", 4), ("padding", padding), *prior))).eval()
    assert ModelConfig.from_dict(model.config.to_dict()) == model.config  # a checkpoint rebuilds the net
    plan = plan_slide(model, slide)
    assert len(plan.cells.tiles) > 4  # several tiles, so halos and borders are exercised
    with torch.no_grad():
        whole = whole_level_logits(model, slide, plan)
    with torch.no_grad():
        tiled = tissue_logits(model, read_windows(plan), plan)
    assert not tiled.requires_grad
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_training_logits_from_cached_windows_equal_whole_level_logits_and_gradients(slide, padding):
    model = tiny_model(padding).train()
    plan = plan_slide(model, slide)
    weights = torch.randn(len(plan.cells), generator=torch.Generator().manual_seed(0))

    def gradients(logits: torch.Tensor) -> list[torch.Tensor]:
        model.zero_grad()
        (logits * weights).sum().backward()
        return [p.grad.clone() for p in model.attention_net.parameters()]

    whole = whole_level_logits(model, slide, plan)
    windows = list(read_windows(plan))
    tiled = tissue_logits(model, windows, plan)
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-5)
    for a, b in zip(gradients(tiled), gradients(whole), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_attention_windows_follow_the_tissue_not_the_slide_size():
    """The same tissue inside a 4x-area blank slide: as many tissue cells and about as many window pixels."""
    small_image, _ = toy_image(seed=7, positive=True, size=512)
    large_image = np.full((1024, 1024, 3), small_image[0, 0], np.uint8)  # its glass colour
    large_image[448:960, 256:768] = small_image  # offsets on the 64-px tissue-mask grid
    model = tiny_model(tile=24)  # tile edges fall differently on the two slides
    small, large = (plan_slide(model, open_slide(image)) for image in (small_image, large_image))

    def window_pixels(plan) -> int:
        return sum(int(np.prod(plan.window(k)[1])) for k in range(len(plan.cells.tiles)))

    assert len(large.cells) == len(small.cells)
    assert np.prod(large.grid.low_shape) > 3.5 * np.prod(small.grid.low_shape)
    assert window_pixels(large) <= 1.2 * window_pixels(small)
    assert window_pixels(small) < 0.8 * np.prod(small.grid.low_shape)  # the glass around the tissue is skipped


@pytest.mark.parametrize("tissue", [True, False], ids=["tissue_mask", "whole_grid"])
def test_each_tissue_tiles_box_is_the_tightest_box_around_its_cells(slide, tissue):
    cells = plan_slide(tiny_model(tile=7, tissue=TissueSpec(downsample=16, enabled=tissue)), slide).cells
    assert len(cells.tiles) > 4
    for k in range(len(cells.tiles)):
        part = cells.coords[cells.offsets[k] : cells.offsets[k + 1]]
        assert cells.cell_box(k) == (*part.min(axis=0).tolist(), *(part.max(axis=0) + 1).tolist())


def test_tissue_cells_are_exactly_the_cells_centred_on_tissue(slide):
    plan = plan_slide(tiny_model(tile=7), slide)  # odd tile: tile edges fall inside mask pixels
    grid = plan.grid
    brute = plan.tissue.at(grid.cell_centres(0, grid.shape[0]), grid.cell_centres(0, grid.shape[1]))
    found = np.zeros(grid.shape, bool)
    found[plan.cells.coords[:, 0], plan.cells.coords[:, 1]] = True
    np.testing.assert_array_equal(found, brute)
    assert len(np.unique(plan.cells.coords, axis=0)) == len(plan.cells)


def test_background_never_gets_attention(slide):
    result = predict_slide(tiny_model(), slide, slide_id="toy", seed=0)
    plan = plan_slide(tiny_model(), slide)
    assert result.attention.shape == plan.grid.shape
    assert result.attention.sum() == pytest.approx(1.0, abs=1e-5)
    on = np.zeros(plan.grid.shape, bool)
    on[plan.cells.coords[:, 0], plan.cells.coords[:, 1]] = True
    assert 0.1 < on.mean() < 0.9
    assert (result.attention[~on] == 0).all() and (result.attention[on] > 0).all()


def test_gradients_reach_attention_and_feature_nets(slide):
    model = tiny_model().train()
    plan = plan_slide(model, slide)
    out = forward_slide(model, plan, list(read_windows(plan)), generator=torch.Generator().manual_seed(0))
    (torch.nn.functional.cross_entropy(out.logits, torch.tensor([1])) + model.regularizer(out.attention)).backward()
    for net in (model.attention_net, model.feature_net, model.classifier):
        grads = [p.grad for p in net.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)


# -- predictions -------------------------------------------------------------------------------


def test_predict_slide_fills_every_field_in_level0_coordinates(slide):
    model = tiny_model()
    result = predict_slide(model, slide, slide_id="toy", seed=3, draws=2)
    assert isinstance(result, SlideResult)
    assert result.slide_id == "toy" and result.class_names == CLASSES
    assert result.probabilities.shape == (2,) and result.probabilities.sum() == pytest.approx(1.0)
    assert result.prediction in CLASSES and 0.5 <= result.probability <= 1
    assert result.attention_level == 1 and result.attention_downsample == 4.0
    assert result.attention_origin == (12.0, 12.0)  # valid padding: radius 3 cells of 4 px
    assert result.patch_level == 0 and result.patch_downsample == 1.0 and result.patch_size_level0 == 16
    assert result.patch_top_left.shape == (12, 2) and result.patch_attention.shape == (12,)
    assert result.patches_fetched == 12 and result.seconds > 0
    assert (result.patch_attention > 0).all()
    assert ((result.patch_top_left >= -16) & (result.patch_top_left < 512)).all()


def test_same_seed_same_result_other_seed_other_patches(slide):
    model = tiny_model()
    a, b = (predict_slide(model, slide, slide_id="toy", seed=5, draws=3) for _ in range(2))
    c = predict_slide(model, slide, slide_id="toy", seed=6, draws=3)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    np.testing.assert_array_equal(a.patch_top_left, b.patch_top_left)
    assert not np.array_equal(a.patch_top_left, c.patch_top_left)


def test_topk_takes_the_cells_of_highest_attention_and_centres_patches_on_them(slide):
    model = tiny_model()
    result = predict_slide(model, slide, slide_id="toy", topk=True, draws=4)
    assert len(result.patch_attention) == model.n_patches  # top-k ignores draws
    best = np.sort(result.attention.ravel())[::-1][: model.n_patches]
    np.testing.assert_allclose(result.patch_attention, best, rtol=1e-6)
    # Each patch is centred on its cell: cell centre (level 0) = origin + (cell + 0.5) * downsample.
    for (y, x), a in zip(result.patch_top_left, result.patch_attention):
        cy, cx = (y + 8 - result.attention_origin[0]) / 4 - 0.5, (x + 8 - result.attention_origin[1]) / 4 - 0.5
        assert result.attention[int(round(cy)), int(round(cx))] == pytest.approx(a, rel=1e-6)


def test_huge_grids_return_a_block_summed_attention_map(slide, monkeypatch):
    monkeypatch.setattr(assemble, "MAX_MAP_CELLS", 1000)
    result = predict_slide(tiny_model(), slide, slide_id="toy")
    full = plan_slide(tiny_model(), slide).grid.shape
    assert result.attention.size <= 1000
    factor = result.attention_downsample / 4
    assert factor > 1 and result.attention.shape == tuple(int(np.ceil(s / factor)) for s in full)
    assert result.attention.sum() == pytest.approx(1.0, abs=1e-5)


def test_a_level_smaller_than_the_receptive_field_is_a_plan_without_cells_that_says_so():
    tiny = open_slide(np.full((6, 6, 3), 200, np.uint8))  # one level, 6 px: the 7 px field does not fit
    model = tiny_model(tissue=TissueSpec(enabled=False))
    plan = plan_slide(model, tiny)
    assert plan.warnings == ("slide too small: 6x6 px, less than the attention net's field (28x28 px at level 0)",)
    assert len(plan.cells) == 0
