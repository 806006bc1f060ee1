"""Reading and writing manifests: paths against the manifest's folder or a root given at run time, case ids kept."""

from __future__ import annotations

import os

import pytest

from wsi_ats.manifest import ManifestError, ManifestRow, read_manifest, write_manifest


def write(path, text: str):
    path.write_text(text)
    return path


def test_relative_paths_resolve_against_the_manifest_folder_by_default(tmp_path):
    m = write(tmp_path / "m.csv", "slide_id,path,label\na,slides/a.tiff,x\n")
    assert read_manifest(m)[0].path == str(tmp_path / "slides" / "a.tiff")


def test_a_root_given_at_read_time_replaces_the_manifest_folder(tmp_path):
    m = write(tmp_path / "m.csv", "slide_id,path,label\na,slides/a.tiff,x\n")
    root = tmp_path / "elsewhere"
    assert read_manifest(m, root=root)[0].path == str(root / "slides" / "a.tiff")


def test_a_url_root_joins_relative_paths_and_keeps_absolute_ones_and_urls(tmp_path):
    m = write(tmp_path / "m.csv", "slide_id,path,label\na,slides/a.tiff,x\nb,/abs/b.svs,x\nc,s3://other/c.svs,x\n")
    assert [r.path for r in read_manifest(m, root="s3://bucket/cohort/")] == [
        "s3://bucket/cohort/slides/a.tiff", "/abs/b.svs", "s3://other/c.svs",
    ]  # fmt: skip


def test_case_id_is_an_optional_column_that_is_kept(tmp_path):
    m = write(tmp_path / "m.csv", "slide_id,path,label,split,case_id\na,a.tiff,x,train,p1\nb,b.tiff,x,train,\n")
    assert [(r.case_id, r.split) for r in read_manifest(m)] == [("p1", "train"), (None, "train")]


def test_a_case_in_two_splits_is_refused_naming_both_lines(tmp_path):
    m = write(tmp_path / "m.csv", "slide_id,path,label,split,case_id\na,a.tiff,x,train,p1\nb,b.tiff,x,val,p2\nc,c.tiff,x,test,p1\n")
    with pytest.raises(ManifestError, match=r"m\.csv:4: column case_id: 'p1' is in split test here and in train on line 2"):
        read_manifest(m)


def test_write_then_read_round_trips_rows_with_cases(tmp_path):
    rows = [ManifestRow("a", str(tmp_path / "s" / "a.tiff"), "x", "val", "p1"), ManifestRow("b", str(tmp_path / "b.tiff"), "y")]
    write_manifest(tmp_path / "m.csv", rows)
    assert (tmp_path / "m.csv").read_text().splitlines() == ["slide_id,path,label,split,case_id", "a,s/a.tiff,x,val,p1", "b,b.tiff,y,,"]
    assert read_manifest(tmp_path / "m.csv") == rows


def test_written_paths_are_relative_to_the_root_and_read_back_against_another(tmp_path):
    data = tmp_path / "data"
    rows = [ManifestRow("a", str(data / "slides" / "a.tiff"), "x")]
    (tmp_path / "shared").mkdir()
    write_manifest(tmp_path / "shared" / "m.csv", rows, root=data)
    assert "a,slides/a.tiff,x," in (tmp_path / "shared" / "m.csv").read_text()
    moved = tmp_path / "mnt" / "data"
    assert read_manifest(tmp_path / "shared" / "m.csv", root=moved)[0].path == str(moved / "slides" / "a.tiff")


def test_writing_a_slide_outside_the_root_is_an_error_naming_it(tmp_path):
    rows = [ManifestRow("a", str(tmp_path / "other" / "a.tiff"), "x")]
    with pytest.raises(ManifestError, match="'a' .* is not under --root"):
        write_manifest(tmp_path / "m.csv", rows, root=tmp_path / "data")
    assert not (tmp_path / "m.csv").exists()


def test_writing_leaves_no_temporary_file(tmp_path):
    write_manifest(tmp_path / "m.csv", [ManifestRow("a", "a.tiff", "x")])
    assert os.listdir(tmp_path) == ["m.csv"]
