"""Setup mistakes and a new user's first runs: each is one clear message and exit 2, or just works.

Issue 20's "setup errors" and "what a new user hit": foreign model files, scheduler files
and addresses, manifests from spreadsheets, unreadable training slides, reruns into a run
folder, file modes, progress bars in logs, the local cluster's exit, the command line's own
help. Inputs are built here; models and slides are the tiny ones the other tests share.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import logging
import os
import pty
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch
from predict_data import cohort_slides, trained_model
from test_train import recipe
from toy_cohort import write_toy_slide

from wsi_ats import load_checkpoint
from wsi_ats.cli import build_parser, main, synth_options
from wsi_ats.cluster import session
from wsi_ats.commands import train_command
from wsi_ats.demo import DEMO_COHORT, synth_command
from wsi_ats.evaluate import evaluate
from wsi_ats.exit_codes import EXIT_OK, EXIT_USAGE
from wsi_ats.manifest import ManifestError, read_manifest
from wsi_ats.outputs import read_predictions
from wsi_ats.pipeline import predict_one
from wsi_ats.progress import progress_bar
from wsi_ats.summary import label_summary
from wsi_ats.synth import make_cohort


@pytest.fixture(scope="session")
def model_and_manifest(tmp_path_factory):
    return trained_model(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    """Folder with toy_0..toy_3 (positive, negative, positive, negative), lossless zarr, 512 px."""
    folder = tmp_path_factory.mktemp("toy")
    for i in range(4):
        write_toy_slide(folder / f"toy_{i}.zarr", seed=100 + i, positive=i % 2 == 0)
    return folder


def write_manifest(path: Path, rows: list[tuple[str, ...]], header: str = "slide_id,path,label,split") -> Path:
    path.write_text("\n".join([header, *(",".join(r) for r in rows)]) + "\n")
    return path


def stderr_lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


# -- the model file --------------------------------------------------------------------------------------


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _text(path: Path) -> None:
    path.write_text("not a model\n")


def _plain_state_dict(path: Path) -> None:
    torch.save({"weight": torch.zeros(2)}, path)


def _pickled_module(path: Path) -> None:
    torch.save(torch.nn.Linear(2, 2), path)


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (_empty, "empty file, not a wsi-ats checkpoint"),
        (_text, "not a wsi-ats checkpoint (unreadable as a torch file"),
        (_plain_state_dict, "a torch file without the 'wsi-ats-checkpoint' tag"),
        (_pickled_module, "it holds pickled Python objects"),
    ],
    ids=["empty", "text", "state-dict", "pickled-module"],
)
def test_a_model_file_that_is_not_a_checkpoint_is_one_line_and_exit_2(model_and_manifest, tmp_path, capsys, make, says):
    _, manifest = model_and_manifest
    model = tmp_path / "model.pt"
    make(model)
    code = main(
        ["predict", "--model", str(model), str(cohort_slides(manifest)[0]), "--out", str(tmp_path / "out"), "--scheduler", "threads"]
    )
    (line,) = stderr_lines(capsys)
    assert code == EXIT_USAGE
    assert line.startswith(f"wsi-ats predict: {model}: ") and says in line


def test_a_folder_given_as_the_model_names_the_model_file_inside(model_and_manifest, tmp_path, capsys):
    model, manifest = model_and_manifest
    code = main(
        ["predict", "--model", str(model.parent), str(cohort_slides(manifest)[0]), "--out", str(tmp_path / "out"), "--scheduler", "threads"]
    )
    (line,) = stderr_lines(capsys)
    assert code == EXIT_USAGE
    assert line == f"wsi-ats predict: {model.parent}: is a folder; give the checkpoint file, e.g. {model} (it holds model.pt)"


# -- the scheduler -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("", "the scheduler file is empty (is the scheduler still starting?"),
        ('{"address": "tcp://127.0.0.1:8786"', "not a scheduler file (not JSON:"),
        ('{"id": "Scheduler-1"}', 'not a scheduler file (no "address";'),
    ],
    ids=["empty", "malformed", "no-address"],
)
def test_an_unusable_scheduler_file_is_one_line_and_exit_2(model_and_manifest, tmp_path, capsys, content, says):
    model, manifest = model_and_manifest
    file = tmp_path / "scheduler.json"
    file.write_text(content)
    code = main(
        ["predict", "--model", str(model), str(cohort_slides(manifest)[0]), "--out", str(tmp_path / "out"), "--scheduler", str(file)]
    )
    (line,) = stderr_lines(capsys)
    assert code == EXIT_USAGE
    assert line.startswith(f"wsi-ats predict: --scheduler {file}: {says}")


def test_a_dead_scheduler_address_fails_within_the_timeout_not_30_s(model_and_manifest, tmp_path, capsys):
    model, manifest = model_and_manifest
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    start = time.monotonic()
    code = main(["predict", "--model", str(model), str(cohort_slides(manifest)[0]), "--out", str(tmp_path / "out"),
                 "--scheduler", address, "--timeout", "1"])  # fmt: skip
    elapsed = time.monotonic() - start
    (line,) = stderr_lines(capsys)
    assert code == EXIT_USAGE and elapsed < 10
    assert line == (f"wsi-ats predict: --scheduler {address}: no dask scheduler answered within 1 s; "
                    "is it running at that address? (--timeout waits longer)")  # fmt: skip
    assert not (tmp_path / "out" / "predictions.csv").exists()


@pytest.mark.slow
def test_a_local_cluster_ends_without_a_nanny_warning(model_and_manifest):
    """Workers that had predicted a few slides outlived their nanny's 4 s grace at shutdown on a busy 2-core
    machine (interpreter teardown walking torch's heap), and every run ended with a warning."""
    model, manifest = model_and_manifest
    slides = cohort_slides(manifest)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    nanny = logging.getLogger("distributed.nanny")
    nanny.addHandler(handler)
    try:
        with session("local", 2, say=lambda _: None) as client:
            futures = [client.submit(predict_one, str(model), str(s), f"s{i}", pure=False) for i, s in enumerate(slides)]
            errors = [f.result().error for f in futures]
    finally:
        nanny.removeHandler(handler)
    assert errors == [None] * len(slides)
    assert [r.getMessage() for r in records] == []


# -- manifests -----------------------------------------------------------------------------------------


def test_a_manifest_saved_with_a_utf8_bom_reads_like_one_without(tmp_path):
    text = "slide_id,path,label\na,a.tiff,x\n"
    plain, bom = tmp_path / "plain.csv", tmp_path / "bom.csv"
    plain.write_text(text, encoding="utf-8")
    bom.write_text(text, encoding="utf-8-sig")
    assert bom.read_bytes().startswith(b"\xef\xbb\xbf")
    assert read_manifest(bom) == read_manifest(plain)


def test_every_bad_cell_of_a_manifest_is_listed_with_its_line_and_column(tmp_path):
    m = write_manifest(tmp_path / "m.csv", [
        ("a", "a.tiff", "x", "train"),
        ("", "b.tiff", "x", "train"),
        ("c", "", "x", "tain"),
        ("a", "d.tiff", "", "val"),
        ("e", "e.tiff", "x", "test", "extra"),
    ])  # fmt: skip
    with pytest.raises(ManifestError) as caught:
        read_manifest(m)
    assert str(caught.value).splitlines() == [
        f"{m}: 6 problems:",
        f"  {m}:3: column slide_id: empty",
        f"  {m}:4: column path: empty",
        f"  {m}:4: column split: 'tain' is not one of train, val, test (or empty)",
        f"  {m}:5: column slide_id: 'a' already used on line 2",
        f"  {m}:5: column label: empty (training needs the label of every slide)",
        f"  {m}:6: 5 fields, the header has 4 (a comma inside a value needs quotes)",
    ]


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ("slide_id,path,label\na,caf\xe9.tiff,x\n".encode("latin-1"), ':2: not UTF-8 text (byte 0xe9); save the manifest as "CSV UTF-8"'),
        (
            b"slide_id;path;label\na;a.tiff;x\n",
            (
                ":1: header must have slide_id,path,label[,split][,case_id][,mpp]; missing slide_id,path,label "
                "(found slide_id;path;label); its columns are separated by ';', not commas"
            ),
        ),
        (b"PK\x03\x04\x14\x00\x06\x00", ': a zip file (an Excel .xlsx?), not CSV; save it as "CSV UTF-8"'),
        (b"slide_id,path,label\na,a\x00.tiff,x\n", ":2: column path: contains a NUL byte"),
    ],
    ids=["latin-1", "semicolons", "xlsx", "nul"],
)
def test_a_manifest_from_a_spreadsheet_says_how_to_save_it(tmp_path, capsys, data, says):
    m = tmp_path / "m.csv"
    m.write_bytes(data)
    code = main(["train", "--manifest", str(m), "--config", "synthetic_wsi", "--out", str(tmp_path / "run")])
    assert code == EXIT_USAGE
    assert stderr_lines(capsys) == [f"wsi-ats train: {m}{says}"]
    assert not (tmp_path / "run").exists()


