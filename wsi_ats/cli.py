"""``wsi-ats`` command line: argument parsing only; every command calls the library.

Exit codes (`wsi_ats.exit_codes`): 0 success, 1 some work failed (e.g. a slide in a batch),
2 bad usage or bad input (argparse's own convention, a bad manifest, an unreadable slide for ``info``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from wsi_ats.exit_codes import EXIT_OK, EXIT_USAGE

#: The benchmark runner, relative to a source checkout's root (benchmarks are not in the package).
BENCH_RUNNER = Path("benchmarks") / "run.py"


def _cmd_info(args: argparse.Namespace) -> int:
    from wsi_ats.info import describe, format_description
    from wsi_ats.readers import SlideError

    try:
        desc = describe(args.slide)
    except (FileNotFoundError, SlideError) as err:
        print(f"wsi-ats info: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(desc, indent=2) if args.json else format_description(desc))
    for problem in desc["problems"]:
        print(f"wsi-ats info: {args.slide}: {problem}", file=sys.stderr)
    return EXIT_USAGE if desc["problems"] else EXIT_OK


def _cmd_synth(args: argparse.Namespace) -> int:
    from wsi_ats.synth import make_cohort

    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    manifest = make_cohort(args.out, n=args.n, size=args.size, formats=formats, seed=args.seed)
    print(f"cohort written: {manifest}")
    return EXIT_OK


def _cmd_train(args: argparse.Namespace) -> int:
    from wsi_ats.commands import train_command

    return train_command(
        manifest=args.manifest,
        config=args.config,
        out=args.out,
        seed=args.seed,
        epochs=args.epochs,
        device=args.device,
        truth=args.truth,
        root=args.root,
    )


def _cmd_predict(args: argparse.Namespace) -> int:
    from wsi_ats.commands import predict_command

    return predict_command(
        model=args.model,
        slides=args.slides,
        manifest=args.manifest,
        root=args.root,
        out=args.out,
        scheduler=args.scheduler,
        workers=args.workers,
        seed=args.seed,
        topk=args.topk,
        draws=args.draws,
        device=args.device,
        mpp=args.mpp,
        cache=args.cache,
    )


def _cmd_manifest(args: argparse.Namespace) -> int:
    from wsi_ats.manifest_build import manifest_command

    return manifest_command(
        args.folder,
        args.out,
        rules=args.label,
        labels=args.labels,
        case=args.case,
        split=args.split,
        seed=args.seed,
        root=args.root,
        strict=args.strict,
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    from wsi_ats.demo import run_demo

    return run_demo(args.out)


def _cmd_bench(args: argparse.Namespace) -> int:
    runner = _bench_runner(args.root)
    if runner is None:
        where = args.root or Path.cwd()
        print(f"wsi-ats bench: {where} is not in a wsi-ats source checkout; benchmarks ship with the source tree, "
              "not the package (run it in a checkout, or pass --root CHECKOUT)", file=sys.stderr)
        return EXIT_USAGE
    argv = [*args.names, *(["--quick"] if args.quick else []), *(["--out", str(args.out)] if args.out else [])]
    return subprocess.run([sys.executable, str(runner), *argv], check=False).returncode


def _bench_runner(root: Path | None) -> Path | None:
    """``benchmarks/run.py`` of the checkout at ``root``, or else of the one holding the current folder."""
    for folder in [root] if root is not None else [Path.cwd(), *Path.cwd().parents]:
        if (folder / BENCH_RUNNER).is_file() and (folder / "wsi_ats" / "__init__.py").is_file():
            return folder / BENCH_RUNNER
    return None


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree; kept apart from `main` so tests and docs can inspect it."""
    p = argparse.ArgumentParser(prog="wsi-ats", description="Attention sampling on whole-slide images.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("info", help="levels, tiles, mpp (and its source) and vendor of a slide; reads a tile and the smallest level")
    s.add_argument("slide", help="slide file, OME-Zarr/zarr directory or URL")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=_cmd_info)

    s = sub.add_parser("synth", help="write a synthetic labelled cohort and its manifest.csv")
    s.add_argument("out", type=Path)
    s.add_argument("--n", type=int, default=12, help="number of slides (default 12)")
    s.add_argument("--size", type=int, default=8192, help="level-0 edge in pixels (default 8192)")
    s.add_argument("--format", default="tiff,zarr", help="comma-separated: tiff, zarr (default both)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_cmd_synth)

    s = sub.add_parser("manifest", help="list the slides under a folder, label them, split them per case: a manifest")
    s.add_argument("folder", type=Path, help="folder searched recursively for slides")
    s.add_argument("--out", required=True, type=Path, help="manifest to write (replaces an existing manifest, refuses any other file)")
    s.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="PATTERN=LABEL",
        help="glob on the file name (on the path under FOLDER if it has a /); repeatable, first match wins",
    )
    s.add_argument("--labels", type=Path, default=None, metavar="CSV", help="join slide_id,label[,case_id] (or case_id,label with --case)")
    s.add_argument("--case", default=None, metavar="REGEX", help="case id from the file name: one group, e.g. '^(TCGA-\\w\\w-\\w{4})'")
    s.add_argument("--split", default=None, metavar="TRAIN,VAL,TEST", help="per-case split fractions, e.g. 0.7,0.15,0.15")
    s.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    s.add_argument("--root", type=Path, default=None, help="write paths relative to ROOT (read back with --root)")
    s.add_argument("--strict", action="store_true", help="fail (exit 2) when a slide gets no label instead of skipping it")
    s.set_defaults(func=_cmd_manifest)

    s = sub.add_parser("train", help="train an ATS model; writes RUN/model.pt and RUN/metrics.json")
    s.add_argument("--manifest", required=True, type=Path)
    s.add_argument("--config", required=True, help="a recipe: a TOML file, or the name of a shipped one (synthetic_wsi)")
    s.add_argument("--root", default=None, help="resolve the manifest's relative paths against ROOT (a folder or URL)")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    s.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    s.add_argument(
        "--truth",
        type=Path,
        default=None,
        help="folder of <slide_id>.geojson ground-truth annotations: metrics say where the attention goes "
        "(default: annotations/ beside the manifest, as wsi-ats synth writes)",
    )
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("predict", help="batch inference over slides, directories or a manifest")
    s.add_argument("--model", required=True, type=Path, help="RUN/model.pt from `wsi-ats train`")
    s.add_argument("slides", nargs="*", help="slide files or directories (searched recursively)")
    s.add_argument("--manifest", type=Path, default=None)
    s.add_argument("--root", default=None, help="resolve the manifest's relative paths against ROOT (a folder or URL)")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument(
        "--scheduler",
        default="local",
        help="local (a LocalCluster on this machine), threads (in-process), or a scheduler address/file",
    )
    s.add_argument("--workers", type=int, default=None, help="worker processes for --scheduler local")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--topk", action="store_true", help="deterministic top-k patches instead of sampling")
    s.add_argument("--draws", type=int, default=1, help="average the prediction over K Monte-Carlo draws")
    s.add_argument("--device", default=None)
    s.add_argument(
        "--mpp",
        type=float,
        default=None,
        help="level-0 micrometres per pixel of slides whose manifest row gives none (overrides their files)",
    )
    s.add_argument("--cache", type=Path, default=None, help="folder keeping resampled levels of slides between runs")
    s.set_defaults(func=_cmd_predict)

    s = sub.add_parser("demo", help="synth + train + predict end to end on the built-in synthetic cohort")
    s.add_argument("--out", type=Path, default=Path("demo-output"))
    s.set_defaults(func=_cmd_demo)

    s = sub.add_parser("bench", help="run the benchmarks of a source checkout; JSON + markdown into benchmarks/results")
    s.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    s.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    s.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    s.add_argument("--root", type=Path, default=None, help="the checkout (default: the one holding the current folder)")
    s.set_defaults(func=_cmd_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "predict" and bool(args.slides) == bool(args.manifest):
        print("wsi-ats predict: give slides or --manifest, not both or neither", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "predict" and args.root and not args.manifest:
        print("wsi-ats predict: --root applies to --manifest paths only", file=sys.stderr)
        return EXIT_USAGE
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
