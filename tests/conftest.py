"""Shared fixtures: the known image and its pyramid written once per session into every format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.register_assert_rewrite("wsi_ats.testing")  # before the contract is imported: pytest's assertion messages

from slide_factories import write_all  # noqa: E402 - after the assert-rewrite registration

from wsi_ats.testing.known_image import known_levels  # noqa: E402


@pytest.fixture(scope="session")
def known_pyramid() -> list[np.ndarray]:
    """The known image at downsamples 1, 4, 16 (`wsi_ats.testing.known_image.DOWNSAMPLES`), read-only."""
    return list(known_levels())


@pytest.fixture(scope="session")
def known_image(known_pyramid) -> np.ndarray:
    """Level 0 of the known pyramid, ``1024 x 1536 x 3`` uint8."""
    return known_pyramid[0]


@pytest.fixture(scope="session")
def slide_paths(tmp_path_factory, known_pyramid) -> dict[str, Path]:
    """Format name -> path of the known pyramid in that format (see `slide_factories.write_all`)."""
    return write_all(tmp_path_factory.mktemp("slides"), known_pyramid)
