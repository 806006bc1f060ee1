"""One-file checkpoints: weights_only loading, identical predictions, clear errors on foreign files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_models import CLASSES, tiny_model
from toy_cohort import toy_image

from wsi_ats import load_checkpoint, open_slide
from wsi_ats.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from wsi_ats.engine.run import predict_slide


@pytest.fixture(scope="module")
def slide():
    image, _ = toy_image(seed=11, positive=False, size=512)
    return open_slide(image)


def test_round_trip_loads_weights_only_and_predicts_identically(tmp_path, slide):
    model = tiny_model(seed=4)
    path = save_checkpoint(tmp_path / "model.pt", model, metadata={"epochs": 3, "note": "test"})
    raw = torch.load(path, weights_only=True)  # nothing but tensors, dicts, lists and scalars
    assert raw["class_names"] == list(CLASSES) and raw["metadata"]["epochs"] == 3

    loaded = load_checkpoint(path, device="cpu")
    assert loaded.config == model.config and loaded.class_names == CLASSES
    assert loaded.metadata == {"epochs": 3, "note": "test"}
    before, after = (predict_slide(m, slide, slide_id="toy", seed=2, draws=2) for m in (model, loaded))
    np.testing.assert_array_equal(before.probabilities, after.probabilities)
    np.testing.assert_array_equal(before.patch_top_left, after.patch_top_left)
    np.testing.assert_array_equal(before.attention, after.attention)


def test_save_is_atomic_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, tiny_model())
    save_checkpoint(path, tiny_model(seed=1))  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_foreign_torch_file_is_a_clear_error(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"state_dict": tiny_model().state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"foreign\.pt.*not a wsi-ats checkpoint"):
        load_checkpoint(path)


def test_garbage_file_is_a_clear_error(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"garbage\.pt"):
        load_checkpoint(path)


def test_weights_of_another_architecture_are_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / "model.pt", tiny_model())
    payload = read_checkpoint(path)
    payload["config"]["features"]["channels"] = 16  # config no longer matches the weights
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"model\.pt: cannot rebuild the model"):
        load_checkpoint(path)


def test_missing_checkpoint_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_checkpoint(tmp_path / "nowhere.pt")
