"""Hostile slides: every slide gets a row that is right or says why it cannot be trusted, in bounded memory and time.

Each input is a real file built here (TIFF, OME-Zarr, huge sparse TIFF) and goes through the
real pipeline with a model trained for one epoch on the synthetic cohort (0.25 um/px; it reads
patches at 1 um/px, attention at 4, tissue at 16). Rows are asserted exactly.
"""

from __future__ import annotations

import io
import json
import shutil
import time
import tracemalloc
import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image
from predict_data import cohort_slides, trained_model

from wsi_ats import open_slide
from wsi_ats.cli import main
from wsi_ats.engine.plan import plan_slide, thumbnail
from wsi_ats.engine.run import forward_slide, predict_slide
from wsi_ats.evaluate import evaluate
from wsi_ats.exit_codes import EXIT_OK, EXIT_USAGE
from wsi_ats.manifest import ManifestRow
from wsi_ats.outputs import SLIDE_FILES, render_heatmap_png
from wsi_ats.pipeline import THUMBNAIL_SIZE, Pipeline, exit_code, load_model, predict_one
from wsi_ats.readers import SlideError
from wsi_ats.synth.restore import restore
from wsi_ats.synth.sparse import write_sparse_tiff

FIX = "if that is wrong, give the slide's level-0 resolution with the manifest's mpp column or --mpp"
MISSING = "(an empty scan, or a file whose tiles or chunks are missing)"
#: slide id -> the row's exact warning.
UNJUDGED = {
    "tiny": "slide too small: 16x16 px, less than the attention net's field (112x112 px at level 0)",
    "small": "slide too small: 200x200 px, less than one patch (256x256 px at level 0)",
    "white": f"blank slide: every pixel is RGB (255, 255, 255) {MISSING}",
    "black": f"blank slide: every pixel is RGB (0, 0, 0) {MISSING}",
    "missing_chunks": f"blank slide: every pixel is RGB (0, 0, 0) {MISSING}",
    "grey": "no tissue found: nothing more saturated than the threshold 0.051 at 1/64",
    "mpp352": f"implausible resolution: the file says 352 um/px at level 0, outside the 0.05-20 um/px of slide scanners; {FIX}",
    "coarse": f"too coarse: level 0 (2 um/px) has less detail than the model's high scale (1 um/px): it would be enlarged 2x; {FIX}",
}
#: A one-level slide too large to build a pyramid from (90 gigapixels; the limit is 2^36).
HUGE = (300_000, 300_000)
PYRAMID_FIX = "build a pyramid first, e.g. `vips tiffsave SLIDE OUT.tiff --tile --pyramid --compression jpeg`"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return trained_model(tmp_path_factory.getbasetemp())[0]


@pytest.fixture(scope="module")
def tissue(model_path) -> np.ndarray:
    """A cohort slide's level 0 (1024^2, 0.25 um/px): real tissue with lesions."""
    with open_slide(cohort_slides(model_path.parent.parent / "cohort" / "manifest.csv")[0]) as slide:
        return slide.read_region(0, (0, 0), slide.levels[0].shape)


def write(path, image, *, mpp=0.25, downsamples=(1,), fmt="tiff"):
    """``image`` as a JPEG TIFF (Aperio-like) or an OME-Zarr, with the levels at ``downsamples`` and stating ``mpp``."""
    return restore(open_slide(image, mpp=0.25), path, downsamples=downsamples, mpp=mpp, fmt=fmt)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, tissue) -> dict[str, object]:
    """One slide per hostile case (and a good one), named by slide id."""
    d = tmp_path_factory.mktemp("hostile")
    grey = np.repeat(np.random.default_rng(0).integers(150, 250, (2048, 2048, 1), dtype=np.uint8), 3, axis=2)
    paths = {
        "tiny": write(d / "tiny.tiff", np.full((16, 16, 3), (200, 120, 160), np.uint8)),
        "small": write(d / "small.tiff", np.full((200, 200, 3), (200, 120, 160), np.uint8)),
        "white": write(d / "white.tiff", np.full((2048, 2048, 3), 255, np.uint8), downsamples=(1, 4, 16)),
        "black": write(d / "black.tiff", np.zeros((2048, 2048, 3), np.uint8), downsamples=(1, 4, 16)),
        "grey": write(d / "grey.tiff", grey, downsamples=(1, 4, 16)),
        "mpp352": write(d / "mpp352.tiff", tissue, mpp=352),
        "coarse": write(d / "coarse.tiff", tissue, mpp=2.0),
        "missing_chunks": write(d / "missing_chunks.ome.zarr", tissue, downsamples=(1, 4, 16), fmt="zarr"),
        "good": write(d / "good.tiff", tissue, downsamples=(1, 4, 16)),
        "huge": write_sparse_tiff(d / "huge.tiff", HUGE, tile=512),
    }
    for chunks in list(paths["missing_chunks"].rglob("c")):  # zarr v3: every chunk of every level
        shutil.rmtree(chunks)
    return paths


