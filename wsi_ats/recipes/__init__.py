"""The TOML recipes the CLI names, shipped inside the package so an installed wsi-ats has them.

The files live in the checkout's ``pipelines/`` folder, where users read and copy them;
this package holds a symlink to each, which a wheel build copies as a plain file (package
data). So a checkout, an editable install and a wheel all see the same recipes here, and
``wsi-ats train --config synthetic_wsi`` works with no source tree.
"""

from __future__ import annotations

import os
from pathlib import Path

SUFFIX = ".toml"
_HERE = Path(__file__).parent


def available() -> tuple[str, ...]:
    """The names of the shipped recipes, sorted."""
    return tuple(sorted(p.name.removesuffix(SUFFIX) for p in _HERE.glob(f"*{SUFFIX}")))


def path(name: str) -> Path:
    """The file of the shipped recipe ``name`` (e.g. ``"synthetic_wsi"``); `FileNotFoundError` lists the others."""
    stem = name.removesuffix(SUFFIX)
    file = _HERE / f"{stem}{SUFFIX}"
    if Path(stem).name != stem or not file.is_file():  # a bare name: nothing outside this folder
        raise FileNotFoundError(f"{name}: no shipped recipe of that name; shipped: {', '.join(available())}")
    return file


def resolve(config: str | os.PathLike[str]) -> Path:
    """A recipe given as a file path, or else as the name of a shipped one: the file to read.

    A file that exists wins, so a local ``synthetic_wsi.toml`` is read rather than the shipped one.
    """
    given = Path(config)
    if given.is_file():
        return given
    try:
        return path(os.fspath(config))
    except FileNotFoundError:
        raise FileNotFoundError(f"{config}: recipe not found: neither a file nor a shipped recipe ({', '.join(available())})") from None
