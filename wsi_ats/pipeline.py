"""Batch prediction: slides in, ``predictions.csv`` and one output folder per slide out.

The work on one slide is one pure function, `predict_one`: open, predict, render the
output files in memory, and return them (or the error) as a `SlideOutcome`. It never
raises for a bad slide and never touches ``OUT``, so it runs the same in this process or
as a dask task (`wsi_ats.cluster` feeds those to a cluster: one per slide, run again on
another worker when its worker dies). `Pipeline.run_many` writes each outcome as it
arrives: the slide's folder first, then its CSV row, so a row that says ``ok`` always
has its files, and the CSV (rewritten atomically after every slide, less often once it
is huge) survives ``kill -9`` whole. A rerun skips slides already done and retries the rest.

Each slide's sampling seed is a hash of ``(seed, slide_id)``: results do not depend
on the order of the batch, on which worker ran the slide, or on what else was in it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi_ats.discover import SlideIdConflict, SlideSource, Taken, default_slide_id, discover
from wsi_ats.engine.confidence import AUTO, Draws
from wsi_ats.manifest import ManifestRow
from wsi_ats.outputs import (
    OK,
    PREDICTIONS_CSV,
    UNJUDGED,
    Row,
    bytes_columns,
    complete,
    error_row,
    folder_name,
    merge_rows,
    printable,
    read_predictions,
    result_row,
    slide_files,
    slide_folder_complete,
    write_predictions,
    write_slide_folder,
)
from wsi_ats.outputs.outdir import claim_output_folder, describe_os_error
from wsi_ats.outputs.report import REPORT_HTML, write_report
from wsi_ats.result import SlideResult

if TYPE_CHECKING:
    import numpy as np

    from wsi_ats.engine.plan import SlidePlan
    from wsi_ats.models import ATSModel
    from wsi_ats.readers import Slide

#: Longest side of the thumbnail under the heatmap, in pixels.
THUMBNAIL_SIZE = 1024
#: ``predictions.csv`` rewrites take at most about 1/FLUSH_RATIO of a batch's time.
FLUSH_RATIO = 10
Source = str | os.PathLike[str] | ManifestRow


class NoSlidesError(ValueError):
    """The inputs hold no slide at all: a usage error, not a failed slide."""


def slide_seed(seed: int, slide_id: str) -> int:
    """The seed of one slide: 32 bits of SHA-256 of ``(seed, slide_id)``, stable across runs and machines."""
    digest = hashlib.sha256(f"{int(seed)}\0{slide_id}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:4], "little")


def describe_error(err: BaseException, path: str) -> str:
    """``"SlideError: /path: reason"`` on one line; the path is added when the message lacks it."""
    text = str(err) if path in str(err) else f"{path}: {err}"
    return " ".join(f"{type(err).__name__}: {text}".split())


def exit_code(rows: list[Row]) -> int:
    """What `wsi-ats predict` exits with: 0 when every slide is ok, 1 when any failed or could not be judged."""
    return 0 if rows and all(r["status"] == OK for r in rows) else 1


@functools.lru_cache(maxsize=2)
def _load_cached(path: str, mtime_ns: int, device: str | None) -> ATSModel:
    from wsi_ats.checkpoint import load_checkpoint

    return load_checkpoint(path, device=device)


def load_model(model_path: str | os.PathLike[str], device: str | None = None) -> ATSModel:
    """Load a checkpoint once per process (and again if the file changes): dask tasks reuse it."""
    path = os.path.abspath(model_path)
    version = os.stat(path).st_mtime_ns if os.path.exists(path) else 0  # a missing file: the loader says so
    return _load_cached(path, version, None if device is None else str(device))


def predict_with_seed(
    model: ATSModel,
    slide: Slide,
    slide_id: str,
    seed: int,
    topk: bool,
    draws: Draws,
    cache: str | None = None,
    plan: SlidePlan | None = None,
) -> SlideResult:
    """The engine on one open slide (and its plan, if made already), with the slide's own seed (`slide_seed`)."""
    from wsi_ats.engine.run import predict_slide

    return predict_slide(model, slide, slide_id=slide_id, seed=slide_seed(seed, slide_id), draws=draws, topk=topk, cache=cache, plan=plan)


