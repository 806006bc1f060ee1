"""Shipped recipes: every ``pipelines/*.toml`` is in the package, found by name from any folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsi_ats import recipes
from wsi_ats.cli import main
from wsi_ats.exit_codes import EXIT_USAGE
from wsi_ats.models import load_config

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


def test_every_recipe_in_pipelines_is_shipped_and_nothing_else():
    assert recipes.available() == tuple(sorted(p.stem for p in PIPELINES.glob("*.toml")))


def test_a_shipped_recipe_is_the_file_users_read_in_pipelines():
    assert recipes.path("synthetic_wsi").read_bytes() == (PIPELINES / "synthetic_wsi.toml").read_bytes()
    assert load_config(recipes.path("synthetic_wsi.toml")).model.n_patches > 0


def test_a_name_resolves_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert recipes.resolve("synthetic_wsi") == recipes.path("synthetic_wsi")


def test_an_existing_file_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "synthetic_wsi").write_text("[model]\n")
    assert recipes.resolve("synthetic_wsi") == Path("synthetic_wsi")


@pytest.mark.parametrize("name", ["no_such_recipe", "../recipes/synthetic_wsi", "pipelines/absent.toml"])
def test_an_unknown_recipe_is_refused_listing_the_shipped_ones(name):
    with pytest.raises(FileNotFoundError, match=f"{name}.*synthetic_wsi"):
        recipes.resolve(name)


def test_train_reads_a_shipped_recipe_by_name(tmp_path, capsys):
    # Every slide held out: train gets as far as the recipe's split settings, then stops.
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide_id,path,label,split\na,a.tiff,x,test\nb,b.tiff,y,test\n")
    assert main(["train", "--manifest", str(manifest), "--config", "synthetic_wsi", "--out", str(tmp_path / "run")]) == EXIT_USAGE
    assert "no training slides" in capsys.readouterr().err


def test_train_with_an_unknown_recipe_exits_2_listing_the_shipped_ones(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide_id,path,label\n")
    assert main(["train", "--manifest", str(manifest), "--config", "no_such", "--out", str(tmp_path / "run")]) == EXIT_USAGE
    assert "no_such: recipe not found" in capsys.readouterr().err