@pytest.fixture(scope="module")
def batch(tmp_path_factory, hostile, model_path):
    """``(out, rows by slide id)`` of one batch over every hostile slide."""
    out = tmp_path_factory.mktemp("hostile-out")
    rows = Pipeline(model_path, device="cpu").run_many(list(hostile.values()), out, verbose=False)
    return out, {r["slide_id"]: r for r in rows}


# -- slides that cannot be judged ---------------------------------------------------------------------


@pytest.mark.parametrize("slide_id", sorted(UNJUDGED))
def test_a_slide_that_cannot_be_judged_gets_no_class_and_a_warning_saying_why(batch, slide_id):
    _, rows = batch
    row = rows[slide_id]
    assert {k: row[k] for k in ("status", "error", "warning", "prediction", "probability", "patches_fetched")} == {
        "status": "unjudged",
        "error": "",
        "warning": UNJUDGED[slide_id],
        "prediction": "",
        "probability": None,
        "patches_fetched": 0,
    }
    assert [row[k] for k in row if k.startswith("prob_")] == [None, None]


def test_an_unjudged_slide_has_its_files_with_nothing_on_the_slide(batch):
    out, _ = batch
    for slide_id in UNJUDGED:
        folder = out / slide_id
        assert sorted(p.name for p in folder.iterdir()) == sorted(SLIDE_FILES)
        assert json.loads((folder / "patches.geojson").read_text())["features"] == []
        assert np.load(folder / "attention.npy").shape == (0, 0)
        Image.open(folder / "attention.png").verify()


def test_a_judged_slide_has_its_class_and_an_empty_warning(batch):
    _, rows = batch
    good = rows["good"]
    assert (good["status"], good["error"], good["warning"]) == ("ok", "", "")
    assert good["prediction"] in ("negative", "positive") and good["patches_fetched"] == 32


def test_predict_exits_1_when_any_slide_is_not_judged(batch):
    _, rows = batch
    assert exit_code([rows["good"]]) == 0
    assert exit_code([rows["good"], rows["white"]]) == 1


