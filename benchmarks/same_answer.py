"""The same tissue stored another way gets the same answer: a trained model on slides rewritten four ways.

Each held-out slide of the demo cohort is rewritten (`wsi_ats.synth.restore`) as a x2 pyramid
(1, 2, 8, 32: the recipe's 1/16 and 1/64 are absent), a 20x scan (half the pixels at 0.5 um/px),
a one-level TIFF and an OME-Zarr with a x3 pyramid (1, 3, 9: the recipe's 1/4 and 1/16 are
resampled). The demo's model (trained by ``wsi-ats demo``, or here when absent) predicts each
copy; the figures are the class agreement with the original and the largest probability gap.
For contrast the same model also predicts with its recorded microns dropped (reading by
downsample only, the old rule), which sees the 20x scan at twice the scale.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from harness import CACHE, RESULTS, demo_model, machine_info, summary_row, write_json

STORAGES = {
    "x2_pyramid": dict(downsamples=(1, 2, 8, 32)),
    "scan_20x": dict(scale=2.0),
    "one_level": dict(downsamples=(1,)),
    "ome_zarr_x3": dict(downsamples=(1, 3, 9), fmt="zarr"),
}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from wsi_ats import load_checkpoint
    from wsi_ats.engine.run import predict_slide
    from wsi_ats.manifest import read_manifest
    from wsi_ats.readers import open_slide
    from wsi_ats.synth.restore import restore

    info, started = machine_info(), time.perf_counter()
    folder = CACHE / ("same-answer-quick" if args.quick else "same-answer-demo")
    model_path, manifest = (args.model, args.manifest) if args.model else demo_model(args.quick)
    model = load_checkpoint(model_path, device="cpu")
    rows = [r for r in read_manifest(manifest) if r.split == "test"] or read_manifest(manifest)
    copies = folder / "copies"
    slides = []
    for row in rows:
        out: dict[str, Any] = {"slide_id": row.slide_id, "label": row.label}
        paths = {"original": Path(row.path)}
        for name, options in STORAGES.items():
            dst = copies / f"{row.slide_id}-{name}{'.zarr' if options.get('fmt') == 'zarr' else '.tiff'}"
            paths[name] = dst if dst.exists() else restore(open_slide(row.path), dst, **options)
        for mode in ("microns", "downsample"):
            microns = dict(model.microns)
            if mode == "downsample":
                model.microns = {}
            for name, path in paths.items():
                with open_slide(path) as slide:
                    result = predict_slide(model, slide, slide_id=row.slide_id, seed=args.seed, draws=args.draws)
                out[f"{mode}/{name}"] = {"prediction": result.prediction, "probabilities": result.probabilities.round(4).tolist()}
            model.microns = microns
        slides.append(out)

    def agreement(mode: str) -> tuple[int, int, float]:
        same, total, gap = 0, 0, 0.0
        for s in slides:
            want = s[f"{mode}/original"]
            for name in STORAGES:
                got = s[f"{mode}/{name}"]
                same += got["prediction"] == want["prediction"]
                total += 1
                gap = max(gap, max(abs(a - b) for a, b in zip(got["probabilities"], want["probabilities"])))
        return same, total, gap

    same, total, gap = agreement("microns")
    old_same, old_total, old_gap = agreement("downsample")
    return {
        "machine": info,
        "seconds": round(time.perf_counter() - started, 1),
        "model": str(model_path),
        "draws": args.draws,
        "slides": slides,
        "summary": [
            summary_row(
                "same class as the original, every slide x storage (by microns)", f"{same}/{total}", f"{total}/{total}", same == total
            ),
            summary_row("largest probability gap to the original (by microns)", round(gap, 4)),
            summary_row("same class, reading by downsample only (the old rule)", f"{old_same}/{old_total}"),
        ],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=RESULTS / "same_answer.json")
    p.add_argument("--model", type=Path, default=None, help="a trained model.pt (default: the demo's, trained if absent)")
    p.add_argument("--manifest", type=Path, default=None, help="its cohort's manifest (with --model)")
    p.add_argument("--draws", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a 4-slide cohort of 1024 px, one epoch: a smoke run")
    args = p.parse_args(argv)
    if bool(args.model) != bool(args.manifest):
        p.error("give --model and --manifest together")
    result = run(args)
    write_json(args.out, result)
    for row in result["summary"]:
        print(f"{row['metric']}: {row['value']}")
    print(
        json.dumps({s["slide_id"]: {k: v["prediction"] for k, v in s.items() if isinstance(v, dict)} for s in result["slides"]}, indent=1)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
