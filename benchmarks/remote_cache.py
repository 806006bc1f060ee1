"""Training over slides in object storage: bytes fetched from the server per epoch, without and with a local copy.

A synthetic cohort (TIFF and OME-Zarr, `wsi_ats.synth.make_cohort`) is uploaded to an
S3-compatible server on 127.0.0.1 (moto, `wsi_ats.testing.servers`), and `wsi_ats.train.train`
runs on its manifest of ``s3://`` URLs (``--root s3://...``) five ways, one after another in
this process:

- ``no cache``: every epoch reads its patches' tiles (and the validation slides) from the server;
- ``remote cache, cold`` then ``warm`` (`wsi_ats.readers.remote_cache`, ``--remote-cache DIR``):
  what was read is kept on disk; a second run in the same folder is a rerun (or any later job);
- ``stage, cold`` then ``warm`` (`wsi_ats.readers.stage`, ``--stage DIR``): every slide
  downloaded whole before the first epoch, then read locally.

Recorded per run: ``bytes_read_setup`` (opening the slides, their plans and low-level windows,
before epoch 1), each epoch's ``bytes_read`` (training steps and validation), wall seconds.
Bytes are the measurement; wall seconds on a shared VM and a loopback moto (which copies the
whole object for every range GET) are noise and say little about a real bucket.
Writes ``benchmarks/results/remote_cache.json`` and ``.png`` (``--quick``: 2 slides of 1024 px,
``benchmarks/results/tmp/remote_cache-quick.json``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from harness import CACHE, RESULTS, figure, machine_info, machine_line, markdown_table, publish, save_figure, summary_row

from wsi_ats.testing.servers import moto_server, s3_client, s3_environment, upload

RECIPE = Path(__file__).resolve().parents[1] / "pipelines" / "synthetic_wsi.toml"
BUCKET = "cohort"


def run(n: int, size: int, epochs: int, work: Path) -> dict:
    from wsi_ats.synth import make_cohort
    from wsi_ats.train import train

    info = machine_info()
    shutil.rmtree(work, ignore_errors=True)
    manifest = make_cohort(work / "cohort", n=n, size=size, formats=("tiff", "zarr"), seed=1, workers=1, progress=False)
    runs = {}
    with moto_server() as endpoint, s3_environment(endpoint):  # s3fs finds the server and keys as a user's shell gives them
        client = s3_client(endpoint)
        client.create_bucket(Bucket=BUCKET)
        slides = sorted((work / "cohort" / "slides").iterdir())
        for slide in slides:
            upload(client, BUCKET, slide, f"slides/{slide.name}")
        cohort_bytes = sum(f.stat().st_size for s in slides for f in ([s] if s.is_file() else s.rglob("*")) if f.is_file())
        ways = {
            "no cache": {},
            "remote cache, cold": {"remote_cache": work / "cache"},
            "remote cache, warm": {"remote_cache": work / "cache"},
            "stage, cold": {"stage": work / "stage"},
            "stage, warm": {"stage": work / "stage"},
        }
        for k, (name, options) in enumerate(ways.items()):
            start = time.perf_counter()
            metrics = train(manifest, RECIPE, work / f"run{k}", seed=0, epochs=epochs, device="cpu", progress=False,
                            root=f"s3://{BUCKET}", **options)  # fmt: skip
            runs[name] = {
                "seconds": round(time.perf_counter() - start, 2),
                "bytes_read_setup": metrics["bytes_read_setup"],
                "bytes_read_epochs": [e["bytes_read"] for e in metrics["epochs"]],
                "splits": {s: len(ids) for s, ids in metrics["splits"].items()},
            }
            print(name, runs[name], file=sys.stderr)
    cold = runs["remote cache, cold"]["bytes_read_epochs"]
    shares = " / ".join(f"{b / cold[0]:.3g}" if cold[0] else "-" for b in cold[1:])
    warm = runs["remote cache, warm"]
    return {
        "machine": info,
        "slides": n,
        "size": size,
        "epochs": epochs,
        "cohort_bytes": cohort_bytes,
        "runs": runs,
        "summary": [
            # Not 0 from epoch 2: each epoch draws new patches, whose tiles epoch 1 may not have read.
            summary_row("remote cache: bytes from S3 per epoch / epoch 1's (epochs 2, 3, ...)", shares),
            summary_row("remote cache, rerun: bytes from S3 (setup + every epoch)",
                        warm["bytes_read_setup"] + sum(warm["bytes_read_epochs"]), 0,
                        warm["bytes_read_setup"] + sum(warm["bytes_read_epochs"]) == 0),
        ],
    }  # fmt: skip


def table(data: dict) -> str:
    kib = 1024
    rows = [
        [name, f"{r['bytes_read_setup'] / kib:.0f}", " / ".join(f"{b / kib:.0f}" for b in r["bytes_read_epochs"]), f"{r['seconds']:.1f}"]
        for name, r in data["runs"].items()
    ]
    head = f"{data['slides']} slides of {data['size']}² ({data['cohort_bytes'] / kib:.0f} KiB on S3), {data['epochs']} epochs"
    return machine_line(data["machine"]) + "\n" + head + "\n" + markdown_table(["run", "setup KiB", "per epoch KiB", "wall s"], rows)


def plot(data: dict, path: Path) -> Path:
    """Bytes fetched from the server per epoch, one line per run."""
    fig, (ax,) = figure(1, width=6)
    for name, r in data["runs"].items():
        ax.plot(range(0, data["epochs"] + 1), [r["bytes_read_setup"] / 1024, *(b / 1024 for b in r["bytes_read_epochs"])], "o-", label=name)
    ax.set_xticks(range(0, data["epochs"] + 1), ["setup", *(str(e) for e in range(1, data["epochs"] + 1))])
    ax.set_xlabel("epoch")
    ax.set_ylabel("KiB fetched from S3")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.suptitle(f"train over s3:// URLs -- {machine_line(data['machine'])}", fontsize=9)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=4, help="slides in the cohort (half train, by the recipe's split)")
    parser.add_argument("--size", type=int, default=4096, help="level-0 edge of each synthetic slide (px)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 slides of 1024 px, 2 epochs, result under tmp/")
    parser.add_argument("--out", type=Path, default=None, help="JSON output (default benchmarks/results/remote_cache.json)")
    parser.add_argument("--plot-only", action="store_true", help="redraw the plot and table of an existing --out")
    args = parser.parse_args(argv)
    out = args.out or (CACHE / "remote_cache-quick.json" if args.quick else RESULTS / "remote_cache.json")
    if args.plot_only:
        data = json.loads(out.read_text(encoding="utf-8"))
        plot(data, out.with_suffix(".png"))
        print(table(data))
        return 0
    n, size, epochs = (2, 1024, 2) if args.quick else (args.slides, args.size, args.epochs)
    return publish(run(n, size, epochs, CACHE / f"remote_cache-{n}x{size}"), out, plot, table)


if __name__ == "__main__":
    sys.exit(main())
