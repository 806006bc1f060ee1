"""Byte access to slide files, local or behind a URL, with byte accounting.

Attention sampling reads a small part of a slide: the low level and the tiles under
the sampled patches. Over object storage that saving is real only when a read asks
for exactly those bytes, so the TIFF backend reads through a `ByteSource`:

- `LocalBytes`: ``os.pread`` on an open file (thread-safe, releases the GIL);
- `RemoteBytes`: an fsspec filesystem (``s3://``, ``gs://``, ``https://``, ...) read by
  byte range: the TIFF header and tile offsets through a buffered stream (`stream`),
  then the tiles' ranges, those that touch merged into one request (`touching_spans`),
  several in flight at once (`read_many`, fsspec's ``cat_ranges``, concurrent on the async
  filesystems).

Every read is counted per source (`read_stats`), in this process: a prediction row
reports the bytes its slide cost (`wsi_ats.pipeline`). Zarr stores are counted the
same way by `counting_store`.

Credentials and endpoints are fsspec's: ``storage_options`` in the Python API
(they travel with a pickled slide to dask workers), else the usual environment
(``AWS_*`` variables, ``FSSPEC_S3_ENDPOINT_URL``, ...), never a manifest.
"""

from __future__ import annotations

import bisect
import datetime
import errno
import io
import math
import os
import threading
from collections.abc import Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from wsi_ats.readers.base import SlideError
from wsi_ats.readers.handles import file_key
from wsi_ats.readers.remote_cache import ReadCache, caching_store, uncached_warning

#: Bytes of prefetched ranges a remote source holds until they are read.
PREFETCH_LIMIT = 256 * 1024 * 1024
#: Read size of the buffered stream tifffile parses headers through: IFDs and tag values come
#: in a few requests instead of one per tag. Small, as IFDs lie between the levels' data: on a
#: 3-level synthetic TIFF, 256 KiB blocks read 1.4 MB of header in 8 requests, 16 KiB 160 kB in 10.
HEADER_BLOCK = 16 * 1024
#: Most bytes of one request made of touching ranges (`touching_spans`): large enough for a row
#: of tiles, small enough that a fetch still spreads over several requests in flight.
SPAN_LIMIT = 8 * 1024 * 1024


def is_url(source: str) -> bool:
    """Whether ``source`` names a URL (``scheme://...``) rather than a local path."""
    return "://" in source