# -- predict with and without labels ---------------------------------------------------------------------


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` with stdout and stderr captured as a log file would get them (not a terminal)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def labelled_run(model_and_manifest, tmp_path_factory):
    """``(exit code, stdout, stderr, OUT)`` of predict over a labelled manifest whose third slide is missing."""
    model, manifest = model_and_manifest
    slides = cohort_slides(manifest)
    folder = tmp_path_factory.mktemp("labelled")
    m = write_manifest(folder / "m.csv", [("a", str(slides[0]), "positive"), ("b", str(slides[1]), "negative"),
                                          ("gone", str(folder / "gone.tiff"), "positive"), ("c", str(slides[2]), "")],
                       header="slide_id,path,label")  # fmt: skip
    code, out, err = run_cli(
        ["predict", "--model", str(model), "--manifest", str(m), "--out", str(folder / "out"), "--scheduler", "threads"]
    )
    return code, out, err, folder / "out"


def test_predict_reads_a_manifest_without_a_label_column(model_and_manifest, tmp_path):
    model, manifest = model_and_manifest
    m = write_manifest(tmp_path / "m.csv", [("a", str(cohort_slides(manifest)[0]))], header="slide_id,path")
    code, out, _ = run_cli(
        ["predict", "--model", str(model), "--manifest", str(m), "--out", str(tmp_path / "out"), "--scheduler", "threads"]
    )
    assert code == EXIT_OK
    assert [r["status"] for r in read_predictions(tmp_path / "out" / "predictions.csv")] == ["ok"]
    assert "accuracy" not in out and not (tmp_path / "out" / "summary.json").exists()


def test_with_labels_predict_ends_with_accuracy_and_a_confusion_table(labelled_run):
    code, out, _, folder = labelled_run
    rows = {r["slide_id"]: r for r in read_predictions(folder / "predictions.csv")}
    assert code == 1 and rows["gone"]["status"] == "error"  # the missing slide fails its own row
    truth = {"a": "positive", "b": "negative"}
    right = sum(rows[s]["prediction"] == label for s, label in truth.items())
    confusion = {t: {p: sum(truth[s] == t and rows[s]["prediction"] == p for s in truth) for p in ("negative", "positive")}
                 for t in ("negative", "positive")}  # fmt: skip
    lines = out.splitlines()
    start = lines.index(f"accuracy against the manifest's labels: {right / 2:.3f} ({right}/2); 1 labelled slide(s) without a prediction")
    table = [line.split() for line in lines[start + 1 : start + 4]]
    assert table == [
        ["label", "\\", "predicted", "negative", "positive", "(none)"],
        ["negative", str(confusion["negative"]["negative"]), str(confusion["negative"]["positive"]), "0"],
        ["positive", str(confusion["positive"]["negative"]), str(confusion["positive"]["positive"]), "1"],
    ]


def test_the_accuracy_summary_is_kept_in_summary_json(labelled_run):
    _, _, _, folder = labelled_run
    summary = json.loads((folder / "summary.json").read_text())
    assert summary == label_summary({"a": "positive", "b": "negative", "gone": "positive"}, read_predictions(folder / "predictions.csv"))
    assert (summary["labelled_slides"], summary["predicted"], summary["not_predicted"]) == (3, 2, {"negative": 0, "positive": 1})


def test_predict_into_a_log_draws_no_progress_bar(labelled_run):
    _, _, err, _ = labelled_run
    assert "\r" not in err and "slide/s" not in err


def test_a_slide_without_a_trusted_prediction_is_never_counted_right_or_wrong():
    rows = [{"slide_id": "a", "status": "ok", "prediction": "pos"}, {"slide_id": "b", "status": "error", "prediction": ""},
            {"slide_id": "c", "status": "ok", "prediction": "neg"},
            {"slide_id": "d", "status": "ok", "prediction": "neg", "warning": "no tissue found"}]  # fmt: skip
    summary = label_summary({"a": "pos", "b": "pos", "c": "pos", "d": "pos"}, rows)
    assert (summary["correct"], summary["predicted"], summary["accuracy"]) == (1, 2, 0.5)
    assert summary["confusion"]["pos"] == {"neg": 1, "pos": 1} and summary["not_predicted"] == {"neg": 0, "pos": 2}


# -- training ------------------------------------------------------------------------------------------


def toy_rows(toy: Path, splits: dict[int, str], labels: dict[int, str] | None = None) -> list[tuple[str, ...]]:
    """Manifest rows of the toy slides ``i -> split`` (labels: their own unless given)."""
    own = {i: "positive" if i % 2 == 0 else "negative" for i in range(4)}
    return [(f"toy_{i}", str(toy / f"toy_{i}.zarr"), (labels or own)[i], split) for i, split in splits.items()]


def corrupt_chunks(src: Path, dst: Path) -> Path:
    """A copy of a zarr slide whose metadata is intact and every chunk is garbage: it opens, but no pixel decodes."""
    shutil.copytree(src, dst)
    for chunk in (p for p in dst.rglob("*") if p.is_file() and p.name != "zarr.json"):
        chunk.write_bytes(b"garbage")
    return dst


def test_unreadable_slides_of_every_split_are_listed_at_once_before_training(toy, tmp_path, capsys):
    (tmp_path / "text.zarr").write_text("not a slide")
    m = write_manifest(tmp_path / "m.csv", [
        *toy_rows(toy, {0: "train", 1: "train", 2: "val", 3: "test"}),
        ("lost", str(tmp_path / "lost.zarr"), "positive", "train"),
        ("text", str(tmp_path / "text.zarr"), "negative", "val"),
        ("gone", str(tmp_path / "gone.zarr"), "negative", "test"),
    ])  # fmt: skip
    code = train_command(manifest=m, config=recipe(epochs=1), out=tmp_path / "run")
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert err.startswith("wsi-ats train: 3 slide(s) cannot be read; fix or remove them, or pass --skip-unreadable:\n")
    listed = [line.split()[0] for line in err.splitlines()[1:]]
    assert listed == ["lost", "text", "gone"]
    assert not (tmp_path / "run" / "last.pt").exists()  # not one step was taken


def test_a_training_slide_that_opens_but_cannot_be_decoded_is_refused_before_the_first_step(toy, tmp_path, capsys):
    broken = corrupt_chunks(toy / "toy_0.zarr", tmp_path / "broken.zarr")
    m = write_manifest(tmp_path / "m.csv", [*toy_rows(toy, {0: "train", 1: "train"}), ("broken", str(broken), "positive", "train")])
    code = train_command(manifest=m, config=recipe(epochs=1), out=tmp_path / "run")
    lines = capsys.readouterr().err.splitlines()
    assert code == EXIT_USAGE
    assert lines[0] == "wsi-ats train: 1 slide(s) cannot be read; fix or remove them, or pass --skip-unreadable:"
    assert lines[1].startswith(f"  broken (train, {broken}): ") and len(lines) == 2
    assert not (tmp_path / "run" / "last.pt").exists()


def test_skip_unreadable_trains_without_them_and_records_them_in_metrics(toy, tmp_path):
    broken = corrupt_chunks(toy / "toy_0.zarr", tmp_path / "broken.zarr")
    m = write_manifest(tmp_path / "m.csv", [
        *toy_rows(toy, {0: "train", 1: "train", 2: "test", 3: "test"}),
        ("lost", str(tmp_path / "lost.zarr"), "positive", "test"),
        ("broken", str(broken), "negative", "train"),
    ])  # fmt: skip
    assert train_command(manifest=m, config=recipe(epochs=1), out=tmp_path / "run", skip_unreadable=True) == EXIT_OK
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [(s["slide_id"], s["split"], s["path"]) for s in metrics["skipped_slides"]] == [
        ("lost", "test", str(tmp_path / "lost.zarr")), ("broken", "train", str(broken)),
    ]  # fmt: skip
    assert metrics["skipped_slides"][0]["error"].startswith("FileNotFoundError: ")
    assert metrics["splits"] == {"train": ["toy_0", "toy_1"], "val": [], "test": ["toy_2", "toy_3"]}


def test_model_pt_is_the_epoch_best_on_validation_and_last_pt_the_last(toy, tmp_path):
    """Validation labels inverted, so learning the training slides does not help there: an early epoch is best."""
    inverted = {0: "positive", 1: "negative", 2: "negative", 3: "positive"}
    m = write_manifest(tmp_path / "m.csv", toy_rows(toy, {0: "train", 1: "train", 2: "val", 3: "val"}, inverted))
    assert train_command(manifest=m, config=recipe(epochs=6, lr=3e-2), out=tmp_path / "run") == EXIT_OK
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    history, chosen = metrics["epochs"], metrics["model_epoch"]
    assert chosen < len(history)  # the premise: an earlier epoch is best
    assert chosen == max(range(1, len(history) + 1), key=lambda e: (history[e - 1]["val_accuracy"], -history[e - 1]["val_loss"]))
    val = evaluate(load_checkpoint(tmp_path / "run" / "model.pt"), read_manifest(m)[2:])
    assert (val["accuracy"], val["loss"]) == pytest.approx((history[chosen - 1]["val_accuracy"], history[chosen - 1]["val_loss"]))
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert len(last["training"]["history"]) == len(history) and last["training"]["best"]["epoch"] == chosen


def test_training_into_a_folder_that_holds_a_run_needs_resume(toy, tmp_path, capsys):
    m = write_manifest(tmp_path / "m.csv", toy_rows(toy, {0: "train", 1: "train"}))
    run = tmp_path / "run"
    assert train_command(manifest=m, config=recipe(epochs=1), out=run) == EXIT_OK
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    capsys.readouterr()
    assert train_command(manifest=m, config=recipe(epochs=1), out=run, epochs=2) == EXIT_USAGE
    assert stderr_lines(capsys) == [(f"wsi-ats train: {run}: already holds a run (1 epochs done in last.pt); pass --resume to "
                                    "continue it (a larger --epochs trains on), or choose another --out")]  # fmt: skip
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert train_command(manifest=m, config=recipe(epochs=1), out=run, epochs=2, resume=True) == EXIT_OK
    assert f"resuming {run}: 1 of 2 epochs done" in capsys.readouterr().err
    assert [e["epoch"] for e in json.loads((run / "metrics.json").read_text())["epochs"]] == [1, 2]


def test_checkpoints_and_metrics_follow_the_umask(toy, tmp_path):
    m = write_manifest(tmp_path / "m.csv", toy_rows(toy, {0: "train", 1: "train"}))
    old = os.umask(0o027)
    try:
        assert train_command(manifest=m, config=recipe(epochs=1), out=tmp_path / "run") == EXIT_OK
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "run").iterdir()}
    assert modes == {"model.pt": 0o640, "last.pt": 0o640, "metrics.json": 0o640}


def test_train_into_a_log_prints_its_epochs_but_no_progress_bar(toy, tmp_path, capsys):
    m = write_manifest(tmp_path / "m.csv", toy_rows(toy, {0: "train", 1: "train"}))
    assert train_command(manifest=m, config=recipe(epochs=1), out=tmp_path / "run") == EXIT_OK
    printed = capsys.readouterr()
    assert "epoch 1/1: loss" in printed.out
    assert "\r" not in printed.out + printed.err and "slide/s" not in printed.err


# -- progress bars ---------------------------------------------------------------------------------------


def test_a_progress_bar_is_drawn_on_a_terminal_and_not_into_a_file(tmp_path):
    leader, follower = pty.openpty()
    with os.fdopen(follower, "w") as terminal, open(tmp_path / "log", "w") as log:
        assert not progress_bar(range(3), file=terminal).disable
        assert progress_bar(range(3), file=log).disable
        assert progress_bar(range(3), file=terminal, enabled=False).disable
    os.close(leader)


def test_synth_into_a_log_draws_no_progress_bar(tmp_path):
    code, out, err = run_cli(["synth", str(tmp_path / "c"), "--n", "2", "--size", "512", "--format", "tiff", "--workers", "1"])
    assert code == EXIT_OK and out.startswith("cohort written")
    assert err == ""


# -- the command line ----------------------------------------------------------------------------------


def test_version_prints_the_package_version(capsys):
    from wsi_ats import __version__

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"wsi-ats {__version__}"


def test_every_option_of_every_command_has_help_text():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    undocumented = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, sub in {"": parser, **commands}.items()
                    for a in sub._actions if not a.help]  # fmt: skip
    assert undocumented == []


def test_wsi_ats_synth_can_write_the_demo_cohort():
    args = build_parser().parse_args(synth_command("cohort")[1:])
    defaults = {k: v.default for k, v in inspect.signature(make_cohort).parameters.items()}
    assert synth_options(args) == {**{k: defaults[k] for k in synth_options(args)}, **DEMO_COHORT}


def test_synth_options_reach_the_files(tmp_path):
    code, _, _ = run_cli(["synth", str(tmp_path / "c"), "--n", "2", "--size", "1024", "--format", "zarr", "--n-blobs", "5",
                          "--mpp", "0.5", "--workers", "1"])  # fmt: skip
    assert code == EXIT_OK
    for row in read_manifest(tmp_path / "c" / "manifest.csv"):
        assert len(json.loads((tmp_path / "c" / "annotations" / f"{row.slide_id}.geojson").read_text())["features"]) == 5
        from wsi_ats import open_slide

        with open_slide(row.path) as slide:
            assert slide.mpp == pytest.approx(0.5)


def test_synth_with_too_small_a_slide_for_its_blobs_is_one_line_and_exit_2(tmp_path, capsys):
    code = main(["synth", str(tmp_path / "c"), "--n", "2", "--size", "256", "--n-blobs", "50", "--workers", "1"])
    (line,) = stderr_lines(capsys)
    assert code == EXIT_USAGE and line.startswith("wsi-ats synth: ") and "use a larger size" in line
