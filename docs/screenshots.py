"""The README's pictures: a batch report rendered by headless Chromium, and one slide's attention overlay.

    python docs/screenshots.py [--work /tmp/wsi-ats-screenshots] [--chromium /usr/bin/chromium]

Predicts a small mixed batch with ``--draws auto`` and the demo's model (`harness.demo_model`:
the synthetic recipe on the demo cohort, trained once into ``benchmarks/results/tmp/``):
two positive and two negative held-out slides of the demo cohort, two slides of
``benchmarks/draws.py``'s mixed set (a held-out negative with 6 or 8 of its 12 mimics
replaced by lesions, labelled positive: the first sits on the model's boundary, the second
is settled by the first batch), a truncated TIFF and a text file named ``.svs`` (each a failed
row). Then renders ``OUT/report.html`` with Chromium and writes
``docs/images/report.png`` (the top of the page) and ``docs/images/attention.png`` (the
first positive slide's ``attention.png``, 900 px wide), each reduced to a 256-colour palette
so it stays small in the repository. Not run by the tests: it needs Chromium and a few minutes.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "benchmarks"))

from draws import mixed_slide  # noqa: E402 - beside harness, which puts this checkout first on sys.path
from harness import CACHE, demo_model  # noqa: E402

IMAGES = HERE / "images"
#: The browser window: wide enough for the table, tall enough for the summary, table and a row of slides.
WINDOW = (1280, 1400)
#: The attention overlay's width in the README (its own is about 1200 px).
ATTENTION_WIDTH = 900


def batch(work: Path) -> tuple[Path, list[Path]]:
    """The model and the batch's inputs: held-out slides, one mixed slide, and two files that are not slides."""
    from wsi_ats.manifest import read_manifest

    model, manifest = demo_model()
    rows = {r.slide_id: r for r in read_manifest(manifest)}
    work.mkdir(parents=True, exist_ok=True)
    inputs = [Path(rows[sid].path) for sid in ("slide_012", "slide_014", "slide_013", "slide_015")]  # the test split
    for k in (6, 8):
        mixed = mixed_slide(rows["slide_009"], rows["slide_008"], k, manifest.parent / "annotations", CACHE / "draws-mixed")
        inputs.append(shutil.copyfile(mixed, work / f"mixed_{k}_lesions_{12 - k}_mimics.tiff"))
    data = next(p for p in inputs if p.is_file()).read_bytes()  # a TIFF (OME-Zarr stores are folders)
    (work / "truncated.tiff").write_bytes(data[: len(data) // 2])
    (work / "notes.svs").write_text("this is not a slide\n")
    return model, [*inputs, work / "truncated.tiff", work / "notes.svs"]


def palette_png(src: Path, dst: Path, width: int) -> Path:
    """``src`` at most ``width`` px wide, as a 256-colour PNG at ``dst``."""
    from PIL import Image

    with Image.open(src) as im:
        im = im.convert("RGB")
        if im.width > width:
            im = im.resize((width, round(im.height * width / im.width)), Image.Resampling.LANCZOS)
        dst.parent.mkdir(parents=True, exist_ok=True)
        im.quantize(256, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)
    return dst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/wsi-ats-screenshots"), help="scratch folder: inputs and OUT")
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = p.parse_args(argv)
    from wsi_ats.outputs.names import folder_name
    from wsi_ats.pipeline import Pipeline

    model, inputs = batch(args.work / "in")
    out = args.work / "out"
    shutil.rmtree(out, ignore_errors=True)
    rows = Pipeline(model, device="cpu", seed=0, draws="auto").run_many(inputs, out, verbose=False)
    for r in rows:
        print(r["slide_id"], r["status"], r["prediction"], r.get("probability"), r.get("draws"), r.get("confident"), file=sys.stderr)
    shot = args.work / "report-full.png"
    subprocess.run(
        [args.chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={shot}",
         f"--window-size={WINDOW[0]},{WINDOW[1]}", (out / "report.html").as_uri()],
        check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    palette_png(shot, IMAGES / "report.png", WINDOW[0])
    positive = next(r for r in rows if r["status"] == "ok" and r["prediction"] == "positive")
    palette_png(out / folder_name(positive["slide_id"]) / "attention.png", IMAGES / "attention.png", ATTENTION_WIDTH)
    for name in ("report.png", "attention.png"):
        print(f"{IMAGES / name}: {(IMAGES / name).stat().st_size / 1000:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
