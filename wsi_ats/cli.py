"""``wsi-ats`` command line: argument parsing only; every command calls the library.

Exit codes (`wsi_ats.exit_codes`): 0 success, 1 some work failed (e.g. a slide in a batch),
2 bad usage or bad input (argparse's own convention, a bad manifest, an unreadable slide for ``info``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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


def synth_options(args: argparse.Namespace) -> dict[str, Any]:
    """The `wsi_ats.synth.make_cohort` keywords that ``wsi-ats synth``'s options stand for (the demo's cohort is one)."""
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    return {"n": args.n, "size": args.size, "formats": formats, "seed": args.seed, "n_blobs": args.n_blobs, "mpp": args.mpp,
            "zarr_version": args.zarr_version, "classes": args.classes}  # fmt: skip


def _cmd_synth(args: argparse.Namespace) -> int:
    from wsi_ats.synth import make_cohort

    try:
        manifest = make_cohort(args.out, **synth_options(args), workers=args.workers)
    except ValueError as err:  # an unknown format, too small a slide for its blobs
        print(f"wsi-ats synth: {err}", file=sys.stderr)
        return EXIT_USAGE
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
        cache=args.cache,
        resume=args.resume,
        skip_unreadable=args.skip_unreadable,
        stage=args.stage,
        remote_cache=args.remote_cache,
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
        timeout=args.timeout,
        save_features=args.save_features,
        stage=args.stage,
        remote_cache=args.remote_cache,
    )


def _cmd_dense(args: argparse.Namespace) -> int:
    from wsi_ats.dense import dense_command

    return dense_command(
        manifest=args.manifest, config=args.config, out=args.out, root=args.root, seed=args.seed,
        device=args.device, cache=args.cache, train=not args.no_train,
    )  # fmt: skip


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
        print(
            f"wsi-ats bench: {where} is not in a wsi-ats source checkout; benchmarks ship with the source tree, "
            "not the package (run it in a checkout, or pass --root CHECKOUT)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    argv = [*args.names, *(["--quick"] if args.quick else []), *(["--out", str(args.out)] if args.out else [])]
    return subprocess.run([sys.executable, str(runner), *argv], check=False).returncode


def _bench_runner(root: Path | None) -> Path | None:
    """``benchmarks/run.py`` of the checkout at ``root``, or else of the one holding the current folder."""
    for folder in [root] if root is not None else [Path.cwd(), *Path.cwd().parents]:
        if (folder / BENCH_RUNNER).is_file() and (folder / "wsi_ats" / "__init__.py").is_file():
            return folder / BENCH_RUNNER
    return None


def _draws(text: str) -> int | str:
    """``--draws``: a positive count or ``auto``."""
    return "auto" if text == "auto" else _positive(int)(text)


_draws.__name__ = "draws (a positive integer or 'auto')"


def _positive(kind: type) -> Callable[[str], Any]:
    """An argparse type: a number of ``kind`` above zero (argparse turns the ValueError into a usage error, exit 2)."""

    def parse(text: str) -> Any:
        value = kind(text)
        if not value > 0 or value == float("inf"):
            raise ValueError(text)
        return value

    parse.__name__ = f"positive {kind.__name__}"  # argparse's message: "invalid positive int value: '0'"
    return parse


def _remote_options(s: argparse.ArgumentParser) -> None:
    """``--stage`` and ``--remote-cache``: how slides given by URL are read (one or the other)."""
    group = s.add_mutually_exclusive_group()
    group.add_argument(
        "--stage",
        type=Path,
        default=None,
        metavar="DIR",
        help="download every slide given by URL into DIR first (once: a staged copy of the same version is reused), "
        "then read it locally; the way to read OpenSlide-only formats (NDPI, MRXS, DICOM) from object storage",
    )
    group.add_argument(
        "--remote-cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep the bytes read from URLs in DIR (keyed by each object's ETag): later epochs and runs read them from disk",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree; kept apart from `main` so tests and docs can inspect it."""
    from wsi_ats import __version__
    from wsi_ats.cluster import CONNECT_TIMEOUT

    p = argparse.ArgumentParser(prog="wsi-ats", description="Attention sampling on whole-slide images.")
    p.add_argument("--version", action="version", version=f"wsi-ats {__version__}", help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", help="`wsi-ats COMMAND --help` lists its options")

    s = sub.add_parser("info", help="levels, tiles, mpp (and its source) and vendor of a slide; reads a tile and the smallest level")
    s.add_argument("slide", help="slide file, OME-Zarr/zarr directory or URL")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=_cmd_info)

    s = sub.add_parser("synth", help="write a synthetic labelled cohort and its manifest.csv")
    s.add_argument("out", type=Path, help="folder to write slides/, annotations/ and manifest.csv into")
    s.add_argument("--n", type=_positive(int), default=12, help="number of slides, given to the classes in turn (default 12)")
    s.add_argument(
        "--classes",
        type=int,
        choices=(2, 3),
        default=2,
        help="2: positive (lesions) and negative (mimics only); 3: lesion_a (solid crowds of large nuclei), lesion_b "
        "(the same nuclei in rings around lumens) and negative: the lesion types look alike at low resolution (default 2)",
    )
    s.add_argument("--size", type=_positive(int), default=8192, help="level-0 edge in pixels, rounded up to 256 (default 8192)")
    s.add_argument("--format", default="tiff,zarr", help="comma-separated: tiff, zarr (default both, alternating per label pair)")
    s.add_argument("--seed", type=int, default=0, help="seed of every slide and of the splits (default 0)")
    s.add_argument(
        "--n-blobs",
        type=_positive(int),
        default=3,
        help="lesions (lesion slides) or mimics (negative) per slide (default 3; the demo uses 12)",
    )
    s.add_argument("--mpp", type=_positive(float), default=0.25, help="level-0 micrometres per pixel the files state (default 0.25)")
    s.add_argument("--zarr-version", choices=("0.4", "0.5"), default="0.5", help="OME-NGFF version of the zarr slides (default 0.5)")
    s.add_argument(
        "--workers", type=_positive(int), default=None, help="processes writing slides (default one per CPU; the files do not depend on it)"
    )
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

    s = sub.add_parser("train", help="train an ATS model; writes RUN/model.pt, RUN/last.pt and RUN/metrics.json")
    s.add_argument("--manifest", required=True, type=Path, help="CSV slide_id,path,label[,split][,case_id][,mpp]")
    s.add_argument("--config", required=True, help="a recipe: a TOML file, or the name of a shipped one (synthetic_wsi)")
    s.add_argument("--root", default=None, help="resolve the manifest's relative paths against ROOT (a folder or URL)")
    s.add_argument("--out", required=True, type=Path, help="run folder RUN (a new one, or an earlier run's with --resume)")
    s.add_argument("--seed", type=int, default=0, help="seed of the initial weights, splits and sampling (default 0)")
    s.add_argument("--epochs", type=_positive(int), default=None, help="override the recipe's epochs")
    s.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    s.add_argument(
        "--truth",
        type=Path,
        default=None,
        help="folder of <slide_id>.geojson ground-truth annotations: metrics say where the attention goes "
        "(default: annotations/ beside the manifest, as wsi-ats synth writes)",
    )
    s.add_argument("--cache", type=Path, default=None, help="folder keeping resampled levels of slides between runs")
    s.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last.pt (same recipe, seed and slides; --epochs may grow)"
    )
    s.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="train without the slides that cannot be opened or read (listed in metrics.json) instead of refusing",
    )
    _remote_options(s)
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("predict", help="batch inference over slides, directories or a manifest")
    s.add_argument("--model", required=True, type=Path, help="RUN/model.pt from `wsi-ats train`")
    s.add_argument("slides", nargs="*", help="slide files or directories (searched recursively)")
    s.add_argument(
        "--manifest",
        type=Path,
        default=None,
        help="CSV slide_id,path[,label][,mpp]...; with labels, accuracy and a confusion table end the run",
    )
    s.add_argument("--root", default=None, help="resolve the manifest's relative paths against ROOT (a folder or URL)")
    s.add_argument("--out", required=True, type=Path, help="folder for predictions.csv and one folder per slide")
    s.add_argument(
        "--scheduler",
        default="local",
        help="local (a LocalCluster on this machine), threads (in-process), or a scheduler address/file",
    )
    s.add_argument("--workers", type=_positive(int), default=None, help="worker processes for --scheduler local")
    s.add_argument(
        "--timeout",
        type=_positive(float),
        default=CONNECT_TIMEOUT,
        help=f"seconds a --scheduler address or file has to answer (default {CONNECT_TIMEOUT:g})",
    )
    s.add_argument("--seed", type=int, default=0, help="seed of the sampling; each slide's is derived from it and its id (default 0)")
    s.add_argument("--topk", action="store_true", help="deterministic top-k patches instead of sampling")
    s.add_argument(
        "--draws",
        type=_draws,
        default=1,
        help="average the prediction over K Monte-Carlo draws; 'auto': draw in batches until the class is settled (default 1)",
    )
    s.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    s.add_argument(
        "--mpp",
        type=_positive(float),
        default=None,
        help="level-0 micrometres per pixel of slides whose manifest row gives none (overrides their files)",
    )
    s.add_argument("--cache", type=Path, default=None, help="folder keeping resampled levels of slides between runs")
    s.add_argument(
        "--save-features", action="store_true", help="also write OUT/<slide>/features.h5: the drawn patches' embeddings (CLAM layout)"
    )
    _remote_options(s)
    s.set_defaults(func=_cmd_predict)

    s = sub.add_parser(
        "dense-features", help="the dense baseline: the recipe's encoder on every tissue tile (h5 bags), then a gated ABMIL head"
    )
    s.add_argument("--manifest", required=True, type=Path, help="slide_id,path,label[,split] CSV: the slides to run the encoder on")
    s.add_argument("--config", required=True, help="a recipe: a TOML file, or the name of a shipped one")
    s.add_argument("--root", default=None, help="resolve the manifest's relative paths against ROOT (a folder or URL)")
    s.add_argument("--out", required=True, type=Path, help="OUT/features/<slide_id>.h5, OUT/abmil.pt, OUT/dense_metrics.json")
    s.add_argument("--seed", type=int, default=0, help="seed of the head's training (default 0)")
    s.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    s.add_argument("--cache", type=Path, default=None, help="folder keeping resampled levels of slides between runs")
    s.add_argument("--no-train", action="store_true", help="write the bags only, train no head")
    s.set_defaults(func=_cmd_dense)

    s = sub.add_parser("demo", help="synth + train + predict end to end on the built-in synthetic cohort")
    s.add_argument("--out", type=Path, default=Path("demo-output"), help="folder for cohort/, run/ and predictions/ (default demo-output)")
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