def test_no_tissue_is_the_rows_warning_not_a_python_warning(hostile, model_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning would fail the slide (predict_one catches it as an error)
        outcome = predict_one(model_path, str(hostile["grey"]), "grey", device="cpu")
    assert outcome.error is None and outcome.result.warnings == (UNJUDGED["grey"],)


def test_a_slide_that_cannot_be_judged_cannot_train_a_model(hostile, model_path):
    model = load_model(model_path, "cpu")
    with open_slide(hostile["white"]) as slide:
        plan = plan_slide(model, slide)
        with pytest.raises(SlideError, match=r"white\.tiff: cannot train on this slide: blank slide: every pixel is RGB \(255"):
            forward_slide(model, plan, [])


def test_evaluation_counts_an_unjudged_slide_apart_and_keeps_the_loss_finite(hostile, model_path):
    model = load_model(model_path, "cpu")
    good = ManifestRow("good", str(hostile["good"]), label="positive")
    judged = evaluate(model, [good])
    both = evaluate(model, [good, ManifestRow("white", str(hostile["white"]), label="negative")])
    assert both["unjudged"] == 1 and judged["unjudged"] == 0
    assert both["loss"] == judged["loss"]  # the unjudged slide has no likelihood to score
    assert both["accuracy"] == judged["accuracy"] / 2  # ...and no answer: not correct


def test_every_coordinate_written_lies_inside_the_slide(batch, hostile, model_path):
    out, _ = batch
    result = Pipeline(model_path, device="cpu").run(hostile["good"])  # the batch's slide, id and seed
    H, W = result.slide_shape
    corners = result.patch_top_left
    reach_out = (
        (corners < 0).any() or (corners[:, 0] + result.patch_size_level0 > H).any() or (corners[:, 1] + result.patch_size_level0 > W).any()
    )
    assert reach_out  # patches at the border reach past the slide (read as zero there) ...
    features = json.loads((out / "good" / "patches.geojson").read_text())["features"]
    xy = np.array([point for f in features for point in f["geometry"]["coordinates"][0]])
    assert len(features) == 32 and xy.min() >= 0 and xy[:, 0].max() <= W and xy[:, 1].max() <= H  # ... their outlines do not


def test_the_heatmap_of_an_unjudged_slide_without_a_thumbnail_is_a_grey_slide_with_the_reason(hostile, model_path):
    model = load_model(model_path, "cpu")
    with open_slide(hostile["mpp352"]) as slide:
        result = predict_one(model, str(hostile["mpp352"]), "mpp352").result
        png = Image.open(io.BytesIO(render_heatmap_png(result, None, slide.levels[0].shape)))
    assert png.size[0] >= 512 and png.size[1] >= 512
    assert np.asarray(png.convert("RGB"))[300, 300].tolist() == [217, 217, 217]  # the grey stand-in, no overlay


# -- bounded memory and time on any slide ------------------------------------------------------------


def test_a_slide_without_a_pyramid_too_large_to_build_one_fails_quickly_naming_the_fix(batch, hostile):
    _, rows = batch
    row = rows["huge"]
    assert row["status"] == "error" and row["seconds"] < 10
    assert row["error"] == (
        f"SlideError: {hostile['huge']}: no pyramid level near the model's scales: reading it means decoding all of level 0 "
        f"(300000x300000 px, 90 gigapixels; the limit is 69); {PYRAMID_FIX}"
    )


def test_a_one_level_slide_is_never_decoded_whole(tmp_path, tissue, model_path):
    """Tissue mask, attention windows, patches and the heatmap's thumbnail all come from levels resampled tile by tile."""
    path = write_sparse_tiff(tmp_path / "one_level.tiff", (8192, 8192), tissue, (3072, 3072))
    model = load_model(model_path, "cpu")
    tracemalloc.start()
    try:
        with open_slide(path) as slide:
            plan = plan_slide(model, slide)
            result = predict_slide(model, slide, slide_id="one_level", plan=plan)
            image = thumbnail(plan, THUMBNAIL_SIZE)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.judged and image.shape == (THUMBNAIL_SIZE, THUMBNAIL_SIZE, 3)
    assert peak < 8192 * 8192 * 3 / 2  # level 0 is 192 MiB


def test_the_thumbnail_is_read_at_its_own_scale_from_the_plans_levels(hostile, model_path):
    model = load_model(model_path, "cpu")
    with open_slide(hostile["good"]) as slide:
        image = thumbnail(plan_slide(model, slide), 100)
    assert image.shape == (100, 100, 3)


# -- wsi-ats info ---------------------------------------------------------------------------------------


def corrupt_smallest_level(src, dst):
    """A copy of ``src`` whose smallest level's tiles are zeros: it opens, but they do not decode."""
    shutil.copyfile(src, dst)
    with tifffile.TiffFile(dst) as tif:
        page = min(tif.pages, key=lambda p: p.imagewidth if p.is_tiled else 1 << 62)
        spans = list(zip(page.dataoffsets, page.databytecounts))
    with open(dst, "r+b") as f:
        for offset, count in spans:
            f.seek(offset)
            f.write(b"\0" * count)
    return dst


def test_info_reads_the_pixels_and_exits_2_when_they_cannot_be_decoded(tmp_path, hostile, capsys):
    path = corrupt_smallest_level(hostile["good"], tmp_path / "corrupt.tiff")
    assert main(["info", str(path)]) == EXIT_USAGE
    captured = capsys.readouterr()
    problem = (
        f"cannot read level 2 (64x64 px, the smallest): SlideError: {path}: level 2 tile (0, 0): cannot decode: "
        "Not a JPEG file: starts with 0x00 0x00"
    )
    assert captured.err == f"wsi-ats info: {path}: {problem}\n"
    assert f"  problem: {problem}\n" in captured.out and captured.out.endswith("pixels    UNREADABLE\n")


@pytest.mark.parametrize(("mpp", "shown"), [(0.25, "0.25 um/px (file)"), (0, "unknown (unknown)")], ids=["file", "unknown"])
def test_info_shows_where_the_resolution_came_from(tmp_path, tissue, capsys, mpp, shown):
    path = write(tmp_path / "slide.tiff", tissue, mpp=mpp, downsamples=(1, 4))
    assert main(["info", str(path)]) == EXIT_OK
    assert f"  mpp       {shown}\n" in capsys.readouterr().out
    assert main(["info", str(path), "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["mpp_source"] == ("file" if mpp else "unknown")


def test_info_warns_of_a_blank_slide_and_exits_0(hostile, capsys):
    assert main(["info", str(hostile["missing_chunks"]), "--json"]) == EXIT_OK
    desc = json.loads(capsys.readouterr().out)
    assert desc["problems"] == [] and desc["warnings"] == [
        "blank: every pixel of level 2 is RGB (0, 0, 0) (an empty scan, or tiles or chunks missing)"
    ]


def test_info_on_a_huge_slide_without_a_pyramid_is_quick_and_names_the_fix(hostile, capsys):
    start = time.perf_counter()
    assert main(["info", str(hostile["huge"]), "--json"]) == EXIT_OK
    assert time.perf_counter() - start < 10
    refused = "over the 69 gigapixels wsi-ats predict decodes to build the levels a model reads: it refuses the slide"
    assert json.loads(capsys.readouterr().out)["warnings"] == [
        f"no pyramid: the smallest level (0) is 300000x300000 px, {refused}; {PYRAMID_FIX}"
    ]
