"""`wsi_ats.discover`: slides found under folders, one id each, the same inputs always the same ids."""

from __future__ import annotations

import os

import numpy as np

from wsi_ats.discover import default_slide_id, discover, slide_stem
from wsi_ats.manifest import ManifestRow


def touch(path, data: bytes = b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_folders_are_searched_recursively_by_slide_extension_and_zarr_stores(tmp_path):
    touch(tmp_path / "a.svs")
    touch(tmp_path / "sub" / "b.TIFF")
    touch(tmp_path / "sub" / "deeper" / "c.ndpi")
    touch(tmp_path / "v3.ome.zarr" / "zarr.json")
    touch(tmp_path / "v2" / ".zattrs")  # a store even without .zarr in its name
    touch(tmp_path / "v2" / "0" / ".zarray")
    found = discover([tmp_path])
    assert [(s.slide_id, os.path.relpath(s.path, tmp_path)) for s in found.slides] == [
        ("a", "a.svs"),
        ("b", "sub/b.TIFF"),
        ("c", "sub/deeper/c.ndpi"),
        ("v2", "v2"),
        ("v3", "v3.ome.zarr"),
    ]


def test_other_files_are_skipped_with_a_note_and_hidden_ones_silently(tmp_path):
    touch(tmp_path / "a.tif")
    touch(tmp_path / "README.md")
    touch(tmp_path / ".a.tif.0123.tmp")
    found = discover([tmp_path])
    assert [s.slide_id for s in found.slides] == ["a"]
    assert len(found.notes) == 1 and "README.md" in found.notes[0] and "not a slide" in found.notes[0]


def test_a_file_named_explicitly_is_kept_even_if_missing_or_oddly_named(tmp_path):
    found = discover([tmp_path / "gone.svs", tmp_path / "notes.txt"])
    assert [s.slide_id for s in found.slides] == ["gone", "notes"]
    assert all(os.path.isabs(s.path) for s in found.slides)


def test_duplicate_stems_get_numbered_ids_in_discovery_order(tmp_path):
    touch(tmp_path / "x" / "s.svs")
    touch(tmp_path / "y" / "s.tif")
    touch(tmp_path / "y" / "s-2.tif")  # found before y/s.tif, and takes the name "s-2" first
    found = [(s.slide_id, os.path.relpath(s.path, tmp_path)) for s in discover([tmp_path]).slides]
    assert found == [("s", "x/s.svs"), ("s-2", "y/s-2.tif"), ("s-3", "y/s.tif")]


def test_manifest_ids_are_kept_and_path_ids_make_way(tmp_path):
    path = touch(tmp_path / "s.svs")
    other = touch(tmp_path / "d" / "s.svs")
    found = discover([other, ManifestRow("s", str(path), "tumour")])
    assert [(s.slide_id, s.path) for s in found.slides] == [("s-2", str(other)), ("s", str(path))]


def test_a_slide_listed_twice_is_predicted_once(tmp_path):
    path = touch(tmp_path / "a.svs")
    found = discover([path, tmp_path])
    assert [s.slide_id for s in found.slides] == ["a"]
    assert any("more than once" in n for n in found.notes)


def test_mrxs_data_folder_and_dicom_series_belong_to_their_slide(tmp_path):
    touch(tmp_path / "m.mrxs")
    touch(tmp_path / "m" / "Slidedat.ini")
    touch(tmp_path / "m" / "Data0000.dat")
    touch(tmp_path / "dicom" / "level0.dcm")
    touch(tmp_path / "dicom" / "level1.dcm")
    found = discover([tmp_path])
    assert [(s.slide_id, os.path.basename(s.path)) for s in found.slides] == [("dicom", "level0.dcm"), ("m", "m.mrxs")]
    assert not any("Slidedat" in n for n in found.notes)


def test_ids_drop_slide_and_ome_suffixes():
    assert slide_stem("/a/b/case 1.ome.tiff") == "case 1"
    assert slide_stem("/a/b/case.v2.svs") == "case.v2"
    assert slide_stem("/a/store.zarr") == "store"
    assert slide_stem("/a/notes.txt") == "notes"


def test_a_slide_given_without_an_id_is_named_by_the_same_rule_as_discovery():
    assert default_slide_id("/a/b/case 1.ome.tiff") == slide_stem("/a/b/case 1.ome.tiff") == "case 1"
    assert default_slide_id(np.zeros((4, 4, 3), np.uint8)) == "array"
