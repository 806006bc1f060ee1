"""Tissue masks: Otsu on saturation at a coarse level, numpy only."""

from __future__ import annotations

import numpy as np
import pytest
from toy_cohort import GLASS, toy_image

from wsi_ats import open_slide
from wsi_ats.engine.tissue import otsu_threshold, tissue_mask


def test_tissue_mask_finds_the_tissue_of_a_synthetic_slide():
    image, _ = toy_image(seed=3, positive=True, size=1024)
    slide = open_slide(image)
    mask = tissue_mask(slide, downsample=16)
    truth = (image != GLASS).any(axis=2)
    # Compare at the mask's resolution: the share of tissue pixels in each 16 x 16 block.
    d = int(mask.downsample)
    share = truth[: mask.mask.shape[0] * d, : mask.mask.shape[1] * d].reshape(mask.mask.shape[0], d, -1, d).mean(axis=(1, 3))
    assert mask.mask[share > 0.9].all()
    assert not mask.mask[share < 0.1].any()
    assert mask.fraction == pytest.approx(truth.mean(), abs=0.02)


def test_blank_slide_has_no_tissue():
    rng = np.random.default_rng(0)
    glass = np.clip(GLASS + rng.normal(0, 3, (512, 512, 3)), 0, 255).astype(np.uint8)
    mask = tissue_mask(open_slide(glass), downsample=16)
    assert mask.mask.size > 0
    assert not mask.mask.any()


def test_mask_is_read_coarser_than_the_coarsest_level_by_block_means():
    image, _ = toy_image(seed=4, positive=False, size=1024)
    slide = open_slide(image)  # levels at downsample 1, 4, 16
    mask = tissue_mask(slide, downsample=64)
    assert mask.downsample == 64
    assert mask.mask.shape == (16, 16)
    assert 0.1 < mask.fraction < 0.6


def test_otsu_threshold_splits_two_modes():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(0.05, 0.01, 5000), rng.normal(0.4, 0.03, 1000)]).clip(0, 1)
    assert 0.08 < otsu_threshold(values) < 0.35


def test_lookup_maps_level0_positions_to_mask_pixels():
    image, _ = toy_image(seed=3, positive=True, size=512)
    mask = tissue_mask(open_slide(image), downsample=16)
    centre = mask.at(np.array([256.0]), np.array([256.0]))
    corner = mask.at(np.array([2.0]), np.array([2.0]))
    assert centre.shape == (1, 1) and bool(centre[0, 0]) and not bool(corner[0, 0])
