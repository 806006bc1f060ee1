"""The package as installed: what importing it does to the process, and what its wheel holds and runs with no source tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

SHOW = "import wsi_ats, os, sys; print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"


def run(env_policy: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_policy is not None:
        env["OMP_WAIT_POLICY"] = env_policy
    return subprocess.run([sys.executable, "-c", SHOW], env=env, capture_output=True, text=True, check=True).stdout.strip()


def test_importing_the_package_makes_openmp_threads_wait_passively_without_importing_torch():
    assert run(None) == "PASSIVE False"


@pytest.mark.parametrize("policy", ["ACTIVE", "passive"])
def test_a_wait_policy_the_user_set_is_kept(policy):
    assert run(policy) == f"{policy} False"


# -- the wheel: what `pip install wsi-ats` gets, with no source tree ------------------------------

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources (so the build leaves nothing in the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src)
    for folder in ("wsi_ats", "pipelines"):  # symlinks kept: wsi_ats/recipes/*.toml point into pipelines/
        shutil.copytree(REPO / folder, src / folder, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(src)]
    subprocess.run(pip, check=True, capture_output=True)
    return next(out.glob("*.whl"))


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True, capture_output=True
    )
    return target


def test_the_wheel_ships_the_recipes_as_files_and_no_benchmark_harness(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        shipped = {n.removeprefix("wsi_ats/recipes/") for n in names if n.startswith("wsi_ats/recipes/") and n.endswith(".toml")}
        assert shipped == {p.name for p in (REPO / "pipelines").glob("*.toml")}
        assert z.read("wsi_ats/recipes/synthetic_wsi.toml") == (REPO / "pipelines" / "synthetic_wsi.toml").read_bytes()
    assert not [n for n in names if n.startswith(("wsi_ats/bench", "benchmarks/"))]


def test_the_installed_package_works_from_another_folder(installed, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(installed)}
    code = (
        "import wsi_ats, wsi_ats.recipes as r; from wsi_ats.models import load_config;"
        "print(wsi_ats.__file__); print(load_config(r.path('synthetic_wsi')).model.n_patches)"
    )
    where, n_patches = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert Path(where).is_relative_to(installed) and int(n_patches) > 0
    demo = subprocess.run(
        [sys.executable, "-m", "wsi_ats.cli", "demo", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    assert "--out" in demo.stdout


def test_the_package_does_not_import_its_test_helpers_or_pytest():
    show = (
        "import sys, wsi_ats, wsi_ats.cli, wsi_ats.readers; "
        "print(sorted(m for m in sys.modules if m.startswith(('pytest', 'wsi_ats.testing'))))"
    )
    assert subprocess.run([sys.executable, "-c", show], capture_output=True, text=True, check=True).stdout.strip() == "[]"