@dataclass(frozen=True)
class SlideOutcome:
    """What `predict_one` hands back: the result and its rendered files, or the error; wall time either way."""

    slide_id: str
    path: str
    seconds: float
    result: SlideResult | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    error: str | None = None
    #: Bytes this prediction read of the slide (in the process that ran it), and the slide's size.
    bytes_read: int | None = None
    slide_bytes: int | None = None


def predict_one(
    model: ATSModel | str | os.PathLike[str],
    source: str,
    slide_id: str,
    seed: int = 0,
    mpp: float | None = None,
    *,
    topk: bool = False,
    draws: Draws = 1,
    device: str | None = None,
    cache: str | None = None,
    save_features: bool = False,
    stage: str | None = None,
    remote_cache: str | None = None,
) -> SlideOutcome:
    """Predict one slide and render its output files; any failure becomes the outcome's ``error``.

    ``save_features`` adds ``features.h5``: the drawn patches' embeddings and corners (`wsi_ats.outputs.bags`).

    ``model`` is a loaded model or a checkpoint path (loaded once per process), so a
    dask task can be given the path instead of the pickled network. ``mpp`` overrides the
    file's resolution; ``cache`` keeps resampled levels between runs. A URL is downloaded into
    ``stage`` first (on the machine that runs this: a worker's own disk), or read by range with
    what it reads kept in ``remote_cache`` (`wsi_ats.readers.open_slide`). A slide the model
    cannot judge is not an error: its result carries the warnings, and its files show why.
    The heatmap's thumbnail is read from the plan's levels, so memory stays bounded on a
    slide without a pyramid.
    """
    from wsi_ats.dense import captured_embeddings, sampled_bag
    from wsi_ats.engine.plan import plan_slide, thumbnail
    from wsi_ats.outputs.bags import bag_bytes
    from wsi_ats.readers import open_slide
    from wsi_ats.readers.remote import read_stats, source_size

    start, before = time.perf_counter(), read_stats(source)
    try:
        net = load_model(model, device) if isinstance(model, (str, os.PathLike)) else model
        with open_slide(source, mpp=mpp, stage=stage, remote_cache=remote_cache) as slide:
            plan = plan_slide(net, slide, cache=cache)
            with captured_embeddings(net) if save_features else nullcontext([]) as embeddings:
                result = predict_with_seed(net, slide, slide_id, seed, topk, draws, cache, plan)
            files = slide_files(result, thumbnail(plan, THUMBNAIL_SIZE), slide.levels[0].shape, 1 if topk else max(result.draws, 1))
            if save_features and result.judged:
                files["features.h5"] = bag_bytes(sampled_bag(net, result, embeddings, slide.mpp))
    except Exception as err:  # noqa: BLE001 - a bad slide fails its row, never the batch
        return SlideOutcome(slide_id, source, time.perf_counter() - start, error=describe_error(err, source))
    seconds, read = time.perf_counter() - start, (read_stats(source) - before).bytes
    return SlideOutcome(slide_id, source, seconds, result=result, files=files, bytes_read=read, slide_bytes=source_size(source))


