"""What importing ``wsi_ats`` does to the process: OpenMP's wait policy, and nothing heavy."""

from __future__ import annotations

import os
import subprocess
import sys

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


def test_the_package_does_not_import_its_test_helpers_or_pytest():
    show = "import sys, wsi_ats, wsi_ats.cli, wsi_ats.readers; print(sorted(m for m in sys.modules if m.startswith(('pytest', 'wsi_ats.testing'))))"
    assert subprocess.run([sys.executable, "-c", show], capture_output=True, text=True, check=True).stdout.strip() == "[]"
