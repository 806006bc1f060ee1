"""Make "pretrained" encoder weights the way a lab makes its own: supervised pretraining on annotated patches.

    python -m experiments.encoder_pretrain.pretrain [--arch resnet50] [--slides 8] [--epochs 5] [--seed 100]

Nothing can be downloaded here, so ImageNet or UNI weights are stood in for by a timm net
trained from scratch to tell three kinds of synthetic patch apart -- lesion, mimic, plain
tissue -- cut with the annotations `wsi-ats synth` writes, at the resolution
``pipelines/synthetic_resnet50_frozen.toml`` reads (64 px at downsample 4); any timm
architecture (``--arch``) is trained the same way. The pretraining
cohort has its own seed (default 100), so the slides the recipe is then trained and tested on
(the demo cohort, seed 0) are never seen here. The weights are written with their
classification head, as published checkpoints are (`TimmFeatures` drops it), to
``experiments/encoder_pretrain/<arch>_synth.safetensors`` (not committed: rerun this script),
with ``<arch>_synth.json`` recording the run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from wsi_ats.demo import DEMO_COHORT
from wsi_ats.engine.tissue import tissue_mask
from wsi_ats.manifest import read_manifest
from wsi_ats.models.timm_features import import_timm
from wsi_ats.outputs.atomic import atomic_write_bytes, atomic_write_text
from wsi_ats.readers import open_slide
from wsi_ats.synth import make_cohort

HERE = Path(__file__).resolve().parent
KINDS = ("plain", "mimic", "lesion")
PATCH, DOWNSAMPLE = 64, 4


def cut_patches(manifest: Path, crops_per_blob: int, plain_per_slide: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """Per slide: uint8 patches ``[m, 64, 64, 3]`` at downsample 4, their kind indices, the slide id.

    Lesions and mimics: jittered crops around each annotated box's centre. Plain: random
    tissue positions clear of every box.
    """
    rng = np.random.default_rng(seed)
    out = []
    for row in read_manifest(manifest):
        annotations = json.loads((manifest.parent / "annotations" / f"{row.slide_id}.geojson").read_text())["features"]
        boxes = []
        for f in annotations:
            xs, ys = zip(*f["geometry"]["coordinates"][0])
            boxes.append((min(ys), min(xs), max(ys), max(xs), KINDS.index(f["properties"]["kind"])))
        with open_slide(row.path) as slide:
            level = slide.level_for(downsample=DOWNSAMPLE)
            ds = slide.levels[level].downsample
            mask = tissue_mask(slide, downsample=64)
            patches, kinds = [], []
            for y0, x0, y1, x1, kind in boxes:
                for _ in range(crops_per_blob):
                    jitter = rng.uniform(-0.25, 0.25, 2) * PATCH * ds
                    patches.append(crop(slide, level, (y0 + y1) / 2 + jitter[0], (x0 + x1) / 2 + jitter[1]))
                    kinds.append(kind)
            h0, w0 = slide.levels[0].shape
            taken, tries = 0, 0
            while taken < plain_per_slide and tries < 100 * plain_per_slide:
                tries += 1
                cy, cx = rng.uniform(0, h0), rng.uniform(0, w0)
                margin = PATCH * ds
                near = any(y0 - margin < cy < y1 + margin and x0 - margin < cx < x1 + margin for y0, x0, y1, x1, _ in boxes)
                if near or not mask.at(np.array([cy]), np.array([cx]))[0, 0]:
                    continue
                patches.append(crop(slide, level, cy, cx))
                kinds.append(0)
                taken += 1
        out.append((np.stack(patches), np.array(kinds), row.slide_id))
    return out


def crop(slide, level: int, cy: float, cx: float) -> np.ndarray:
    """The 64 px patch of ``level`` centred on level-0 ``(cy, cx)``, kept inside the level."""
    ds, shape = slide.levels[level].downsample, slide.levels[level].shape
    y = int(np.clip(cy / ds - PATCH / 2, 0, shape[0] - PATCH))
    x = int(np.clip(cx / ds - PATCH / 2, 0, shape[1] - PATCH))
    return slide.read_region(level, (y, x), (PATCH, PATCH))


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flips and quarter turns: the slide has no orientation."""
    k = int(torch.randint(4, (), generator=generator))
    x = torch.rot90(x, k, dims=(2, 3))
    return x.flip(3) if bool(torch.randint(2, (), generator=generator)) else x


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet50", help="any timm architecture (default resnet50, the recipe's)")
    p.add_argument("--slides", type=int, default=8, help="slides of the pretraining cohort (the last two: held-out patches)")
    p.add_argument("--crops-per-blob", type=int, default=6)
    p.add_argument("--plain-per-slide", type=int, default=40)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--out", type=Path, default=None, help="weights file (default experiments/encoder_pretrain/<arch>_synth.safetensors)")
    args = p.parse_args(argv)
    out = args.out or HERE / f"{args.arch}_synth.safetensors"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="encoder-pretrain-") as tmp:
        cohort = {**DEMO_COHORT, "n": args.slides, "seed": args.seed}
        manifest = make_cohort(Path(tmp) / "cohort", **cohort, progress=False)
        per_slide = cut_patches(manifest, args.crops_per_blob, args.plain_per_slide, args.seed)
    train, held = per_slide[:-2], per_slide[-2:]
    timm = import_timm()
    torch.manual_seed(args.seed)
    net = timm.create_model(args.arch, pretrained=False, num_classes=len(KINDS)).to(memory_format=torch.channels_last)
    mean = torch.tensor(net.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(net.pretrained_cfg["std"]).view(1, 3, 1, 1)

    def tensors(parts: list) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.concatenate([p for p, _, _ in parts])).permute(0, 3, 1, 2).float().div(255)
        return ((x - mean) / std).contiguous(memory_format=torch.channels_last), torch.from_numpy(np.concatenate([k for _, k, _ in parts]))

    x_train, y_train = tensors(train)
    x_held, y_held = tensors(held)
    counts = {k: int((y_train == i).sum()) for i, k in enumerate(KINDS)}
    print(f"patches: train {len(y_train)} {counts}, held out {len(y_held)} ({time.perf_counter() - started:.0f} s)", flush=True)
    weight = len(y_train) / (len(KINDS) * torch.bincount(y_train, minlength=len(KINDS)).clamp(min=1).float())  # balanced classes
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    log = []
    for epoch in range(args.epochs):
        net.train()
        order, total = torch.randperm(len(y_train), generator=generator), 0.0
        for i in range(0, len(order), args.batch):
            idx = order[i : i + args.batch]
            loss = F.cross_entropy(net(augment(x_train[idx], generator)), y_train[idx], weight=weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx) / len(order)
        net.eval()
        with torch.inference_mode():
            predicted = torch.cat([net(x_held[i : i + 128]).argmax(1) for i in range(0, len(y_held), 128)])
        accuracy = float((predicted == y_held).float().mean())
        per_kind = {k: round(float((predicted[y_held == i] == i).float().mean()), 3) for i, k in enumerate(KINDS) if (y_held == i).any()}
        log.append({"epoch": epoch + 1, "train_loss": round(total, 4), "held_out_accuracy": round(accuracy, 4), "per_kind": per_kind})
        print(
            f"epoch {epoch + 1}: loss {total:.4f}, held-out patch accuracy {accuracy:.3f} {per_kind} "
            f"({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    from safetensors.torch import save

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, save({k: v.contiguous() for k, v in net.state_dict().items()}))
    record = {"arch": args.arch, "args": {k: str(v) for k, v in vars(args).items()},
              "cohort": {**cohort, "formats": list(cohort["formats"])},
              "patches": {"train": len(y_train), "held_out": len(y_held), "train_by_kind": counts},
              "epochs": log, "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    atomic_write_text(out.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    print(f"weights: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
