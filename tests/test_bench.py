"""`wsi-ats bench`: runs the checkout's ``benchmarks/run.py``; every script runs small (``--quick``) and writes JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wsi_ats.cli import main
from wsi_ats.exit_codes import EXIT_OK, EXIT_USAGE

REPO = Path(__file__).resolve().parents[1]
#: Every benchmark script: the folder's Python files but the shared harness, the runner and `peers` (helpers `fetch.py` imports).
SCRIPTS = sorted(p.stem for p in (REPO / "benchmarks").glob("*.py") if p.stem not in ("harness", "run", "peers"))


@pytest.mark.slow
def test_every_benchmark_runs_quick_and_writes_json(tmp_path):
    assert main(["bench", "--quick", "--out", str(tmp_path), "--root", str(REPO)]) == EXIT_OK

    readme = (tmp_path / "README.md").read_text(encoding="utf-8")
    for name in SCRIPTS:
        assert f"[{name}]({name}.json)" in readme
        result = json.loads((tmp_path / f"{name}.json").read_text(encoding="utf-8"))
        assert isinstance(result, dict) and result.get("summary"), name


def test_one_benchmark_runs_from_a_subfolder_of_the_checkout_and_fills_the_readme(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO / "tests")
    assert main(["bench", "read_region", "--quick", "--out", str(tmp_path)]) == EXIT_OK
    readme = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "[read_region](read_region.json)" in readme and "not run" in readme  # the others keep their rows
    assert json.loads((tmp_path / "read_region.json").read_text(encoding="utf-8"))["summary"]


def test_an_unknown_benchmark_name_is_a_usage_error(tmp_path, capfd):
    assert main(["bench", "no_such_benchmark", "--quick", "--out", str(tmp_path), "--root", str(REPO)]) == EXIT_USAGE
    assert "no_such_benchmark" in capfd.readouterr().err
    assert not (tmp_path / "README.md").exists()


def test_outside_a_checkout_bench_exits_2_saying_benchmarks_ship_with_the_source_tree(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--quick"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "benchmarks ship with the source tree" in err and len(err.strip().splitlines()) == 1


def test_a_root_that_is_not_a_checkout_exits_2(tmp_path, capsys):
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "run.py").write_text("raise SystemExit(0)\n")  # not wsi-ats's: no package beside it
    assert main(["bench", "--root", str(tmp_path)]) == EXIT_USAGE
    assert str(tmp_path) in capsys.readouterr().err
