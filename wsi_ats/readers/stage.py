"""Staging: a slide behind a URL downloaded whole into a local folder once, then read from disk.

Why: OpenSlide reads local files only (NDPI, MRXS, DICOM, SVS through OpenSlide, ...), and a
slide read again and again (reruns, every worker of a long job) is cheaper downloaded once.
`open_slide(url, stage=DIR)` (``--stage DIR``) stages every URL it is given; without it, TIFF
and zarr are read by byte range and OpenSlide-only formats are refused with a hint to stage.

What is downloaded for a URL: the object; every object under it when it is a folder (a zarr
store, a DICOM series: buckets list their folders, plain HTTP servers do not, so a folder there
is refused); for a MIRAX ``.mrxs``, also the same-named folder beside it (its
``Slidedat.ini`` and data files), which OpenSlide needs.

Layout of ``DIR`` (one folder per URL, one per version of what it names)::

    DIR/<name>-<digest of the URL>/<digest of the version>/<name>   the object (or folder) under its own name
    DIR/<name>-<digest of the URL>.lock                           held while it is staged

The version is every object's size and ETag (else modification time): a file staged for the
same version is reused without a byte downloaded; a changed object is staged again and the
older version removed. A download goes to a temporary folder and is renamed into place only
when every object arrived whole, so a folder that exists is complete; a file lock per URL
makes concurrent runs and workers on one machine download it once and never see half a file.
Workers of a cluster stage into their own ``DIR`` (a local disk each).

Downloads are counted as reads of the URL (`remote.read_stats`): a prediction row's
``bytes_read`` is the download, 0 when the staged copy was reused.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from wsi_ats.readers.base import SlideError
from wsi_ats.readers.remote import object_version, record_read, url_errors, url_to_fs

#: Seconds a process waits for another to finish staging the same URL before giving up.
LOCK_TIMEOUT = 3600.0


@dataclass(frozen=True)
class RemoteObject:
    """One object to download: its filesystem path, where it goes under the staged name, its size and version."""

    path: str
    relative: str
    size: int
    version: str | None


@dataclass(frozen=True)
class Staged:
    """A staged URL: the local ``path`` to open and the bytes this call downloaded (0 when reused)."""

    url: str
    path: Path
    downloaded: int


def stage(url: str, folder: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> Staged:
    """Download what ``url`` names into ``folder`` unless its current version is there already; see the module docstring.

    A missing object is a `FileNotFoundError` naming the URL; a denied, unreachable or
    short download a `SlideError`.
    """
    from filelock import FileLock, Timeout

    fs, root = url_to_fs(url, storage_options)
    name = PurePosixPath(root.rstrip("/")).name or "slide"
    with url_errors(url):
        objects = _objects(url, fs, root.rstrip("/"), name)
    home = Path(folder) / f"{name}-{_digest(url)}"
    final = home / _digest(*(f"{o.relative}\0{o.size}\0{o.version}" for o in objects))
    if final.is_dir():  # renamed into place only once complete
        return Staged(url, final / name, 0)
    home.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(f"{home}.lock", timeout=LOCK_TIMEOUT):
            if final.is_dir():  # another process staged it while this one waited
                return Staged(url, final / name, 0)
            downloaded = _download(url, fs, objects, home, final)
            for old in home.iterdir():  # older versions of this URL
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
    except Timeout as err:
        raise SlideError(f"{url}: another process has been staging it into {home} for {LOCK_TIMEOUT:g} s; is it stuck?") from err
    return Staged(url, final / name, downloaded)


def _objects(url: str, fs: Any, root: str, name: str) -> list[RemoteObject]:
    """What to download for ``url``: the object, a folder's objects, or a MIRAX file and its folder."""
    info = fs.info(root)
    if info.get("type") == "directory":
        objects = _folder(fs, root, name)
        if not objects:
            raise SlideError(f"{url}: an empty folder; nothing to stage")
        return objects
    if str(info.get("mimetype", "")).startswith("text/html"):  # a web server's page: a folder's index, not a slide
        raise SlideError(
            f"{url}: the server answers with a web page (a folder over plain HTTP, which has no listing to stage it by); "
            "stage it from a bucket URL (s3://, gs://, ...) or copy it to a local disk"
        )
    objects = [RemoteObject(root, name, int(info["size"]), object_version(info))]
    if name.lower().endswith(".mrxs"):
        data = root[: -len(".mrxs")]
        extra = _folder(fs, data, PurePosixPath(data).name) if fs.isdir(data) else []
        if not extra:
            raise SlideError(
                f"{url}: a MIRAX slide needs its data folder {PurePosixPath(data).name}/ beside the .mrxs file, and there is none"
            )
        objects += extra
    return objects


def _folder(fs: Any, root: str, name: str) -> list[RemoteObject]:
    found = fs.find(root, detail=True)
    return [
        RemoteObject(path, f"{name}/{path[len(root) :].lstrip('/')}", int(info["size"]), object_version(info))
        for path, info in sorted(found.items())
        if info.get("type", "file") == "file"
    ]


def _download(url: str, fs: Any, objects: list[RemoteObject], home: Path, final: Path) -> int:
    """Every object into a temporary folder beside ``final``, checked whole, then renamed to ``final``; bytes downloaded."""
    temp = Path(tempfile.mkdtemp(prefix=".download-", dir=home))
    try:
        total = 0
        for obj in objects:
            local = temp / obj.relative
            local.parent.mkdir(parents=True, exist_ok=True)
            with url_errors(url):
                fs.get_file(obj.path, str(local))
            got = local.stat().st_size
            record_read(url, got)
            total += got
            if got != obj.size:
                raise SlideError(f"{url}: download of {obj.relative} stopped at {got} of {obj.size} bytes; try again")
        os.rename(temp, final)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return total


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0\0".join(parts).encode()).hexdigest()[:16]
