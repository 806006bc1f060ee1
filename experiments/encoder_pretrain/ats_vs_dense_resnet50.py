"""One-off measurement: ATS (n = 32, 64) vs dense tiling with a frozen timm ResNet-50 (random weights: time only).

    python -m experiments.encoder_pretrain.ats_vs_dense_resnet50 [--sizes 10000 20000 40000] [--repeats 3] [--skip-dense]

The slides are `benchmarks/ats_vs_dense.py`'s (one positive synthetic slide per size, cached
in ``benchmarks/results/tmp/``); the recipe is ``pipelines/synthetic_wsi.toml`` with its feature
net replaced by ``name = "timm", arch = "resnet50", freeze = true``. ATS is `predict_slide`
(best of ``--repeats``, after a warm-up), dense is `wsi_ats.dense.dense_bag` (one run: every
tissue tile of the high level through the encoder). Encoder forwards per slide are the
hardware-independent figure. Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from harness import cached_slide  # noqa: E402 - after the harness path

from wsi_ats.dense import dense_bag  # noqa: E402 - after the harness path
from wsi_ats.engine.run import predict_slide  # noqa: E402 - after the harness path
from wsi_ats.models import ATSModel, NetSpec, load_config  # noqa: E402 - after the harness path
from wsi_ats.readers import open_slide  # noqa: E402 - after the harness path

ENCODER = NetSpec("timm", (("arch", "resnet50"), ("freeze", True)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10000, 20000, 40000])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-dense", action="store_true")
    args = p.parse_args(argv)
    recipe = load_config(ROOT / "pipelines" / "synthetic_wsi.toml").model
    for size in args.sizes:
        path = cached_slide(size, seed=0)
        for n in (32, 64):
            torch.manual_seed(0)
            model = ATSModel.from_config(dataclasses.replace(recipe, features=ENCODER, n_patches=n), ("negative", "positive")).eval()
            with open_slide(path) as slide:
                predict_slide(model, slide, slide_id="warm-up")
                seconds = []
                for r in range(args.repeats):
                    start = time.perf_counter()
                    result = predict_slide(model, slide, slide_id="timed", seed=r)
                    seconds.append(time.perf_counter() - start)
            print(json.dumps({"size": size, "method": f"ats n={n}", "seconds_best": round(min(seconds), 2),
                              "encoder_forwards": int(result.patches_fetched)}), flush=True)  # fmt: skip
        if not args.skip_dense:
            with open_slide(path) as slide:
                start = time.perf_counter()
                bag = dense_bag(model, slide, slide_id="timed")
            print(json.dumps({"size": size, "method": "dense", "seconds": round(time.perf_counter() - start, 2),
                              "encoder_forwards": len(bag.features)}), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