def url_to_fs(url: str, storage_options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """The fsspec filesystem and in-filesystem path of ``url``; an unknown protocol is a `SlideError`."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url, **(storage_options or {}))
    except (ImportError, ValueError) as err:  # unknown protocol, or its filesystem package is missing
        raise SlideError(f"{url}: cannot open this URL: {err}") from err


def object_version(info: dict[str, Any]) -> str | None:
    """What changes when an object is rewritten: its ETag, else its modification time; None when the server says neither.

    From ``fs.info`` or ``fs.find(detail=True)`` (S3 gives the ETag in both, HTTP servers an
    ``ETag`` or ``Last-Modified`` header, local files an ``mtime``).
    """
    for name in ("ETag", "etag", "LastModified", "Last-Modified", "mtime", "updated"):
        value = info.get(name)
        if value:
            return str(value.timestamp()) if isinstance(value, datetime.datetime) else str(value)
    return None


@contextmanager
def url_errors(url: str) -> Iterator[None]:
    """Translate what a server says into one clear error naming ``url``: missing, denied, unreachable."""
    try:
        yield
    except FileNotFoundError as err:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), url) from err
    except SlideError:
        raise
    except PermissionError as err:
        raise SlideError(f"{url}: access denied ({err}); check the credentials (storage_options, or AWS_* in the environment)") from err
    except OSError as err:  # unreachable, ...
        raise SlideError(f"{url}: cannot read: {err}") from err


# -- accounting ----------------------------------------------------------------
@dataclass(frozen=True)
class ReadStats:
    """Bytes read and read requests made for one source, in this process."""

    bytes: int = 0
    requests: int = 0

    def __sub__(self, other: ReadStats) -> ReadStats:
        return ReadStats(self.bytes - other.bytes, self.requests - other.requests)


_STATS: dict[str, ReadStats] = {}
_STATS_LOCK = threading.Lock()


def record_read(source: str, nbytes: int, requests: int = 1) -> None:
    """Count ``requests`` reads of ``nbytes`` in all against ``source``."""
    with _STATS_LOCK:
        old = _STATS.get(source, ReadStats())
        _STATS[source] = ReadStats(old.bytes + nbytes, old.requests + requests)


def read_stats(source: str) -> ReadStats:
    """What this process has read of ``source`` so far (compare two calls to measure one job)."""
    with _STATS_LOCK:
        return _STATS.get(source, ReadStats())


def source_size(source: str, storage_options: dict[str, Any] | None = None) -> int | None:
    """Bytes a source holds (a file, or every file of a zarr store); None when it cannot be listed cheaply.

    A folder behind plain HTTP(S) has no listing API (fsspec would walk its HTML index, a
    request per file): its size is None.
    """
    try:
        if is_url(source):
            fs, path = url_to_fs(source, storage_options)
            info = fs.info(path)
            if info.get("type") != "directory":
                return int(info["size"])
            return None if source.startswith(("http://", "https://")) else int(fs.du(path, total=True))
        if os.path.isdir(source):
            return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(source) for f in files)
        return os.path.getsize(source)
    except (OSError, SlideError):
        return None


# -- byte sources --------------------------------------------------------------
class ByteSource:
    """Random access to a file's bytes; reads are counted under ``name``."""

    name: str
    size: int
    #: Identity of the file's current version (changes when it is rewritten).
    key: Hashable

    def read(self, offset: int, size: int) -> bytes:
        return self.read_many([(offset, size)])[0]

    def read_many(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """``(offset, count)`` ranges, in order; a range past the end comes back short."""
        raise NotImplementedError

    def stream(self) -> io.BufferedIOBase:
        """A seekable binary file over the bytes, for parsers (tifffile)."""
        raise NotImplementedError

    def prefetch(self, ranges: Sequence[tuple[int, int]]) -> None:
        """A hint that these ranges are read next (a remote source fetches them now, all in one round)."""

    def close(self) -> None:
        pass


class LocalBytes(ByteSource):
    def __init__(self, path: str) -> None:
        self.name = path
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 -- held open for reads; `close` closes it
        self.key = file_key(path)
        self.size = self.key[2]

    def read_many(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        out = [os.pread(self._file.fileno(), n, offset) for offset, n in ranges]
        record_read(self.name, sum(map(len, out)), len(out))
        return out

    def stream(self) -> io.BufferedIOBase:
        return io.BufferedReader(_Counted(self), HEADER_BLOCK)

    def close(self) -> None:
        self._file.close()


def touching_spans(ranges: Sequence[tuple[int, int]], limit: int = SPAN_LIMIT) -> list[tuple[int, int]]:
    """``[start, end)`` ranges merged where they touch or overlap (up to ``limit`` bytes a span), sorted.

    A TIFF stores a row's tiles one after the other, so the tiles of a patch or a region in
    one row are one request instead of several: fewer requests (each costs a round trip and,
    on S3, a fee), and not one byte more.
    """
    spans: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if spans and start <= spans[-1][1] and max(end, spans[-1][1]) - spans[-1][0] <= limit:
            spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
        else:
            spans.append((start, end))
    return spans


class RemoteBytes(ByteSource):
    """An object behind a URL, read by byte range.

    `prefetch` fetches ranges ahead (several requests in flight) and keeps them until read
    once, up to `PREFETCH_LIMIT` bytes (beyond that, ranges are fetched again when read).
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None, cache: str | os.PathLike[str] | None = None) -> None:
        self.name = url
        self.fs, self.path = url_to_fs(url, storage_options)
        info = self.fs.info(self.path)
        if info.get("type") == "directory":
            raise SlideError(f"{url}: a folder, not a slide file")
        self.size = int(info["size"])
        version = object_version(info)
        self.key = (url, self.size, str(version))
        #: Ranges kept on disk (`wsi_ats.readers.remote_cache`), for this version of the object only.
        self.cache: ReadCache | None = None
        if cache is not None and version is None:
            uncached_warning(url)
        elif cache is not None:
            self.cache = ReadCache(cache, *self.key)
        self._ahead: dict[tuple[int, int], bytes] = {}
        self._ahead_bytes = 0
        self._lock = threading.Lock()

    def prefetch(self, ranges: Sequence[tuple[int, int]]) -> None:
        with self._lock:
            wanted = [r for r in dict.fromkeys(ranges) if r not in self._ahead]
        for r, data in zip(wanted, self._fetch(wanted)):
            with self._lock:
                if self._ahead_bytes + len(data) <= PREFETCH_LIMIT:
                    self._ahead[r] = data
                    self._ahead_bytes += len(data)

    def read_many(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        with self._lock:
            found = {r: self._ahead.pop(r) for r in ranges if r in self._ahead}
            self._ahead_bytes -= sum(map(len, found.values()))
        fetched = iter(self._fetch([r for r in ranges if r not in found]))
        return [found[r] if r in found else next(fetched) for r in ranges]

    def _fetch(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """The ranges from the cache where it has them, the rest from the server (counted) in one round."""
        cache = self.cache
        found = {}
        if cache is not None:
            found = {r: cache.get(f"{r[0]}-{r[1]}", self._length(r)) for r in dict.fromkeys(ranges)}
            found = {r: data for r, data in found.items() if data is not None}
        wanted = list(dict.fromkeys(r for r in ranges if r not in found))
        if wanted:
            spans = touching_spans([(offset, offset + self._length((offset, n))) for offset, n in wanted])
            out = self.fs.cat_ranges([self.path] * len(spans), [s for s, _ in spans], [e for _, e in spans], on_error="raise")
            record_read(self.name, sum(map(len, out)), len(out))
            for r in wanted:
                k = bisect.bisect_right(spans, (r[0], math.inf)) - 1  # the span holding the range
                data = out[k][r[0] - spans[k][0] : r[0] - spans[k][0] + self._length(r)]
                found[r] = data
                if cache is not None and len(data) == self._length(r):
                    cache.put(f"{r[0]}-{r[1]}", data)
        return [found[r] for r in ranges]

    def _length(self, r: tuple[int, int]) -> int:
        """Bytes of the range ``(offset, count)`` that lie inside the object."""
        return max(0, min(r[0] + r[1], self.size) - r[0])

    def stream(self) -> io.BufferedIOBase:
        return io.BufferedReader(_Counted(self), HEADER_BLOCK)


class _Counted(io.RawIOBase):
    """A raw, seekable file whose reads are `ByteSource.read` calls (so they are counted)."""

    def __init__(self, source: ByteSource) -> None:
        self._source, self._pos = source, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._source.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._source.size - self._pos)
        if n <= 0:
            return 0
        data = self._source.read(self._pos, n)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


def open_bytes(source: str, storage_options: dict[str, Any] | None = None, cache: str | os.PathLike[str] | None = None) -> ByteSource:
    """A `ByteSource` for a local path or a URL (whose reads ``cache``, a folder, keeps: `wsi_ats.readers.remote_cache`)."""
    return RemoteBytes(source, storage_options, cache) if is_url(source) else LocalBytes(source)


def source_key(source: str, storage_options: dict[str, Any] | None = None) -> Hashable:
    """The current version's identity without keeping anything open (one HEAD request for a URL)."""
    return RemoteBytes(source, storage_options).key if is_url(source) else file_key(source)


# -- zarr ----------------------------------------------------------------------
def counting_store(source: str, storage_options: dict[str, Any] | None = None, cache: str | os.PathLike[str] | None = None) -> Any:
    """A read-only zarr store over a local folder or URL whose reads are counted under ``source``.

    ``cache``: a folder keeping what is read from a URL (`wsi_ats.readers.remote_cache`); hits are not counted.
    """
    from zarr.storage import FsspecStore, LocalStore, WrapperStore

    class _CountingStore(WrapperStore):
        def _with_store(self, store: Any) -> _CountingStore:
            return _CountingStore(store)

        async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
            buf = await self._store.get(key, prototype, byte_range)
            if buf is not None:
                record_read(source, len(buf))
            return buf

        async def get_partial_values(self, prototype: Any, key_ranges: Iterable[tuple[str, Any]]) -> list[Any]:
            bufs = await self._store.get_partial_values(prototype, key_ranges)
            found = [b for b in bufs if b is not None]
            record_read(source, sum(len(b) for b in found), len(found))
            return bufs

    if not is_url(source):
        return _CountingStore(LocalStore(source, read_only=True))
    fs, root = url_to_fs(source, storage_options)  # a clear error for an unknown protocol
    store = _CountingStore(FsspecStore.from_url(source, storage_options=storage_options, read_only=True))
    return store if cache is None else caching_store(store, cache, source, fs, root)
