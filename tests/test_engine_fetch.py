"""`wsi_ats.engine.fetch`: patches equal `read_region`, each covering tile decoded once, threads or a cluster."""

from __future__ import annotations

import threading
import time
from collections import Counter

import numpy as np
import pytest

from wsi_ats.engine.fetch import FetchStats, fetch_patches, fetch_patches_with_stats, plan_fetch
from wsi_ats.engine.prefetch import Prefetcher
from wsi_ats.readers import open_slide
from wsi_ats.readers.base import Slide, SlideError

PATCH = 96
#: (format key of `slide_paths` or "numpy", forced backend): an OpenSlide-readable TIFF through both
#: of its readers, an OME-Zarr store and an in-memory array.
SLIDES = {
    "svs": ("svs", None),
    "svs-openslide": ("svs", "openslide"),
    "ome-zarr": ("ome-zarr-0.5", None),
    "numpy": ("numpy", None),
}


def _open(key: str, slide_paths, known_image) -> Slide:
    fmt, backend = SLIDES[key]
    return open_slide(known_image if fmt == "numpy" else slide_paths[fmt], backend=backend)


@pytest.fixture(params=list(SLIDES))
def slide(request, slide_paths, known_image) -> Slide:
    with _open(request.param, slide_paths, known_image) as s:
        yield s


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, worker_dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


