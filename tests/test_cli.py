"""The command line's own behaviour: `synth` and `info` end to end, exit codes on bad input."""

from __future__ import annotations

import csv
import json

import pytest

from wsi_ats.cli import main
from wsi_ats.exit_codes import EXIT_OK, EXIT_USAGE


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "cohort"
    assert main(["synth", str(out), "--n", "2", "--size", "1024", "--format", "tiff", "--seed", "3"]) == EXIT_OK
    return out


def test_synth_writes_a_manifest_with_one_row_per_slide(cohort):
    with (cohort / "manifest.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == ["positive", "negative"]
    assert all((cohort / r["path"]).is_file() for r in rows)


def test_info_json_reports_levels_mpp_and_vendor(cohort, capsys):
    slide = next((cohort / "slides").glob("*.tiff"))
    assert main(["info", str(slide), "--json"]) == EXIT_OK
    desc = json.loads(capsys.readouterr().out)
    assert [lv["downsample"] for lv in desc["levels"]] == [1, 4, 16]
    assert desc["levels"][0]["tile"] == [256, 256]
    assert desc["mpp"] == pytest.approx(0.25)
    assert desc["vendor"] == "aperio"


def test_info_table_names_every_level(cohort, capsys):
    slide = next((cohort / "slides").glob("*.tiff"))
    assert main(["info", str(slide)]) == EXIT_OK
    table = capsys.readouterr().out
    assert "0.25 um/px" in table and "256x256" in table


@pytest.mark.parametrize("content", [None, b"not a slide\n"], ids=["missing", "text"])
def test_info_on_a_bad_path_exits_2_and_names_it(tmp_path, capsys, content):
    path = tmp_path / "bad.svs"
    if content is not None:
        path.write_bytes(content)
    assert main(["info", str(path)]) == EXIT_USAGE
    assert str(path) in capsys.readouterr().err


def test_train_with_a_bad_manifest_exits_2_naming_the_line(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide_id,path,label\na,a.tiff,x\na,b.tiff,y\n")
    recipe = tmp_path / "r.toml"
    recipe.write_text("")
    assert main(["train", "--manifest", str(manifest), "--config", str(recipe), "--out", str(tmp_path / "run")]) == EXIT_USAGE
    assert f"{manifest}:3" in capsys.readouterr().err
