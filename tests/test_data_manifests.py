"""The commands ``data_manifests/README.md`` documents, run on small synthetic slides named like the real data.

Each ``wsi-ats manifest`` command is taken from the README as written; ``/data/...`` is
moved under a temporary folder and ``--out`` into it. A manifest committed under the same
name (``example.csv``) must come out byte for byte, so the examples cannot drift from the code.
"""

from __future__ import annotations

import csv
import re
import shlex
from pathlib import Path

import pytest

from wsi_ats.cli import EXIT_OK, main
from wsi_ats.manifest import ManifestRow, read_manifest
from wsi_ats.readers import open_slide

REPO = Path(__file__).resolve().parent.parent
FOLDER = REPO / "data_manifests"


def documented_commands() -> list[list[str]]:
    """The ``wsi-ats manifest`` commands of the README's bash blocks, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", (FOLDER / "README.md").read_text(), flags=re.DOTALL)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [shlex.split(line) for line in lines if line.startswith("wsi-ats manifest ")]


def example_slide_ids() -> list[str]:
    with (FOLDER / "example_labels.csv").open() as f:
        return [r["slide_id"] for r in csv.DictReader(f)]


#: What each documented folder holds, by name (a few slides of each kind).
LAYOUTS = {
    "/data/camelyon16/training": [f"normal/normal_{i:03d}.tif" for i in range(1, 7)] + [f"tumor/tumor_{i:03d}.tif" for i in range(1, 5)],
    "/data/example/slides": [f"{sid}.tiff" for sid in example_slide_ids()],
    "/data/tcga-brca": [
        f"TCGA-{site}-{patient}-{sample}-{portion}.svs"
        for site, patient in [("A1", "0001"), ("A2", "0002"), ("B6", "0003"), ("B6", "0004"), ("C8", "0005"), ("E2", "0006")]
        for sample, portion in [("01Z", "00-DX1"), ("01A", "01-TS1"), ("11A", "01-BS1")]
    ],
}
COMMANDS = documented_commands()


@pytest.fixture(scope="module")
def slide_bytes(tmp_path_factory) -> bytes:
    """One small real pyramidal TIFF; every slide of the layouts is a copy of it."""
    from wsi_ats.synth import make_slide

    path = tmp_path_factory.mktemp("slide") / "slide.tiff"
    make_slide(path, 512, positive=False, seed=0)
    return path.read_bytes()


def test_the_readme_documents_one_command_per_layout():
    assert sorted(cmd[2] for cmd in COMMANDS) == sorted(LAYOUTS)


def run_documented(command: list[str], slide_bytes: bytes, tmp_path: Path, monkeypatch) -> list[ManifestRow]:
    """Lay out the command's folder under ``tmp_path``, run it there, and read its manifest back against its root."""
    for name in LAYOUTS[command[2]]:
        path = tmp_path / command[2].lstrip("/") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(slide_bytes)
    argv = [str(tmp_path / a.lstrip("/")) if a.startswith("/data/") else a for a in command[1:]]
    out = tmp_path / Path(argv[argv.index("--out") + 1]).name
    argv[argv.index("--out") + 1] = str(out)
    monkeypatch.chdir(REPO)  # the README's relative paths (--labels) are from the repository root
    assert main(argv) == EXIT_OK
    root = Path(argv[argv.index("--root") + 1])
    rows = read_manifest(out, root=root)  # also refuses a case in two splits
    assert all(Path(r.path).is_file() and Path(r.path).is_relative_to(root) for r in rows)
    return rows


def only(folder: str) -> list[str]:
    (command,) = [c for c in COMMANDS if c[2] == folder]
    return command


@pytest.mark.parametrize("command", COMMANDS, ids=[Path(c[c.index("--out") + 1]).stem for c in COMMANDS])
def test_a_documented_command_lists_every_slide_and_matches_its_committed_manifest(command, slide_bytes, tmp_path, monkeypatch):
    rows = run_documented(command, slide_bytes, tmp_path, monkeypatch)
    assert len(rows) == len(LAYOUTS[command[2]])
    with open_slide(rows[0].path) as slide:
        assert slide.levels[0].shape == (512, 512)
    committed = REPO / command[command.index("--out") + 1]
    if committed.exists():
        assert (tmp_path / committed.name).read_text() == committed.read_text()


def test_camelyon16_slides_are_labelled_by_their_names(tmp_path, monkeypatch, slide_bytes):
    command = only("/data/camelyon16/training")
    rows = run_documented(command, slide_bytes, tmp_path, monkeypatch)
    assert {r.slide_id: r.label for r in rows} == {Path(n).stem: "negative" if "normal" in n else "positive" for n in LAYOUTS[command[2]]}
    assert {r.split for r in rows} == {"train", "val"}


def test_a_tcga_patients_tumour_and_normal_slides_share_a_split(tmp_path, monkeypatch, slide_bytes):
    rows = run_documented(only("/data/tcga-brca"), slide_bytes, tmp_path, monkeypatch)
    patient = [r for r in rows if r.case_id == "TCGA-A1-0001"]
    assert sorted(r.label for r in patient) == ["normal", "tumor", "tumor"]
    assert len({r.split for r in patient}) == 1
    assert len({r.case_id for r in rows}) == 6


def test_the_committed_example_reads_back_against_a_root():
    rows = read_manifest(FOLDER / "example.csv", root="/data/example")
    assert [r.slide_id for r in rows] == example_slide_ids()
    assert rows[0].path == "/data/example/slides/p01-a.tiff"