def mixed_corners(shape: tuple[int, int], size: int, seed: int) -> np.ndarray:
    """Random, edge, corner, negative, wholly outside and overlapping top-left corners in a level of ``shape``."""
    H, W = shape
    rng = np.random.default_rng(seed)
    random = np.stack([rng.integers(-size, H, 12), rng.integers(-size, W, 12)], axis=1)
    fixed = [
        (0, 0), (H - size, W - size), (-size // 2, -size // 3), (H - size // 2, W - size // 3),  # corners
        (0, W // 2), (H - 1, 5), (H // 2, -1), (7, W - 1),  # edges
        (-size - 3, 10), (H + 5, W + 5),  # wholly outside
        (100, 200), (110, 215), (100, 200), (180, 250),  # overlapping, one repeated
    ]  # fmt: skip
    return np.concatenate([random, np.asarray(fixed)]).astype(np.int64)


def chained_grid() -> np.ndarray:
    """Corners of 150-px patches every 140 px over the known image: one component of overlapping patches."""
    return np.stack(np.meshgrid(np.arange(-20, 1000, 140), np.arange(-20, 1500, 140), indexing="ij"), -1).reshape(-1, 2)


def covering_set(slide: Slide, level: int, tops: np.ndarray, size: int) -> set[tuple[int, int]]:
    """Brute force: every tile of the level whose box meets some patch box."""
    (th, tw), (rows, cols) = slide.tile_shape(level), slide.tile_grid(level)
    ty, tx = np.mgrid[0:rows, 0:cols]
    hit = np.zeros((rows, cols), bool)
    for y, x in tops:
        hit |= (ty * th < y + size) & ((ty + 1) * th > y) & (tx * tw < x + size) & ((tx + 1) * tw > x)
    return {(int(a), int(b)) for a, b in zip(*np.nonzero(hit))}


class CountingSlide(Slide):
    """A real slide that counts the tiles read through it, and which thread read each.

    ``slow`` tiles take that many seconds more; ``broken`` ones raise a `SlideError` naming the tile.
    """

    def __init__(self, inner: Slide, slow: dict[tuple[int, int], float] | None = None, broken: set | None = None) -> None:
        super().__init__(inner.source, inner.levels, inner.mpp, inner.properties)
        self.inner, self.slow, self.broken = inner, slow or {}, broken or set()
        self.reads: Counter[tuple[int, int, int]] = Counter()
        self.threads: dict[tuple[int, int, int], int] = {}
        self.log: list[tuple[str, object]] = []  # ("hint", tiles) and ("read", tile), in call order
        self._lock = threading.Lock()

    def prefetch_tiles(self, level: int, tiles: list[tuple[int, int]]) -> None:
        with self._lock:
            self.log.append(("hint", sorted(tiles)))
        self.inner.prefetch_tiles(level, tiles)

    def read_tile(self, level: int, ty: int, tx: int) -> np.ndarray:
        with self._lock:
            self.reads[level, ty, tx] += 1
            self.threads[level, ty, tx] = threading.get_ident()
            self.log.append(("read", (ty, tx)))
        if (level, ty, tx) in self.broken:
            raise SlideError(f"{self.name}: level {level} tile ({ty}, {tx}): cannot decode")
        time.sleep(self.slow.get((ty, tx), 0))
        return self.inner.read_tile(level, ty, tx)

    def _read(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        return self.inner._read(level, y, x, h, w)


def expected(slide: Slide, level: int, tops: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    ph, pw = (size, size) if isinstance(size, int) else size
    return np.stack([slide.read_region(level, tuple(t), (ph, pw)) for t in tops]).reshape(-1, ph, pw, 3)


# -- fetch_patches ---------------------------------------------------------------------------------
@pytest.mark.parametrize("level", [0, 1])
def test_patches_equal_read_region(slide, level):
    tops = mixed_corners(slide.levels[level].shape, PATCH, seed=level)
    patches = fetch_patches(slide, level, tops, PATCH)
    assert patches.shape == (len(tops), PATCH, PATCH, 3) and patches.dtype == np.uint8
    np.testing.assert_array_equal(patches, expected(slide, level, tops, PATCH))


def test_rectangular_patches_equal_read_region(slide):
    tops = mixed_corners(slide.levels[0].shape, 64, seed=3)
    np.testing.assert_array_equal(fetch_patches(slide, 0, tops, (40, 130)), expected(slide, 0, tops, (40, 130)))


@pytest.mark.parametrize("workers", [1, 2, 5])
def test_each_covering_tile_is_decoded_exactly_once(slide_paths, workers):
    counting = CountingSlide(open_slide(slide_paths["svs"]))
    tops = np.concatenate([mixed_corners(counting.levels[0].shape, 300, seed=4), chained_grid()])
    _, stats = fetch_patches_with_stats(counting, 0, tops, 300, num_workers=workers)
    wanted = covering_set(counting, 0, tops, 300)
    assert set(counting.reads) == {(0, ty, tx) for ty, tx in wanted}
    assert max(counting.reads.values()) == 1
    assert stats.tiles == len(wanted)


def test_all_covering_tiles_are_hinted_to_the_slide_at_once_before_any_read(slide_paths):
    """What lets a slide behind a URL fetch every tile's bytes in one round of requests."""
    counting = CountingSlide(open_slide(slide_paths["svs"]))
    tops = mixed_corners(counting.levels[0].shape, 300, seed=6)
    fetch_patches(counting, 0, tops, 300, num_workers=3)
    hints = [entry for entry in counting.log if entry[0] == "hint"]
    assert hints == [("hint", sorted(covering_set(counting, 0, tops, 300)))] and counting.log[0][0] == "hint"


def test_overlapping_patches_on_more_threads_than_tiles_equal_read_region(slide_paths):
    slide = open_slide(slide_paths["svs"])  # 4 x 6 tiles, every one shared by several patches
    tops = chained_grid()
    np.testing.assert_array_equal(fetch_patches(slide, 0, tops, 150, num_workers=32), expected(slide, 0, tops, 150))


def test_a_slow_tile_does_not_hold_back_the_rest_other_threads_take_them(slide_paths):
    """Work-stealing over single tiles: no thread owns a fixed share that waits behind a slow read."""
    counting = CountingSlide(open_slide(slide_paths["svs"]), slow={(0, 0): 1.0})
    tops = chained_grid()
    patches = fetch_patches(counting, 0, tops, 150, num_workers=2)
    slow_thread = counting.threads[0, 0, 0]
    by_thread = Counter(counting.threads.values())
    assert by_thread[slow_thread] == 1 and sum(by_thread.values()) == len(covering_set(counting, 0, tops, 150)) > 20
    np.testing.assert_array_equal(patches, expected(counting.inner, 0, tops, 150))


def test_a_failing_tile_read_fails_the_fetch_with_its_error(slide_paths):
    counting = CountingSlide(open_slide(slide_paths["svs"]), broken={(0, 1, 2)})
    with pytest.raises(SlideError, match=r"tile \(1, 2\)"):
        fetch_patches(counting, 0, chained_grid(), 150, num_workers=3)


def test_tasks_per_worker_without_a_client_is_refused(slide_paths):
    with pytest.raises(ValueError, match="client"):
        fetch_patches(open_slide(slide_paths["svs"]), 0, [[0, 0]], 8, tasks_per_worker=2)


def test_stats_count_patches_and_uncompressed_tile_bytes(slide_paths, known_image):
    slide = open_slide(slide_paths["svs"])
    tops = np.array([[10, 10], [300, 600], [-50, 1500]])
    _, stats = fetch_patches_with_stats(slide, 0, tops, PATCH)
    tiles = covering_set(slide, 0, tops, PATCH)
    assert isinstance(stats, FetchStats)
    assert stats.patches == 3 and stats.tiles == len(tiles)
    assert stats.bytes_decoded == sum(slide.read_tile(0, ty, tx).nbytes for ty, tx in tiles)
    assert stats.seconds > 0


def test_group_plan_owns_each_covering_tile_once_and_sets_straddlers_apart(slide_paths):
    slide = open_slide(slide_paths["svs"])  # 4 x 6 tiles: enough for several groups
    tops = chained_grid()
    plan = plan_fetch(slide, 0, tops, 150, n_groups=4)
    assert len(plan.groups) > 1 and len(plan.straddlers) > 0  # one connected component cut into groups
    owned = [t for g in plan.groups for t in g.tiles]
    assert len(owned) == len(set(owned)) == len(covering_set(slide, 0, tops, 150))
    local = np.concatenate([g.patches for g in plan.groups])
    assert sorted([*local, *plan.straddlers]) == list(range(len(tops)))


def test_no_patches_give_an_empty_batch(slide):
    assert fetch_patches(slide, 0, np.zeros((0, 2), np.int64), PATCH).shape == (0, PATCH, PATCH, 3)
    assert fetch_patches(slide, 0, [], (8, 12)).shape == (0, 8, 12, 3)


def test_patches_wholly_outside_are_zero_and_decode_nothing(slide):
    tops = np.array([[-PATCH, 0], [0, -PATCH], [5000, 5000]])
    patches, stats = fetch_patches_with_stats(slide, 0, tops, PATCH)
    assert not patches.any() and stats.tiles == 0


@pytest.mark.parametrize(
    "top_left, size, match",
    [
        (np.array([[1.5, 2.0]]), 8, "integers"),
        (np.array([1, 2, 3]), 8, r"\(n, 2\)"),
        (np.array([[1, 2]]), 0, "patch_size"),
        (np.array([[1, 2]]), (8, 8, 8), "patch_size"),
    ],
)
def test_bad_arguments_name_the_slide_and_the_reason(slide_paths, top_left, size, match):
    slide = open_slide(slide_paths["svs"])
    with pytest.raises(ValueError, match=match) as err:
        fetch_patches(slide, 0, top_left, size)
    assert "known.svs" in str(err.value)


def test_missing_level_is_an_index_error(slide_paths):
    with pytest.raises(IndexError, match="level 7"):
        fetch_patches(open_slide(slide_paths["svs"]), 7, [[0, 0]], 8)


@pytest.mark.parametrize("key", ["svs", "ome-zarr", "numpy"])
def test_distributed_client_gives_the_threaded_result_decoding_each_tile_once(client, key, slide_paths, known_image):
    slide = _open(key, slide_paths, known_image)
    tops = np.concatenate([mixed_corners(slide.levels[0].shape, 150, seed=5), chained_grid()])
    patches, stats = fetch_patches_with_stats(slide, 0, tops, 150, client=client, tasks_per_worker=2)
    np.testing.assert_array_equal(patches, fetch_patches(slide, 0, tops, 150))
    assert stats.tiles == len(covering_set(slide, 0, tops, 150))
    if key == "svs":  # small tiles: the chained patches straddle groups, assembled on a worker too
        assert len(plan_fetch(slide, 0, tops, 150, n_groups=4).straddlers) > 0


def test_prefetcher_fetches_patches_for_each_job(slide_paths):
    slide = open_slide(slide_paths["svs"])
    batches = [np.array([[0, 0], [500, 700]]), np.array([[-10, 1400]])]
    out = list(Prefetcher(batches, lambda tops: fetch_patches(slide, 0, tops, 64)))
    for (_, patches), want in zip(out, batches):
        np.testing.assert_array_equal(patches, expected(slide, 0, want, 64))
