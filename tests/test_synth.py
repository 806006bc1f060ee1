"""Synthetic cohorts: real files read back with OpenSlide, zarr and ome-zarr's own models."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
import zarr
from ome_zarr_models import open_ome_zarr

from wsi_ats.manifest import read_manifest
from wsi_ats.synth import feature_collection, make_cohort, make_slide, plan_cohort
from wsi_ats.synth.pyramid import downsamples, slide_shape

SIZE = 2048
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A positive and a negative slide with the same seed, as TIFF and as OME-Zarr 0.5 / 0.4."""
    d = tmp_path_factory.mktemp("synth")
    out = {}
    for positive in (True, False):
        key = "pos" if positive else "neg"
        out[f"{key}_tiff"] = (d / f"{key}.tiff", make_slide(d / f"{key}.tiff", SIZE, positive=positive, seed=7))
    out["pos_zarr05"] = (d / "pos.ome.zarr", make_slide(d / "pos.ome.zarr", SIZE, positive=True, seed=7))
    out["pos_zarr04"] = (d / "pos04.ome.zarr", make_slide(d / "pos04.ome.zarr", SIZE, positive=True, seed=7, zarr_version="0.4"))
    return out


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def _read(slide: openslide.OpenSlide, level: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """(y0, x0, y1, x1) level-0 box read at `level`, RGB."""
    ds = int(slide.level_downsamples[level])
    y0, x0, y1, x1 = (v // ds for v in box)
    region = slide.read_region((x0 * ds, y0 * ds), level, (max(x1 - x0, 1), max(y1 - y0, 1)))
    return np.asarray(region.convert("RGB"))


def test_tiff_opens_in_openslide_as_an_aperio_pyramid(made):
    path, _ = made["pos_tiff"]
    with openslide.OpenSlide(path) as slide:
        assert slide.properties["openslide.vendor"] == "aperio"
        assert float(slide.properties["openslide.mpp-x"]) == 0.25
        assert float(slide.properties["openslide.mpp-y"]) == 0.25
        assert slide.properties["openslide.objective-power"] == "40"
        assert slide.level_count == 3
        assert slide.level_downsamples == (1.0, 4.0, 16.0)
        assert slide.level_dimensions == ((SIZE, SIZE), (SIZE // 4, SIZE // 4), (SIZE // 16, SIZE // 16))
        assert slide.properties["openslide.level[0].tile-width"] == "256"
        assert "thumbnail" in slide.associated_images


def test_tiff_levels_are_jpeg_tiles_and_reduced_pages_are_marked(made):
    path, _ = made["pos_tiff"]
    with tifffile.TiffFile(path) as tif:
        tiled = [p for p in tif.pages if p.is_tiled]
        assert [p.compression for p in tiled] == [tifffile.COMPRESSION.JPEG] * 3
        assert [p.tilewidth for p in tiled] == [256] * 3
        assert [p.subfiletype for p in tiled] == [0, 1, 1]
        assert tif.pages[0].description.startswith("Aperio Image Library")
        assert not tif.pages[1].is_tiled  # the thumbnail, second as in Aperio files


def test_large_slides_get_a_fourth_level_at_downsample_64():
    assert downsamples((32768, 32768)) == (1, 4, 16, 64)
    assert downsamples((16384, 40000)) == (1, 4, 16, 64)
    assert downsamples((32512, 32512)) == (1, 4, 16)


def test_slide_size_rounds_up_to_whole_tiles_so_levels_are_exact():
    assert slide_shape(1000) == (1024, 1024)
    assert slide_shape((300, 600)) == (512, 768)
    assert slide_shape(2048) == (2048, 2048)
    with pytest.raises(ValueError, match="positive"):
        slide_shape(0)


def test_ome_zarr_05_is_a_zarr_v3_group_with_ngff_multiscales(made):
    path, _ = made["pos_zarr05"]
    group = zarr.open_group(path, mode="r")
    assert group.metadata.zarr_format == 3
    ome = group.attrs["ome"]
    assert ome["version"] == "0.5"
    (ms,) = ome["multiscales"]
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert [d["path"] for d in ms["datasets"]] == ["0", "1", "2"]
    assert [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]] == [[1.0, 0.25, 0.25], [1.0, 1.0, 1.0], [1.0, 4.0, 4.0]]
    for level, ds in enumerate((1, 4, 16)):
        array = group[str(level)]
        assert array.shape == (3, SIZE // ds, SIZE // ds)
        assert array.dtype == np.uint8
        assert array.chunks == (3, 256, 256) or array.shape[1] < 256
        assert array.metadata.dimension_names == ("c", "y", "x")
    assert type(open_ome_zarr(group)).__module__.startswith("ome_zarr_models.v05")


def test_ome_zarr_04_is_a_zarr_v2_group_with_ngff_multiscales(made):
    path, _ = made["pos_zarr04"]
    group = zarr.open_group(path, mode="r")
    assert group.metadata.zarr_format == 2
    (ms,) = json.loads((path / ".zattrs").read_text())["multiscales"]
    assert ms["version"] == "0.4"
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert group["0"].shape == (3, SIZE, SIZE)
    assert type(open_ome_zarr(group)).__module__.startswith("ome_zarr_models.v04")


def test_tiff_and_zarr_hold_the_same_slide(made):
    tiff_path, _ = made["pos_tiff"]
    lossless = zarr.open_group(made["pos_zarr05"][0], mode="r")["2"][:].transpose(1, 2, 0).astype(float)
    with openslide.OpenSlide(tiff_path) as slide:
        jpeg = np.asarray(slide.read_region((0, 0), 2, slide.level_dimensions[2]).convert("RGB")).astype(float)
    assert np.abs(jpeg - lossless).mean() < 6.0  # JPEG q90 (4:2:0 chroma) error only
    assert np.abs(jpeg.mean((0, 1)) - lossless.mean((0, 1))).max() < 1.0


def test_lesions_are_crowded_dark_nuclei_mimics_are_not(made):
    """At level 0 about a third of a lesion box is nuclear-dark, under 6 % of a mimic box."""
    dark = {}
    for key in ("pos_tiff", "neg_tiff"):
        path, scene = made[key]
        with openslide.OpenSlide(path) as slide:
            dark[key] = [(_luminance(_read(slide, 0, b.box)) < 60).mean() for b in scene.blobs]
    assert len(dark["pos_tiff"]) == len(dark["neg_tiff"]) == 3
    assert min(dark["pos_tiff"]) > 0.2
    assert max(dark["neg_tiff"]) < 0.1


def test_lesions_and_mimics_look_alike_at_downsample_16(made):
    """Same mean colour at the low level, and both clearly darker than the tissue around them."""
    means, around = {}, {}
    for key in ("pos_tiff", "neg_tiff"):
        path, scene = made[key]
        with openslide.OpenSlide(path) as slide:
            means[key] = np.array([_read(slide, 2, b.box).reshape(-1, 3).mean(0) for b in scene.blobs]).mean(0)
            rings = []
            for b in scene.blobs:
                y0, x0, y1, x1 = b.box
                m = 96
                patch = _read(slide, 2, (y0 - m, x0 - m, y1 + m, x1 + m))
                rings.append(np.median(_luminance(patch)))
            around[key] = np.array(rings)
    assert np.abs(means["pos_tiff"] - means["neg_tiff"]).max() < 10
    for key in means:
        assert (around[key] - _luminance(means[key]) > 25).all()


def test_blobs_lie_inside_tissue(made):
    for key in ("pos_tiff", "neg_tiff"):
        path, scene = made[key]
        with openslide.OpenSlide(path) as slide:
            for b in scene.blobs:
                y0, x0, y1, x1 = b.box
                ring = _read(slide, 0, (y0 - 24, x0 - 24, y1 + 24, x1 + 24))
                assert (_luminance(ring) < 235).mean() > 0.99  # no glass around the blob


def test_ground_truth_is_geojson_rectangles_in_xy_order(made):
    _, scene = made["pos_tiff"]
    fc = feature_collection(scene)
    assert fc["type"] == "FeatureCollection"
    assert [f["properties"]["kind"] for f in fc["features"]] == ["lesion"] * 3
    for feature, blob in zip(fc["features"], scene.blobs):
        (ring,) = feature["geometry"]["coordinates"]
        assert feature["geometry"]["type"] == "Polygon" and ring[0] == ring[-1] and len(ring) == 5
        y0, x0, y1, x1 = blob.box
        assert ring[0] == [x0, y0] and ring[2] == [x1, y1]
        assert 48 <= y1 - y0 <= 97 and 48 <= x1 - x0 <= 97
    _, negative = made["neg_tiff"]
    assert {f["properties"]["kind"] for f in feature_collection(negative)["features"]} == {"mimic"}


def _level_digest(path: Path) -> str:
    with tifffile.TiffFile(path) as tif:
        return hashlib.sha256(b"".join(p.asarray().tobytes() for p in tif.pages)).hexdigest()


def test_same_seed_gives_identical_slides_whatever_the_thread_count(made, tmp_path):
    path, _ = made["pos_tiff"]
    again = tmp_path / path.name  # the name is in the Aperio description
    make_slide(again, SIZE, positive=True, seed=7, workers=2)
    assert again.read_bytes() == path.read_bytes()
    zarr_again = tmp_path / "again.ome.zarr"
    make_slide(zarr_again, SIZE, positive=True, seed=7)
    first = zarr.open_group(made["pos_zarr05"][0], mode="r")
    second = zarr.open_group(zarr_again, mode="r")
    for level in ("0", "1", "2"):
        assert np.array_equal(first[level][:], second[level][:])


def test_different_seed_gives_a_different_slide(made, tmp_path):
    path, scene = made["pos_tiff"]
    other = tmp_path / "other.tiff"
    other_scene = make_slide(other, SIZE, positive=True, seed=8)
    assert _level_digest(other) != _level_digest(path)
    assert [b.box for b in other_scene.blobs] != [b.box for b in scene.blobs]


def test_cohort_manifest_is_balanced_split_and_readable(tmp_path):
    manifest = make_cohort(tmp_path / "cohort", n=6, size=SIZE, formats=("tiff", "zarr"), seed=3, workers=1, progress=False)
    with manifest.open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["slide_id", "path", "label", "split"]
        rows = list(reader)
    assert [r["label"] for r in rows].count("positive") == [r["label"] for r in rows].count("negative") == 3
    assert {r["split"] for r in rows if r["label"] == "positive"} == {"train", "val", "test"}
    assert all(not Path(r["path"]).is_absolute() and (manifest.parent / r["path"]).exists() for r in rows)
    assert {r["path"].split(".", 1)[1] for r in rows} == {"tiff", "ome.zarr"}
    for r in rows:
        fc = json.loads((manifest.parent / "annotations" / f"{r['slide_id']}.geojson").read_text())
        kinds = {f["properties"]["kind"] for f in fc["features"]}
        assert kinds == ({"lesion"} if r["label"] == "positive" else {"mimic"})
    assert [r.slide_id for r in read_manifest(manifest)] == [r["slide_id"] for r in rows]


def test_cohort_plan_is_deterministic_and_keeps_format_independent_of_label():
    plan = plan_cohort(16, ("tiff", "zarr"), seed=0)
    assert plan == plan_cohort(16, ("tiff", "zarr"), seed=0)
    assert [s.seed for s in plan] != [s.seed for s in plan_cohort(16, ("tiff", "zarr"), seed=1)]
    for label in ("positive", "negative"):
        mine = [s for s in plan if s.label == label]
        assert sorted(s.fmt for s in mine) == ["tiff"] * 4 + ["zarr"] * 4
        assert [s.split for s in mine] == ["train"] * 4 + ["val"] * 2 + ["test"] * 2


def test_bad_cohort_requests_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="at least 2"):
        plan_cohort(1)
    with pytest.raises(ValueError, match="png"):
        plan_cohort(4, ("tiff", "png"))
    with pytest.raises(ValueError, match="slide.png"):
        make_slide(tmp_path / "slide.png", SIZE, positive=True, seed=0)


def test_memory_stays_bounded_while_writing(tmp_path):
    """The benchmark's code path at 8192 px: a full level 0 alone would be 192 MiB."""
    out = tmp_path / "memory.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "synth_memory.py"), "--size", "8192", "--out", str(out), "--dir", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    report = json.loads(out.read_text())
    assert report["level_dimensions"] == [[8192, 8192], [2048, 2048], [512, 512]]
    assert report["peak_rss_mb"] - report["baseline_rss_mb"] < 120