class Pipeline:
    """A trained model applied to slides: `run` for one, `run_many` for a batch into an output folder.

    ``predict_fn`` is the per-slide work of `run_many` (default `predict_one`, whose
    signature a replacement keeps): wrap it to add logging or checks around each slide.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        device: str | None = None,
        seed: int = 0,
        topk: bool = False,
        draws: Draws = 1,
        predict_fn: Callable[..., SlideOutcome] = predict_one,
        *,
        mpp: float | None = None,
        cache: str | os.PathLike[str] | None = None,
        save_features: bool = False,
        stage: str | os.PathLike[str] | None = None,
        remote_cache: str | os.PathLike[str] | None = None,
    ) -> None:
        if draws != AUTO and (isinstance(draws, bool) or not isinstance(draws, int) or draws < 1):
            raise ValueError(f"draws must be at least 1 or {AUTO!r}, got {draws!r}")
        self.model_path = os.path.abspath(model_path)
        self.device = device
        self.seed, self.topk, self.draws = int(seed), bool(topk), draws
        #: Resolution for slides whose manifest row gives none (overrides their files); resampled-level cache folder.
        self.mpp, self.cache = mpp, None if cache is None else os.fspath(cache)
        self.predict_fn = predict_fn  # what run_many does per slide; `predict_one`'s signature
        self.save_features = bool(save_features)  # each slide's folder gets features.h5 (the drawn patches' embeddings)
        from wsi_ats.readers import check_remote_options

        check_remote_options(stage, remote_cache)
        #: URLs: downloaded into ``stage`` first, or read by range keeping the bytes in ``remote_cache``.
        self.stage = None if stage is None else os.fspath(stage)
        self.remote_cache = None if remote_cache is None else os.fspath(remote_cache)
        self.model = load_model(self.model_path, device)  # fail now, not on the first slide

    def run(self, source: Source | Slide | np.ndarray, slide_id: str | None = None) -> SlideResult:
        """Predict one slide (path, manifest row, open `Slide` or ``H x W x 3`` array); errors raise."""
        from wsi_ats.readers import Slide, open_slide

        mpp = self.mpp
        if isinstance(source, ManifestRow):
            slide_id, mpp, source = slide_id or source.slide_id, source.mpp or mpp, source.path
        if isinstance(source, Slide):
            return predict_with_seed(self.model, source, slide_id or default_slide_id(source.source), *self._options)
        with open_slide(source, mpp=mpp, **self._remote) as slide:
            return predict_with_seed(self.model, slide, slide_id or default_slide_id(source), *self._options)

    @property
    def _options(self) -> tuple[int, bool, Draws, str | None]:
        return self.seed, self.topk, self.draws, self.cache

    @property
    def _remote(self) -> dict[str, str]:
        """The `open_slide` keywords for URLs that are set (so a replaced ``predict_fn`` need not take unset ones)."""
        return {k: v for k, v in {"stage": self.stage, "remote_cache": self.remote_cache}.items() if v is not None}

    def run_many(
        self,
        sources: Iterable[Source] | Source,
        out_dir: str | os.PathLike[str],
        client: Any = None,
        *,
        verbose: bool = True,
    ) -> list[Row]:
        """Predict every slide into ``out_dir``; returns one row dict per slide, in input order.

        Folders are searched recursively (`wsi_ats.discover`). Slides whose row in an
        existing ``predictions.csv`` is ok, for the same path, with all files present
        are skipped and their files left untouched; the others are (re)done; rows of other
        slides stay. Each slide's files go to ``out_dir / folder_name(slide_id)``. With a
        ``dask.distributed`` ``client`` each slide is one task, written as it completes.
        ``verbose`` prints notes, a progress bar and a summary.

        ``out_dir`` is locked for the run: `OutputError` when another run holds it, or
        it cannot be created, written or read; `SlideIdConflict` when a manifest id names
        another file's result there. Both before any slide is predicted.
        """
        sources = [sources] if isinstance(sources, (str, os.PathLike, ManifestRow)) else list(sources)
        say = functools.partial(print, file=sys.stderr) if verbose else (lambda *_: None)
        with claim_output_folder(out_dir) as out:
            csv_path = out / PREDICTIONS_CSV
            previous = {r["slide_id"]: r for r in _read_rows(csv_path)}
            try:
                found = discover(sources, {sid: Taken(r["path"], r["status"] == OK) for sid, r in previous.items()})
            except SlideIdConflict as err:
                raise SlideIdConflict(f"{csv_path}: {err}") from None
            for note in found.notes:
                say(f"note: {printable(note)}")
            if not found.slides:
                raise NoSlidesError(f"no slides found in {', '.join(map(str, sources))}")
            result, skipped = self._run_locked(found.slides, out, previous, client, verbose)
        if verbose:
            self._summary(result, skipped, csv_path)
        return result

    def _run_locked(
        self, slides: tuple[SlideSource, ...], out: Path, previous: dict[str, Row], client: Any, verbose: bool
    ) -> tuple[list[Row], int]:
        """Predict the slides not done yet into ``out`` (held by this run); all rows, and how many were done before."""
        csv_path = out / PREDICTIONS_CSV
        ids = [s.slide_id for s in slides]
        rows = {sid: previous[sid] for sid in ids if sid in previous}  # kept until replaced
        todo = [s for s in slides if not self._done(previous.get(s.slide_id), s, out)]
        last_end, last_cost = 0.0, 0.0

        def flush(force: bool = False) -> None:
            # After every slide while that is cheap; once the CSV is so long that rewriting it
            # costs more than 1/FLUSH_RATIO of the time since the last rewrite, less often
            # (a row not yet written only means that slide is redone after a crash). Rows
            # that are on disk now and not this run's stay, whoever wrote them.
            nonlocal last_end, last_cost
            start = time.perf_counter()
            if force or start - last_end >= FLUSH_RATIO * last_cost:
                ours = [rows[sid] for sid in ids if sid in rows]
                try:
                    merged = merge_rows(ours, _read_rows(csv_path))
                    write_predictions(csv_path, merged)
                    write_report(out / REPORT_HTML, merged)
                except OSError as err:
                    raise describe_os_error(csv_path, err, "write the predictions") from None
                last_end = time.perf_counter()
                last_cost = last_end - start

        flush(force=True)  # before any work: an OUT that cannot take the CSV fails now
        from wsi_ats.progress import progress_bar

        failed = 0
        with progress_bar(total=len(todo), unit="slide", desc="predict", enabled=verbose and bool(todo)) as bar:
            try:
                for outcome in self._outcomes(todo, client):
                    row = self._write(outcome, out)
                    rows[outcome.slide_id] = row
                    flush()
                    failed += row["status"] != OK
                    bar.set_postfix(failed=failed, refresh=False)
                    bar.update()
            finally:
                flush(force=True)  # also on Ctrl-C: keep every finished slide
        return complete([rows[sid] for sid in ids]), len(slides) - len(todo)

    # -- batch plumbing ----------------------------------------------------------
    @staticmethod
    def _done(previous: Row | None, source: SlideSource, out: Path) -> bool:
        return (
            previous is not None
            and previous["status"] == OK
            and previous["path"] == source.path
            and slide_folder_complete(out / folder_name(source.slide_id))
        )

    def _outcomes(self, todo: list[SlideSource], client: Any) -> Iterator[SlideOutcome]:
        """Outcomes in this process, in order; or from dask tasks (`wsi_ats.cluster`), as they complete."""
        options = dict(topk=self.topk, draws=self.draws, cache=self.cache, **self._remote)
        options |= {"save_features": True} if self.save_features else {}
        if client is None:
            for s in todo:
                yield self.predict_fn(self.model, s.path, s.slide_id, self.seed, s.mpp or self.mpp, **options)
            return
        from distributed import KilledWorker

        from wsi_ats.cluster import killed_worker_error, map_completed

        jobs = [(s.slide_id, (self.model_path, s.path, s.slide_id, self.seed, s.mpp or self.mpp)) for s in todo]
        tasks = map_completed(client, self.predict_fn, jobs, name="wsi-ats-predict", device=self.device, **options)
        for index, future in tasks:
            s = todo[index]
            try:
                yield future.result()
            except KilledWorker as err:  # the slide crashed every worker it was given
                yield SlideOutcome(s.slide_id, s.path, 0.0, error=killed_worker_error(err))
            except Exception as err:  # noqa: BLE001 - the task itself failed (lost data, unpicklable, ...)
                yield SlideOutcome(s.slide_id, s.path, 0.0, error=describe_error(err, s.path))
            finally:
                future.release()

    @staticmethod
    def _write(outcome: SlideOutcome, out: Path) -> Row:
        """The slide's folder, then its row: ok only once every file is in place."""
        if outcome.error is None:
            assert outcome.result is not None
            try:
                write_slide_folder(out / folder_name(outcome.slide_id), outcome.files)
                return result_row(outcome.result, outcome.path, outcome.seconds) | bytes_columns(outcome.bytes_read, outcome.slide_bytes)
            except OSError as err:
                return error_row(outcome.slide_id, outcome.path, describe_error(err, outcome.path), outcome.seconds)
        return error_row(outcome.slide_id, outcome.path, outcome.error, outcome.seconds)

    @staticmethod
    def _summary(rows: list[Row], skipped: int, csv_path: Path) -> None:
        bad = [r for r in rows if r["status"] != OK]
        unjudged = sum(r["status"] == UNJUDGED for r in rows)
        print(
            printable(
                f"{len(rows)} slides: {len(rows) - len(bad)} ok ({skipped} already done), {unjudged} not judged, "
                f"{len(bad) - unjudged} failed -> {csv_path}"
            )
        )
        for r in bad:
            line = f"  not judged {r['slide_id']}: {r['warning']}" if r["status"] == UNJUDGED else f"  failed {r['slide_id']}: {r['error']}"
            print(printable(line))


def _read_rows(csv_path: Path) -> list[Row]:
    """The rows in ``csv_path`` now; an OUT whose CSV cannot be read is an `OutputError`."""
    try:
        return read_predictions(csv_path)
    except OSError as err:
        raise describe_os_error(csv_path, err, "read the predictions") from None
