"""Write-then-rename: a reader (or a rerun after ``kill -9``) sees the old file or the new one, never half.

The one way wsi-ats writes a file it means to keep (outputs, checkpoints, metrics,
annotations, benchmark results), with one policy:

- The temporary file lives in the target's own folder, so `os.replace` is a rename on one
  filesystem, which POSIX makes atomic.
- The data is flushed and fsynced before the rename, and the folder after it: after a
  crash the name points at whole data, and the rename itself is not lost.
- The file is created like a plain ``open(path, "w")`` creates one: mode ``0o666`` less the
  umask. (`tempfile.mkstemp` forces ``0o600``, which locks colleagues out of shared outputs.)
  Replacing a file does not keep the old file's mode.
- The temporary name is ``.<name>.wsi-ats-<pid>-<random>.tmp``: hidden and ending in ``.tmp``
  so folder listings and slide discovery skip it, and carrying the writer's pid so that
  `remove_stale_temps` removes only what a writer that is no longer running left behind --
  never a file it did not make, never a live writer's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".tmp"
_TAG = "wsi-ats"
_TEMP_NAME = re.compile(rf"^\..+\.{_TAG}-(?P<pid>\d+)-[0-9a-f]{{12}}{re.escape(TEMP_SUFFIX)}$")


def _temp_name(target: str) -> str:
    """A fresh temporary name, in this process's name, for writing the file named ``target``."""
    return f".{target}.{_TAG}-{os.getpid()}-{os.urandom(6).hex()}{TEMP_SUFFIX}"


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], *, durable: bool = True) -> Iterator[IO[bytes]]:
    """A binary file to stream into; it replaces ``path`` when the block ends, and vanishes if the block raises.

    For writers that want a file object (``torch.save``, ``tifffile.TiffWriter``); the
    folder must exist. ``durable=False`` skips the fsyncs (milliseconds each): for caches
    of many small files, which a reader checks and makes again when a crash of the machine
    lost one -- a killed process still leaves the old file or the new one, never half.
    """
    path = Path(path)
    tmp = path.parent / _temp_name(path.name)
    try:
        with open(tmp, "xb") as f:  # like any open(): mode 0o666 less the umask; "x": never someone else's file
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` in one step (``durable``: as `atomic_writer`)."""
    with atomic_writer(path, durable=durable) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> None:
    """``data`` as indented JSON with a final newline, atomically (metrics, benchmark results)."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def remove_stale_temps(folder: str | os.PathLike[str]) -> int:
    """Delete the temporaries that writers no longer running left in ``folder``; returns how many.

    Only regular files named by `_temp_name` count, and only those whose writer's pid is not
    a running process: a concurrent writer's file is left alone, as is anything else that
    merely looks temporary (another program's ``.x.tmp``, a folder of that name).
    """
    try:
        entries = list(Path(folder).iterdir())
    except FileNotFoundError:  # nothing was ever written there
        return 0
    removed = 0
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or _pid_running(int(match["pid"])):
            continue
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISREG(entry.lstat().st_mode):
                entry.unlink()
                removed += 1
    return removed


def _pid_running(pid: int) -> bool:
    import psutil  # only a sweep that found a candidate pays for the import

    return psutil.pid_exists(pid)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
