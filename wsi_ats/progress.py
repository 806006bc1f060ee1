"""Progress bars only where a person watches them: a terminal or a notebook, never a log file or a pipe.

A bar redraws itself with carriage returns several times a second; written to a file
(``wsi-ats train ... 2> train.log``, a cluster job's output, CI) that is megabytes of
half-lines. Every bar of wsi-ats (train, predict, synth) comes from `progress_bar`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def progress_bar(iterable: Iterable[Any] | None = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar (same arguments) drawn only when ``enabled`` and its stream is a terminal or a notebook."""
    stream = kwargs.get("file") or sys.stderr
    shown = enabled and (_is_terminal(stream) or _in_notebook())
    return tqdm(iterable, disable=not shown, **kwargs)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _in_notebook() -> bool:
    """Inside a Jupyter kernel (tqdm.auto then draws a widget, which fills no log)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})
