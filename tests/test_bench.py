"""`wsi-ats bench`: every benchmark script runs small (``--quick``), writes valid JSON, and the README collects them."""

from __future__ import annotations

import json

import pytest

from wsi_ats.bench import BENCHMARKS, run_benchmarks
from wsi_ats.cli import main


@pytest.mark.slow
def test_every_benchmark_runs_quick_and_writes_json(tmp_path):
    assert main(["bench", "--quick", "--out", str(tmp_path)]) == 0

    readme = (tmp_path / "README.md").read_text(encoding="utf-8")
    for bench in BENCHMARKS:
        assert bench.name in readme
        if bench.script.is_file():  # scripts still to be written are skipped with a note
            result = json.loads((tmp_path / f"{bench.name}.json").read_text(encoding="utf-8"))
            assert isinstance(result, dict) and result, bench.name


def test_unknown_benchmark_name_is_a_usage_error(tmp_path, capsys):
    assert run_benchmarks(["no_such_benchmark"], quick=True, out=tmp_path) == 2
    assert "no_such_benchmark" in capsys.readouterr().err
    assert not (tmp_path / "README.md").exists()
