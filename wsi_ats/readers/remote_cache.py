"""A disk cache of the bytes read from URLs, for slides read again: training epochs, reruns, evaluation.

`open_slide(url, remote_cache=DIR)` (``--remote-cache DIR``): the TIFF backend's byte ranges
(the header's blocks, each tile's bytes) and a zarr store's objects (metadata, chunks) are
kept in ``DIR`` as they arrive, and a later read of the same range from any process is served
from disk instead of the server. Unlike staging (`wsi_ats.readers.stage`) only what was read
is kept: a few percent of a slide for attention sampling.

Never stale: entries are keyed by the object's URL and version (size and ETag, else its
modification time), read once when the slide is opened (a HEAD for a TIFF, a listing of the
store for zarr), so a rewritten object is read afresh. An object whose server states no
version is not cached (a warning says so). Entries are written under a temporary name and
renamed, so concurrent processes share a cache without locks and never read half an entry.
Bytes served from the cache are not counted in `remote.read_stats`: ``bytes_read`` stays
what came from the server. Nothing is evicted: delete the folder to reclaim the space.

Layout: ``DIR/<digest of URL and version>/<offset>-<count>`` for a TIFF's ranges,
``DIR/<digest of URL and version>/<digest of the key and range>`` for a zarr store's objects.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class ReadCache:
    """The cached ranges of one version of one object (or of one zarr store's objects)."""

    def __init__(self, folder: str | os.PathLike[str], *identity: object) -> None:
        self.folder = Path(folder) / digest(*identity)

    def get(self, name: str, size: int | None = None) -> bytes | None:
        """The entry ``name`` (None when absent, or not ``size`` bytes long)."""
        try:
            data = (self.folder / name).read_bytes()
        except FileNotFoundError:
            return None
        return data if size is None or len(data) == size else None

    def put(self, name: str, data: bytes) -> None:
        """Store ``data`` as ``name``: written under a temporary name, then renamed into place."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=".part-", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(temp, self.folder / name)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise


def digest(*parts: object) -> str:
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:32]


def uncached_warning(url: str, why: str = "the server states no ETag or modification time") -> None:
    warnings.warn(f"{url}: {why}; its reads are not cached", stacklevel=3)


def caching_store(store: Any, folder: str | os.PathLike[str], url: str, fs: Any, root: str) -> Any:
    """``store`` (a zarr store at ``url``) with its objects' reads cached in ``folder``, keyed by each object's version.

    The versions come from one listing of the store (``fs.find``: a request per 1000 objects on
    S3, once per process); objects the listing lacks, or lists without a version, are read
    from the server each time.
    """
    from zarr.storage import WrapperStore

    try:
        listing = fs.find(root, detail=True)
    except (OSError, NotImplementedError, ValueError):  # a server without listings (plain HTTP)
        listing = {}
    prefix = root.rstrip("/") + "/"
    versions = {path[len(prefix) :]: _version(info) for path, info in listing.items() if path.startswith(prefix)}
    versions = {key: v for key, v in versions.items() if v is not None}
    if not versions:
        uncached_warning(url, "the store's objects cannot be listed with their ETags or modification times (plain HTTP has no listing)")
    cache = ReadCache(folder, url)

    class _CachingStore(WrapperStore):
        def _with_store(self, inner: Any) -> _CachingStore:
            return _CachingStore(inner)

        async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
            version = versions.get(key)
            if version is None:
                return await self._store.get(key, prototype, byte_range)
            name = digest(key, version, byte_range)
            data = cache.get(name)
            if data is not None:
                return prototype.buffer.from_bytes(data)
            buf = await self._store.get(key, prototype, byte_range)
            if buf is not None:
                cache.put(name, buf.to_bytes())
            return buf

        async def get_partial_values(self, prototype: Any, key_ranges: Iterable[tuple[str, Any]]) -> list[Any]:
            return [await self.get(key, prototype, byte_range) for key, byte_range in key_ranges]

    return _CachingStore(store)


def _version(info: dict[str, Any]) -> str | None:
    from wsi_ats.readers.remote import object_version

    version = object_version(info)
    return None if version is None else f"{info.get('size')}\0{version}"
