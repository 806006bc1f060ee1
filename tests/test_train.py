"""Training: learning on a toy cohort, determinism, resuming, splits and the files a run leaves."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from test_models import tiny_config
from toy_cohort import write_toy_cohort

from wsi_ats import load_checkpoint
from wsi_ats.commands import train_command
from wsi_ats.evaluate import truth_boxes
from wsi_ats.manifest import ManifestRow, read_manifest
from wsi_ats.models import PipelineConfig, TrainConfig
from wsi_ats.train import assign_splits, train


def recipe(epochs: int = 2, **train_changes) -> PipelineConfig:
    model = dataclasses.replace(tiny_config(), n_patches=4, center_features=True)
    return PipelineConfig(model=model, train=TrainConfig(**{"epochs": epochs, "lr": 1e-2, **train_changes}))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return write_toy_cohort(tmp_path_factory.mktemp("toy"), n=4, splits=True, truth=True)


def test_tiny_model_overfits_a_four_slide_cohort(cohort, tmp_path):
    rows = [dataclasses.replace(r, split="train") for r in read_manifest(cohort)]
    metrics = train(rows, recipe(epochs=8), tmp_path, progress=False)
    losses = [e["loss"] for e in metrics["epochs"]]
    assert metrics["epochs"][-1]["accuracy"] == 1.0
    assert losses[-1] < 0.5 * losses[0]


def test_run_writes_model_metrics_and_resume_state(cohort, tmp_path):
    truth = truth_boxes(cohort.parent / "annotations", [r.slide_id for r in read_manifest(cohort)])
    metrics = train(cohort, recipe(epochs=2), tmp_path, progress=False, truth=truth)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "metrics.json", "model.pt"]
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert metrics["splits"]["test"] == ["toy_2", "toy_3"] and metrics["held_out_split"] == "test"
    assert set(metrics["test"]) >= {
        "accuracy",
        "loss",
        "patches_on_truth",
        "patches_on_truth_uniform",
        "truth_tissue_fraction",
        "concentration",
    }
    assert metrics["seconds_per_step"] > 0 and metrics["peak_rss_mib"] > 0
    model = load_checkpoint(tmp_path / "model.pt")
    assert model.class_names == ("negative", "positive") and model.metadata["test"] == metrics["test"]


def test_same_seed_same_metrics(cohort, tmp_path):
    runs = [train(cohort, recipe(epochs=2), tmp_path / name, seed=7, progress=False) for name in ("a", "b")]
    for run in runs:
        for volatile in ("seconds_per_step", "train_seconds", "peak_rss_mib"):
            run.pop(volatile)
        for epoch in run["epochs"]:
            epoch.pop("seconds")
    assert runs[0] == runs[1]


def test_rerun_resumes_from_the_last_epoch_and_matches_an_uninterrupted_run(cohort, tmp_path):
    train(cohort, recipe(epochs=1), tmp_path / "resumed", progress=False)
    resumed = train(cohort, recipe(), tmp_path / "resumed", epochs=2, progress=False, resume=True)
    straight = train(cohort, recipe(), tmp_path / "straight", epochs=2, progress=False)
    assert [e["loss"] for e in resumed["epochs"]] == [e["loss"] for e in straight["epochs"]]
    a, b = (torch.load(tmp_path / d / "model.pt", weights_only=True)["state_dict"] for d in ("resumed", "straight"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resuming_with_another_recipe_is_refused(cohort, tmp_path):
    train(cohort, recipe(epochs=1), tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"last\.pt: belongs to a different run"):
        train(cohort, recipe(epochs=2, lr=1e-3), tmp_path, progress=False, resume=True)


def test_without_a_split_column_the_split_is_seeded_and_stratified():
    rows = [ManifestRow(f"s{i}", f"s{i}.tiff", "pos" if i % 2 else "neg") for i in range(20)]
    config = TrainConfig(val_fraction=0.2, test_fraction=0.2)
    a, b, c = assign_splits(rows, config, seed=1), assign_splits(rows, config, seed=1), assign_splits(rows, config, seed=2)
    assert a == b and a != c
    for name, count in (("train", 12), ("val", 4), ("test", 4)):
        assert len(a[name]) == count and sum(r.label == "pos" for r in a[name]) == count // 2


def test_train_command_reads_ground_truth_beside_the_manifest_by_default(cohort, tmp_path):
    assert train_command(manifest=cohort, config=recipe(epochs=1), out=tmp_path) == 0
    assert "patches_on_truth" in json.loads((tmp_path / "metrics.json").read_text())["test"]


def test_train_command_with_a_missing_truth_folder_exits_2_naming_it(cohort, tmp_path, capsys):
    assert train_command(manifest=cohort, config=recipe(epochs=1), out=tmp_path, truth=tmp_path / "nowhere") == 2
    assert "nowhere: ground-truth folder not found" in capsys.readouterr().err


def test_without_a_split_column_all_slides_of_a_patient_land_in_one_split():
    rows = [ManifestRow(f"s{i}", f"s{i}.tiff", "pos" if i % 2 else "neg", case_id=f"p{i // 4}") for i in range(40)]
    splits = assign_splits(rows, TrainConfig(val_fraction=0.2, test_fraction=0.2), seed=3)
    where = {r.case_id: name for name, part in splits.items() for r in part}
    assert all(where[r.case_id] == name for name, part in splits.items() for r in part)
    assert sorted(len(part) for part in splits.values()) == [8, 8, 24]
