"""Feature bags (CLAM/TRIDENT HDF5 layout): the dense baseline's and ``predict --save-features``'s, and the ABMIL head."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from test_encoders import encoder_config, spec
from toy_cohort import write_toy_cohort, write_toy_slide

from wsi_ats.checkpoint import save_checkpoint
from wsi_ats.dense import dense_bag, dense_command, tissue_tiles, train_abmil
from wsi_ats.engine.plan import plan_slide
from wsi_ats.models import ATSModel
from wsi_ats.outputs.bags import read_bag, write_bag
from wsi_ats.pipeline import Pipeline
from wsi_ats.readers import open_slide

CLASSES = ("negative", "positive")


@pytest.fixture(scope="module")
def toy_slide(tmp_path_factory):
    return write_toy_slide(tmp_path_factory.mktemp("bags") / "toy.zarr", seed=3, positive=True, size=512, markers=4)


@pytest.fixture(scope="module")
def encoder_model():
    torch.manual_seed(0)
    return ATSModel.from_config(encoder_config(spec(arch="resnet10t", freeze=True)), CLASSES).eval()


def test_a_dense_bag_holds_every_tissue_tile_in_the_clam_layout(tmp_path, toy_slide, encoder_model):
    with open_slide(toy_slide, mpp=0.5) as slide:
        bag = dense_bag(encoder_model, slide, slide_id="toy")
        tiles = tissue_tiles(encoder_model, plan_slide(encoder_model, slide))
        x, y = bag.coords_xy[0]
        patch = torch.from_numpy(slide.read_region(0, (int(y), int(x)), (32, 32))[None].copy())
    write_bag(tmp_path / "toy.h5", bag)
    with h5py.File(tmp_path / "toy.h5", "r") as f:
        assert f["features"].shape == (int(tiles.sum()), 512) and f["features"].dtype == np.float32
        assert f["coords"].shape == (int(tiles.sum()), 2)
        attrs = dict(f["coords"].attrs)
        assert attrs["patch_size"] == 32 and attrs["patch_size_level0"] == 32 and attrs["patch_level"] == 0
        assert attrs["level0_magnification"] == 20 and attrs["level0_mpp"] == 0.5
        assert f.attrs["encoder"] == "timm:resnet10t" and f.attrs["method"] == "dense" and f.attrs["slide_id"] == "toy"
        assert np.all(f["coords"][:] % 32 == 0)
    assert 0 < len(bag.features) < 16 * 16  # the glass is left out
    with torch.no_grad():
        assert np.allclose(bag.features[0], encoder_model.encode(patch)[0].numpy(), atol=1e-4)  # (x, y) order: CLAM's
    again = read_bag(tmp_path / "toy.h5")
    assert np.array_equal(again.features, bag.features) and np.array_equal(again.coords_xy, bag.coords_xy)


def test_predict_save_features_writes_the_drawn_patches_embeddings(tmp_path, toy_slide, encoder_model):
    save_checkpoint(tmp_path / "model.pt", encoder_model)
    pipeline = Pipeline(tmp_path / "model.pt", device="cpu", save_features=True)
    result = pipeline.run(str(toy_slide), slide_id="toy")
    pipeline.run_many([toy_slide], tmp_path / "out", verbose=False)
    with h5py.File(tmp_path / "out" / "toy" / "features.h5", "r") as f:
        assert f["features"].shape == (encoder_model.n_patches, 512)
        assert np.array_equal(f["coords"][:], result.patch_top_left[:, ::-1])  # the same seed draws the same patches
        assert f.attrs["method"] == "ats" and f["coords"].attrs["patch_size"] == 32


def test_the_gated_abmil_head_fits_separable_bags():
    rng = np.random.default_rng(0)
    bags = []
    for k in range(8):
        x = rng.normal(0, 1, (20, 4)).astype(np.float32)
        if k % 2:
            x[rng.integers(20), 0] += 6.0  # one telling instance among twenty
        bags.append((torch.from_numpy(x), k % 2))
    head, log = train_abmil(bags, 4, 2, seed=0, max_epochs=200)
    with torch.no_grad():
        assert [int(head(x).argmax()) for x, _ in bags] == [y for _, y in bags]
    assert log["epochs"] <= 200


RECIPE = """
[model]
patch_size = 32
n_patches = 4
tile = 64
[model.low]
downsample = 4
[model.high]
downsample = 1
[model.tissue]
downsample = 16
[model.attention]
name = "small_cnn"
channels = 4
[model.features]
name = "small_cnn"
channels = 8
layers = 1
[model.classifier]
name = "linear"
"""


def test_dense_features_command_writes_a_bag_per_slide_and_trains_the_head(tmp_path, capsys):
    manifest = write_toy_cohort(tmp_path / "cohort", n=4, splits=True, size=256, markers=2)
    (tmp_path / "recipe.toml").write_text(RECIPE)
    assert dense_command(manifest=manifest, config=tmp_path / "recipe.toml", out=tmp_path / "out") == 0
    assert sorted(p.name for p in (tmp_path / "out" / "features").iterdir()) == [f"toy_{i}.h5" for i in range(4)]
    metrics = json.loads((tmp_path / "out" / "dense_metrics.json").read_text())
    assert metrics["train"]["slides"] == 2 and metrics["test"]["slides"] == 2 and metrics["encoder"] == "small_cnn"
    assert set(torch.load(tmp_path / "out" / "abmil.pt", weights_only=True)) == {"state_dict", "in_features", "class_names"}
    assert "test: accuracy" in capsys.readouterr().out


def test_wsi_ats_dense_features_refuses_a_bad_recipe_with_exit_2(tmp_path, capsys):
    from wsi_ats.cli import main

    manifest = write_toy_cohort(tmp_path / "cohort", n=2, size=256, markers=2)
    (tmp_path / "recipe.toml").write_text(
        RECIPE.replace('name = "small_cnn"\nchannels = 8\nlayers = 1', 'name = "timm"\narch = "resnet_nope"')
    )
    args = ["dense-features", "--manifest", str(manifest), "--config", str(tmp_path / "recipe.toml"), "--out", str(tmp_path / "out")]
    assert main(args) == 2
    assert "recipe.toml: [model.features] arch = 'resnet_nope': not a timm architecture" in capsys.readouterr().err
