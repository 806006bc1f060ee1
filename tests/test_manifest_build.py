"""``wsi-ats manifest``: slides found under a folder, labelled by rules or a labels CSV, split per case.

Listing and labelling go by name only (reading a slide is the reader's job), so most
folders here hold empty files with slide names; the end-to-end test at the bottom
predicts real slides through a manifest read against a run-time root.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import pytest
from predict_data import cohort_slides, copy_slide, trained_model

from wsi_ats.cli import EXIT_OK, EXIT_USAGE, main
from wsi_ats.manifest import ManifestError, ManifestRow, read_manifest
from wsi_ats.manifest_build import LabelRule, build_manifest, read_labels, split_by_case, split_counts
from wsi_ats.outputs import read_predictions

RULES = [LabelRule.parse("normal_*=negative"), LabelRule.parse("tumor_*=positive")]


def folder_of(root: Path, *names: str) -> Path:
    """``root`` holding an empty file for each relative name."""
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).touch()
    return root


def labels_csv(path: Path, text: str):
    path.write_text(text)
    return read_labels(path)


def cohort(n_cases: int, slides_per_case: int, labels=("negative", "positive")) -> list[ManifestRow]:
    """Rows of ``n_cases`` patients with ``slides_per_case`` slides each, labels alternating by case."""
    return [
        ManifestRow(f"c{c:03d}-{s}", f"/s/c{c:03d}-{s}.tiff", labels[c % len(labels)], case_id=f"c{c:03d}")
        for c in range(n_cases)
        for s in range(slides_per_case)
    ]


# -- labelling -------------------------------------------------------------------------------------


def test_rules_label_slides_by_file_name_at_any_depth(tmp_path):
    folder = folder_of(tmp_path, "normal/normal_001.tif", "tumor/tumor_001.tif", "normal_002.tif")
    built = build_manifest(folder, rules=RULES)
    assert [(r.slide_id, r.label) for r in built.rows] == [
        ("normal_001", "negative"), ("normal_002", "negative"), ("tumor_001", "positive"),
    ]  # fmt: skip


def test_the_first_matching_rule_wins(tmp_path):
    folder = folder_of(tmp_path, "tumor_control_1.svs")
    control_first = [LabelRule.parse("*_control_*=negative"), LabelRule.parse("tumor_*=positive")]
    assert build_manifest(folder, rules=control_first).rows[0].label == "negative"
    assert build_manifest(folder, rules=control_first[::-1]).rows[0].label == "positive"


def test_a_rule_with_a_slash_matches_the_path_under_the_folder(tmp_path):
    folder = folder_of(tmp_path, "benign/a.svs", "malignant/b.svs")
    rules = [LabelRule.parse("benign/*=negative"), LabelRule.parse("malignant/*=positive")]
    assert [r.label for r in build_manifest(folder, rules=rules).rows] == ["negative", "positive"]


def test_slides_no_rule_matches_are_skipped_with_a_note_naming_them(tmp_path):
    folder = folder_of(tmp_path, "normal_001.tif", "test_001.tif")
    built = build_manifest(folder, rules=RULES)
    assert [r.slide_id for r in built.rows] == ["normal_001"]
    assert built.notes == (f"{tmp_path / 'test_001.tif'}: skipped, matches no --label rule",)


def test_strict_fails_on_a_slide_no_rule_matches(tmp_path):
    folder = folder_of(tmp_path, "normal_001.tif", "test_001.tif")
    with pytest.raises(ManifestError, match=r"1 of 2 slides unlabelled .*test_001\.tif"):
        build_manifest(folder, rules=RULES, strict=True)


@pytest.mark.parametrize("text", ["normal_*", "=negative", "normal_*=", " = "])
def test_a_rule_without_pattern_or_label_is_refused(text):
    with pytest.raises(ManifestError, match="expected PATTERN=LABEL"):
        LabelRule.parse(text)


def test_a_labels_csv_joins_on_slide_id_and_gives_case_ids(tmp_path):
    folder = folder_of(tmp_path / "slides", "p1-a.tiff", "p1-b.tiff", "p2-a.svs", "extra.svs")
    table = labels_csv(tmp_path / "labels.csv", "slide_id,label,case_id\np1-a,pos,p1\np1-b,pos,p1\np2-a,neg,p2\ngone,neg,p3\n")
    built = build_manifest(folder, labels=table)
    assert [(r.slide_id, r.label, r.case_id) for r in built.rows] == [("p1-a", "pos", "p1"), ("p1-b", "pos", "p1"), ("p2-a", "neg", "p2")]
    assert f"{folder / 'extra.svs'}: skipped, slide_id 'extra' has no row in {tmp_path / 'labels.csv'}" in built.notes
    assert f"{tmp_path / 'labels.csv'}:5: slide_id 'gone' matches no slide under {folder}" in built.notes


def test_a_labels_csv_keyed_by_case_labels_every_slide_of_that_case(tmp_path):
    folder = folder_of(tmp_path / "slides", "TCGA-AA-0001-01Z-00-DX1.svs", "TCGA-AA-0001-01Z-00-DX2.svs", "TCGA-BB-0002-01Z-00-DX1.svs")
    table = labels_csv(tmp_path / "labels.csv", "case_id,label\nTCGA-AA-0001,luminal\nTCGA-BB-0002,basal\n")
    built = build_manifest(folder, labels=table, case_pattern=re.compile(r"^(TCGA-\w\w-\w{4})"))
    assert [(r.case_id, r.label) for r in built.rows] == [("TCGA-AA-0001", "luminal")] * 2 + [("TCGA-BB-0002", "basal")]


def test_labels_keyed_by_case_without_a_case_pattern_are_refused(tmp_path):
    table = labels_csv(tmp_path / "labels.csv", "case_id,label\np1,pos\n")
    with pytest.raises(ManifestError, match="need --case REGEX"):
        build_manifest(folder_of(tmp_path / "s", "p1.svs"), labels=table)


def test_a_duplicate_row_in_the_labels_csv_names_both_lines(tmp_path):
    with pytest.raises(ManifestError, match=r"labels\.csv:3: slide_id 'a' already labelled on line 2"):
        labels_csv(tmp_path / "labels.csv", "slide_id,label\na,x\na,y\n")


def test_a_case_pattern_gives_the_case_and_skips_names_it_does_not_match(tmp_path):
    folder = folder_of(tmp_path, "TCGA-AA-0001-01Z-00-DX1.svs", "TCGA-AA-0001-11A-01-TS1.svs", "scan7.svs")
    rules = [LabelRule.parse("TCGA-??-????-01*=tumor"), LabelRule.parse("TCGA-??-????-11*=normal"), LabelRule.parse("*=other")]
    built = build_manifest(folder, rules=rules, case_pattern=re.compile(r"^(TCGA-\w\w-\w{4})"))
    assert [(r.label, r.case_id) for r in built.rows] == [("tumor", "TCGA-AA-0001"), ("normal", "TCGA-AA-0001")]
    assert built.notes == (f"{tmp_path / 'scan7.svs'}: skipped, file name does not match --case '^(TCGA-\\\\w\\\\w-\\\\w{{4}})'",)


def test_a_folder_without_slides_is_refused(tmp_path):
    with pytest.raises(ManifestError, match="no slides found"):
        build_manifest(folder_of(tmp_path, "README.txt"), rules=RULES)


# -- splits ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "expected"), [(10, [7, 2, 1]), (3, [2, 1, 0]), (20, [14, 3, 3]), (0, [0, 0, 0])])
def test_split_counts_share_cases_by_largest_remainder(n, expected):
    assert split_counts(n, (0.7, 0.15, 0.15)) == expected


@pytest.mark.parametrize("seed", range(5))
def test_all_slides_of_a_case_land_in_one_split(seed):
    rows = split_by_case(cohort(n_cases=30, slides_per_case=3), (0.6, 0.2, 0.2), seed)
    splits_of_case: dict[str, set[str]] = {}
    for r in rows:
        splits_of_case.setdefault(r.case_id, set()).add(r.split)
    assert all(len(s) == 1 for s in splits_of_case.values())
    assert {s for (s,) in splits_of_case.values()} == {"train", "val", "test"}


def test_cases_are_stratified_by_label(tmp_path):
    rows = split_by_case(cohort(n_cases=40, slides_per_case=2, labels=("a", "b", "b", "b")), (0.7, 0.15, 0.15), seed=0)
    cases = {(r.case_id, r.label, r.split) for r in rows}
    per_label = Counter((label, split) for _, label, split in cases)
    assert [per_label["a", s] for s in ("train", "val", "test")] == split_counts(10, (0.7, 0.15, 0.15))
    assert [per_label["b", s] for s in ("train", "val", "test")] == split_counts(30, (0.7, 0.15, 0.15))


def test_slides_without_a_case_are_each_their_own_case():
    rows = [ManifestRow(f"s{i}", f"/s/{i}.tiff", "x") for i in range(10)]
    assert Counter(r.split for r in split_by_case(rows, (0.7, 0.15, 0.15), seed=0)) == {"train": 7, "val": 2, "test": 1}


def test_the_same_seed_gives_the_same_splits_and_another_seed_others():
    rows = cohort(n_cases=30, slides_per_case=2)
    first = [r.split for r in split_by_case(rows, (0.6, 0.2, 0.2), seed=1)]
    assert first == [r.split for r in split_by_case(rows, (0.6, 0.2, 0.2), seed=1)]
    assert first != [r.split for r in split_by_case(rows, (0.6, 0.2, 0.2), seed=2)]


def test_splitting_keeps_the_order_of_the_rows():
    rows = cohort(n_cases=6, slides_per_case=2)
    assert [r.slide_id for r in split_by_case(rows, (0.5, 0.25, 0.25), seed=0)] == [r.slide_id for r in rows]


# -- command line ----------------------------------------------------------------------------------


def run(*args) -> int:
    return main(["manifest", *map(str, args)])


def test_the_command_writes_a_manifest_that_reads_back_against_its_root(tmp_path, capsys):
    data = folder_of(tmp_path / "data", "training/normal/normal_001.tif", "training/tumor/tumor_001.tif")
    out = tmp_path / "manifests" / "m.csv"
    assert run(data / "training", "--label", "normal_*=negative", "--label", "tumor_*=positive", "--root", data, "--out", out) == EXIT_OK
    assert "2 slides; labels negative=1, positive=1" in capsys.readouterr().out
    with out.open() as f:
        assert [r["path"] for r in csv.DictReader(f)] == ["training/normal/normal_001.tif", "training/tumor/tumor_001.tif"]
    assert [Path(r.path) for r in read_manifest(out, root=data)] == [
        data / "training/normal/normal_001.tif",
        data / "training/tumor/tumor_001.tif",
    ]


def test_the_command_replaces_an_existing_manifest(tmp_path):
    folder = folder_of(tmp_path / "s", "normal_001.tif")
    (tmp_path / "m.csv").write_text("slide_id,path,label\nold,old.tif,x\n")
    assert run(folder, "--label", "normal_*=negative", "--out", tmp_path / "m.csv") == EXIT_OK
    assert [r.slide_id for r in read_manifest(tmp_path / "m.csv")] == ["normal_001"]


def test_the_command_splits_per_case_with_a_seed(tmp_path):
    folder = folder_of(tmp_path / "s", *[f"p{i}-{s}.svs" for i in range(10) for s in "ab"])
    args = [folder, "--label", "*=x", "--case", r"^(p\d+)-", "--split", "0.6,0.2,0.2", "--seed", "3"]
    assert run(*args, "--out", tmp_path / "a.csv") == EXIT_OK
    assert run(*args, "--out", tmp_path / "b.csv") == EXIT_OK
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    rows = read_manifest(tmp_path / "a.csv")  # refuses a case in two splits
    assert Counter(r.split for r in rows) == {"train": 12, "val": 4, "test": 4}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--label PATTERN=LABEL rules or a --labels CSV"),
        (["--label", "normal_*"], "expected PATTERN=LABEL"),
        (["--label", "*=x", "--split", "0.7,0.2"], "--split '0.7,0.2': expected train,val,test"),
        (["--label", "*=x", "--case", "^p"], "needs exactly one group"),
        (["--label", "*=x", "--case", "(p"], "not a regular expression"),
        (["--label", "*=x", "--labels", "labels.csv"], "one of the two"),
        (["--label", "tumor_*=x"], "none of its 1 slides got a label"),
        (["--label", "*=x", "--root", "/nonexistent-root"], "--root /nonexistent-root: must be a local folder"),
    ],
    ids=["no-labels", "bad-rule", "bad-split", "case-without-group", "bad-regex", "rules-and-csv", "nothing-labelled", "bad-root"],
)
def test_bad_usage_exits_2_with_one_clear_line(tmp_path, capsys, args, message):
    folder = folder_of(tmp_path / "s", "normal_001.tif")
    (tmp_path / "labels.csv").write_text("slide_id,label\nnormal_001,x\n")
    assert run(folder, *[a.replace("labels.csv", str(tmp_path / "labels.csv")) for a in args], "--out", tmp_path / "m.csv") == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("wsi-ats manifest: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "m.csv").exists()


def test_an_out_that_is_not_a_manifest_is_left_alone_and_exits_2(tmp_path, capsys):
    folder = folder_of(tmp_path / "s", "normal_001.tif")
    (tmp_path / "notes.csv").write_text("precious,data\n")
    assert run(folder, "--label", "*=x", "--out", tmp_path / "notes.csv") == EXIT_USAGE
    assert "exists and is not a manifest" in capsys.readouterr().err
    assert (tmp_path / "notes.csv").read_text() == "precious,data\n"


def test_a_folder_without_slides_exits_2(tmp_path, capsys):
    assert run(folder_of(tmp_path / "s", "README.txt"), "--label", "*=x", "--out", tmp_path / "m.csv") == EXIT_USAGE
    assert "no slides found" in capsys.readouterr().err


def test_predict_root_without_a_manifest_exits_2(tmp_path, capsys):
    assert main(["predict", "--model", "m.pt", "slide.svs", "--root", str(tmp_path), "--out", str(tmp_path / "o")]) == EXIT_USAGE
    assert "--root applies to --manifest" in capsys.readouterr().err


def test_predict_reads_a_manifest_against_the_root_given_at_run_time(tmp_path_factory, tmp_path):
    model, cohort_manifest = trained_model(tmp_path_factory.getbasetemp())
    here = tmp_path / "here"
    copy_slide(cohort_slides(cohort_manifest)[0], here / "slides" / "a.tiff")
    manifest = tmp_path / "shared" / "m.csv"
    assert run(here / "slides", "--label", "*=positive", "--root", here, "--out", manifest) == EXIT_OK
    there = tmp_path / "there"
    here.rename(there)  # the same slides on another machine
    out = tmp_path / "out"
    argv = [
        "predict",
        "--model",
        str(model),
        "--manifest",
        str(manifest),
        "--root",
        str(there),
        "--out",
        str(out),
        "--scheduler",
        "threads",
    ]
    assert main(argv) == EXIT_OK
    assert [(r["slide_id"], r["path"], r["status"]) for r in read_predictions(out / "predictions.csv")] == [
        ("a", str(there / "slides" / "a.tiff"), "ok")
    ]
