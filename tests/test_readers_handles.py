"""Per-process handle caches: bounded, reused on reopen, refreshed when a file changes."""

from __future__ import annotations

import gc
import os
import pickle
import weakref

import numpy as np
import tifffile
from slide_factories import write_jpeg_tiff

from wsi_ats.readers import open_slide
from wsi_ats.readers.handles import HandleCache
from wsi_ats.testing.known_image import known_pyramid


class Handle:
    """Stands in for a native handle: something with an identity and a lifetime."""


def test_get_opens_each_key_once():
    cache, opened = HandleCache(4), []

    def opener():
        opened.append(Handle())
        return opened[-1]

    first = cache.get("a", opener)
    assert cache.get("a", opener) is first and len(opened) == 1


def test_the_least_recently_used_handle_is_evicted_and_freed():
    cache = HandleCache(2)
    a = cache.get("a", Handle)
    cache.get("b", Handle)
    cache.get("a", Handle)  # "b" is now the least recently used
    cache.get("c", Handle)
    assert "a" in cache and "c" in cache and "b" not in cache and len(cache) == 2
    alive = weakref.ref(a)
    del a
    cache.get("d", Handle)
    gc.collect()
    assert alive() is None


def test_discard_spares_a_newer_handle_under_the_same_key():
    cache = HandleCache(2)
    old = cache.get("a", Handle)
    cache.discard("a")
    new = cache.get("a", Handle)
    cache.discard("a", old)
    assert cache.get("a", Handle) is new


def test_reopening_a_slide_parses_the_file_once(tmp_path, monkeypatch):
    path = write_jpeg_tiff(tmp_path / "once.svs", known_pyramid())
    parses = []
    real = tifffile.TiffFile

    def counting(*args, **kwargs):
        parses.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(tifffile, "TiffFile", counting)
    slide = open_slide(path)
    clones = [pickle.loads(pickle.dumps(slide)) for _ in range(5)] + [open_slide(path) for _ in range(5)]
    assert len(parses) == 1
    assert all(c.read_region(0, (0, 0), (8, 8)).shape == (8, 8, 3) for c in clones)


def test_a_file_rewritten_on_disk_is_read_afresh(tmp_path):
    path = tmp_path / "rewritten.svs"
    image = known_pyramid()[0]
    write_jpeg_tiff(path, known_pyramid(image))
    before = open_slide(path).read_region(0, (0, 0), (64, 64))
    write_jpeg_tiff(path, known_pyramid(255 - image))
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # coarse clocks may not tick between writes
    after = open_slide(path).read_region(0, (0, 0), (64, 64))
    assert np.abs(after.astype(int) - (255 - before)).mean() < 3
