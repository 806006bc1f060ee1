"""The output folder ``OUT`` as a whole: created, locked for one run at a time, its problems one line each.

Two runs writing one ``OUT`` at once would each rewrite ``predictions.csv`` from their own
rows and lose the other's. `claim_output_folder` holds an advisory lock (`filelock`) on
``OUT/.wsi-ats/lock`` for the whole run; a second run is refused at once with the first
one's pid, host and start time (``OUT/.wsi-ats/owner.json``), not queued behind it for
hours. The kernel drops the lock when its holder dies, so a ``kill -9`` leaves nothing
to clean up. Every way ``OUT`` itself can fail (a file in its place, read-only, full, not
lockable) becomes an `OutputError` naming the path and the fix: a setup mistake, exit 2.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from wsi_ats.outputs.atomic import atomic_write_json, remove_stale_temps

#: OUT's own state: one hidden folder (slide folders never start with a dot, see `folder_name`).
STATE_DIR = ".wsi-ats"
LOCK_FILE, OWNER_FILE = "lock", "owner.json"


class OutputError(Exception):
    """``OUT`` cannot be used: one line naming the path, what is wrong and what to do."""


def describe_os_error(path: str | os.PathLike[str], err: OSError, doing: str) -> OutputError:
    """``"<path>: cannot <doing> (<reason>); <fix>"`` for an OS error met writing ``OUT``."""
    reason = err.strerror or str(err)
    if err.errno == errno.ENOSPC or err.errno == errno.EDQUOT:
        fix = "free some space and run again (finished slides are kept)"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make it writable or give another --out"
    elif isinstance(err, (FileExistsError, NotADirectoryError)):
        fix = "give --out a folder, not a file"
    else:
        fix = "check the folder or give another --out"
    return OutputError(f"{path}: cannot {doing} ({reason}); {fix}")


@contextlib.contextmanager
def claim_output_folder(out: str | os.PathLike[str]) -> Iterator[Path]:
    """Create ``out``, hold its lock while the block runs, and sweep temporaries dead writers left.

    Re-entrant in one thread (a command claims ``OUT`` before starting a cluster, then
    `Pipeline.run_many` claims it again); another thread or process is refused with an
    `OutputError` naming the holder.
    """
    from filelock import FileLock, Timeout

    out = Path(out)
    state = out / STATE_DIR
    try:
        out.mkdir(parents=True, exist_ok=True)
        state.mkdir(exist_ok=True)
        lock = FileLock(Path(os.path.realpath(state)) / LOCK_FILE, is_singleton=True)  # one lock object per real OUT
        lock.acquire(blocking=False)
    except Timeout:
        raise OutputError(f"{out}: in use by another wsi-ats run ({_holder(state)}); wait for it to finish or give another --out") from None
    except OSError as err:
        raise describe_os_error(out, err, "use it as the output folder") from None
    try:
        if lock.lock_counter == 1:  # the outermost claim
            try:
                remove_stale_temps(state)
                atomic_write_json(state / OWNER_FILE, _owner())
                remove_stale_temps(out)
            except OSError as err:
                raise describe_os_error(out, err, "write the output folder") from None
        yield out
    finally:
        if lock.lock_counter == 1:
            with contextlib.suppress(OSError):
                (state / OWNER_FILE).unlink()
        lock.release()


def _owner() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def _holder(state: Path) -> str:
    """``"pid 123 on host, since 2026-12-03 07:16:02"``, or what is known of it."""
    try:
        owner = json.loads((state / OWNER_FILE).read_text())
        return f"pid {owner['pid']} on {owner['host']}, since {owner['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its pid is not recorded yet"
