"""``wsi-ats predict``: slides or a manifest in, ``predictions.csv`` and one folder per slide out.

The command lives here rather than in `wsi_ats.cli` (argument parsing only) so Python
callers get the same behaviour and exit codes: 0 when every slide is ok, 1 when any
failed (its row says why), 2 for bad usage or input -- an unknown ``--scheduler``, a
bad manifest, a missing or foreign model, no slides at all, an unreachable cluster, or
an ``OUT`` whose ``predictions.csv`` is not ours. Usage is checked before the model is
loaded, and the model before any cluster starts, so a mistake costs no startup time.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from wsi_ats.cluster import LOCAL, scheduler_kind, session

EXIT_USAGE = 2


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
    draws: int = 1,
    device: str | None = None,
) -> int:
    """Predict ``slides`` (files or folders) or the rows of ``manifest`` into ``out``; returns the exit code.

    ``scheduler``: ``local`` (a cluster on this machine, ``workers`` processes),
    ``threads`` (this process) or a running cluster's address or scheduler file.
    """
    from wsi_ats.manifest import read_manifest
    from wsi_ats.pipeline import Pipeline, exit_code

    try:
        scheduler_kind(scheduler, workers)
        sources = read_manifest(manifest, root=root) if manifest else list(slides)
        pipeline = Pipeline(model, device=device, seed=seed, topk=topk, draws=draws)
        with session(scheduler, workers, device=device) as client:
            rows = pipeline.run_many(sources, out, client=client)
    except (ValueError, FileNotFoundError) as err:  # ManifestError, CheckpointError, SchedulerError, NoSlidesError
        print(f"wsi-ats predict: {err}", file=sys.stderr)
        return EXIT_USAGE
    return exit_code(rows)
