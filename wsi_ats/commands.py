"""The ``wsi-ats train`` and ``predict`` commands as functions returning exit codes.

They live here rather than in `wsi_ats.cli` (argument parsing only) so Python callers get
the same behaviour and exit codes: 0 on success (every slide ok), 1 when any slide failed
or could not be judged (its row says why), 2 for bad usage or input -- an unknown ``--scheduler``,
a bad manifest or recipe, a missing or foreign model, no slides at all, an unreachable cluster, an
``OUT`` whose ``predictions.csv`` is not ours, an ``OUT`` another run holds or that cannot
be created or written (read-only, a file, full), or a manifest id that names another
file's result in ``OUT``. Usage is checked before the model is loaded, and the model and
``OUT`` before any cluster starts, so a mistake costs no startup time.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from wsi_ats.cluster import CONNECT_TIMEOUT, LOCAL, scheduler_kind, session
from wsi_ats.exit_codes import EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    from wsi_ats.models import PipelineConfig


def predict_command(
    *,
    model: str | os.PathLike[str],
    slides: Sequence[str | os.PathLike[str]] = (),
    manifest: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str],
    scheduler: str = LOCAL,
    workers: int | None = None,
    seed: int = 0,
    topk: bool = False,
    draws: int | str = 1,
    device: str | None = None,
    mpp: float | None = None,
    cache: str | os.PathLike[str] | None = None,
    timeout: float = CONNECT_TIMEOUT,
    save_features: bool = False,
    stage: str | os.PathLike[str] | None = None,
    remote_cache: str | os.PathLike[str] | None = None,
) -> int:
    """Predict ``slides`` (files or folders) or the rows of ``manifest`` into ``out``; returns the exit code.

    ``scheduler``: ``local`` (a cluster on this machine, ``workers`` processes),
    ``threads`` (this process) or a running cluster's address or scheduler file, which
    has ``timeout`` seconds to answer. A manifest's labels are optional; where there are
    some, accuracy and a confusion table end the run (`wsi_ats.summary`). Slides given by URL are
    downloaded into ``stage`` first, or read by range keeping what was read in ``remote_cache``.
    """
    from wsi_ats.manifest import read_manifest
    from wsi_ats.outputs import OutputError, claim_output_folder, printable
    from wsi_ats.pipeline import Pipeline, exit_code
    from wsi_ats.summary import report_labels

    try:
        scheduler_kind(scheduler, workers)
        sources = read_manifest(manifest, root=root, require_labels=False) if manifest else list(slides)
        pipeline = Pipeline(
            model, device=device, seed=seed, topk=topk, draws=draws, mpp=mpp, cache=cache, save_features=save_features,
            stage=stage, remote_cache=remote_cache,
        )  # fmt: skip
        with claim_output_folder(out), session(scheduler, workers, device=device, timeout=timeout) as client:  # OUT before the cluster
            rows = pipeline.run_many(sources, out, client=client)
            report_labels({s.slide_id: s.label for s in sources if not isinstance(s, (str, os.PathLike))}, rows, out)
    except (ValueError, FileNotFoundError, OutputError) as err:  # ManifestError, CheckpointError, SchedulerError, NoSlidesError, ...
        print(printable(f"wsi-ats predict: {err}"), file=sys.stderr)
        return EXIT_USAGE
    return exit_code(rows)


#: Where ground truth is looked for when ``train_command`` is given none: ``wsi-ats synth``'s layout.
TRUTH_BESIDE_MANIFEST = "annotations"


def train_command(
    *,
    manifest: str | os.PathLike[str],
    config: str | os.PathLike[str] | PipelineConfig,
    out: str | os.PathLike[str],
    seed: int = 0,
    epochs: int | None = None,
    device: str | None = None,
    truth: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    cache: str | os.PathLike[str] | None = None,
    resume: bool = False,
    skip_unreadable: bool = False,
    stage: str | os.PathLike[str] | None = None,
    remote_cache: str | os.PathLike[str] | None = None,
) -> int:
    """Train on ``manifest`` with the recipe ``config`` into ``out``; returns the exit code.

    ``truth``: a folder of ``<slide_id>.geojson`` ground-truth annotations (default: an
    ``annotations/`` folder beside the manifest, where ``wsi-ats synth`` writes them);
    ``root`` resolves the manifest's relative paths (default: its folder); ``cache`` keeps
    the slides' resampled levels on disk between runs. ``resume`` continues the run in
    ``out`` (an ``out`` holding one is refused without it); ``skip_unreadable`` trains
    without unreadable slides instead of refusing them. Slides given by URL are downloaded into
    ``stage`` once, or read by range keeping what was read in ``remote_cache`` for later epochs.
    """
    from wsi_ats import recipes
    from wsi_ats.evaluate import truth_boxes
    from wsi_ats.manifest import read_manifest
    from wsi_ats.models import PipelineConfig
    from wsi_ats.train import train

    try:
        recipe = config if isinstance(config, PipelineConfig) else recipes.resolve(config)
        rows = read_manifest(manifest, root=root)
        folder = Path(truth) if truth is not None else Path(manifest).parent / TRUTH_BESIDE_MANIFEST
        if truth is not None and not folder.is_dir():
            raise FileNotFoundError(f"{folder}: ground-truth folder not found")
        boxes = truth_boxes(folder, [r.slide_id for r in rows])
        metrics = train(
            rows,
            recipe,
            out,
            seed=seed,
            epochs=epochs,
            device=device,
            truth=boxes,
            resampled_cache=cache,
            resume=resume,
            skip_unreadable=skip_unreadable,
            stage=stage,
            remote_cache=remote_cache,
        )
    except (ValueError, FileNotFoundError) as err:  # bad manifest, recipe, checkpoint or resume: all ValueErrors
        print(f"wsi-ats train: {err}", file=sys.stderr)
        return EXIT_USAGE
    test = metrics.get("test", {})
    if test:
        print("test: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in test.items()))
    print(f"model: {Path(out) / 'model.pt'} (epoch {metrics['model_epoch']}: {metrics['model_selection']})")
    return EXIT_OK
