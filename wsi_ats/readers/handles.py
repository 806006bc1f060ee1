"""Per-process LRU caches of open slide handles.

Slides pickle as their source, so a dask worker reopens the same path for every
task; parsing a pyramid (TIFF directories, OpenSlide's open, zarr metadata) each
time would dominate small reads. Each backend keeps its parsed handles here,
keyed by `file_key` so that a file rewritten on disk is parsed again.

Eviction only drops the cache's reference: a handle closes (its finalizer runs)
once the last read borrowing it returns, so a read in flight on another thread
never sees its file closed under it.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import numpy as np

from wsi_ats.readers.base import SlideError

H = TypeVar("H")

#: ``(real path, mtime in ns, size)``: a file's identity as far as the caches care.
FileKey = tuple[str, int, int]


def file_key(path: str) -> FileKey:
    """Identity of the file now on disk at ``path``; changes when it is rewritten."""
    st = os.stat(path)
    return os.path.realpath(path), st.st_mtime_ns, st.st_size


def check_unchanged(path: str, key: FileKey) -> None:
    """Refuse to reopen a file rewritten since its slide read the metadata (levels would not match)."""
    if file_key(path) != key:
        raise SlideError(f"{path}: changed on disk since it was opened")


class HandleCache(Generic[H]):
    """A bounded, thread-safe LRU mapping keys to open handles."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[Hashable, H] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, open_: Callable[[], H]) -> H:
        """The handle cached under ``key``, opening it with ``open_()`` on a miss.

        Opening runs outside the lock (it may take a while); when two threads race,
        the first handle stored wins and the other is dropped.
        """
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        handle = open_()
        with self._lock:
            handle = self._items.setdefault(key, handle)
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return handle

    def discard(self, key: Hashable, handle: H | None = None) -> None:
        """Forget ``key`` (only if it still maps to ``handle``, when given): the next `get` reopens."""
        with self._lock:
            if key in self._items and (handle is None or self._items[key] is handle):
                del self._items[key]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class PixelCache:
    """A byte-bounded LRU of decoded pixels (read-only arrays) shared by the readers of a process."""

    def __init__(self, budget: int) -> None:
        self.budget, self.used = budget, 0
        self._items: OrderedDict[Hashable, tuple[object, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> np.ndarray | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[1]

    def put(self, key: Hashable, pixels: np.ndarray, owner: object = None) -> None:
        """Keep ``pixels`` under ``key``; ``owner`` (kept alive with them) lets a key hold ``id(owner)`` safely."""
        pixels.flags.writeable = False  # shared by every later read
        with self._lock:
            if key not in self._items:
                self._items[key] = (owner, pixels)
                self.used += pixels.nbytes
            while self.used > self.budget:
                self.used -= self._items.popitem(last=False)[1][1].nbytes


#: Decoded pixels of *small* levels (at most `SMALL_LEVEL_BYTES` decoded) kept per process, up to
#: 256 MiB in all: a prediction reads its low levels several times (tissue mask, overlapping
#: attention windows, the heatmap's thumbnail), and over a URL each read would cost the bytes
#: again. Full-resolution levels, read once per patch, are never kept.
SMALL_LEVEL_BYTES = 64 << 20
SMALL_PIXELS = PixelCache(256 << 20)
