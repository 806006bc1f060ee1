"""TIFF-family backend (Aperio SVS, generic tiled TIFF, OME-TIFF with SubIFD pyramids), read with tifffile.

Why not OpenSlide for these: OpenSlide's tile-aligned ``read_region`` costs several
raw tile decodes (RGBA conversion, premultiplication, its cache; ``benchmarks/read_region.py``
times both), and it sees a SubIFD pyramid as a single level. Here a tile read is one ``os.pread`` of
the tile's compressed bytes (thread-safe, releases the GIL) and tifffile's
``page.decode`` (imagecodecs, which honours JPEGTables and releases the GIL), so
many threads decode at once from one handle.

The same code reads a TIFF behind a URL (`wsi_ats.readers.remote`): tifffile parses the
header through a buffered range-reading stream, and tile reads become byte-range requests,
those of one `TiffSlide.read_tiles` (a region) or `prefetch_tiles` (a fetch task) in flight
together. TIFF-based formats only OpenSlide reads (NDPI, SCN, Philips, BIF) are refused
over a URL with a "copy it locally" error; locally `open_slide` sends them to OpenSlide.

Levels: the main series' pyramid (``series[0].levels``: OME and other SubIFD
pyramids) plus the top-level tiled directories OpenSlide counts as levels: every
tiled one in an Aperio file, ``subfiletype`` reduced-resolution ones otherwise.
Levels are ordered by size, duplicates by shape dropped, and downsamples follow
OpenSlide's formula (`metadata.downsample`). Tiles with no bytes (sparse files)
read as white, which is what OpenSlide's transparent tile becomes in our RGB.

A file whose levels are not all tiled, 8-bit and decodable that way (strips,
planar channels, 16-bit, unusual photometrics) is read through tifffile's zarr
view instead (`tifffile.TiffPageSeries.aszarr` and the zarr backend's `Pyramid`), where
a "tile" is a strip or tifffile's chunk.

Samples become RGB by `wsi_ats.readers.pixels`' rules, which are libtiff's (so the
pixels equal OpenSlide's): 16-bit to 8 by ``(v + 128) // 257``, grey replicated, a
fourth sample composited onto white as associated alpha when ``ExtraSamples`` says so
or says nothing (libtiff's reading), as straight alpha when it says unassociated.
Floating-point samples, 2 or more than 4 channels, and several samples the file
declares grey (``minisblack``: fluorescence channels) are refused
(`pixels.UnsupportedPixels`): OpenSlide would show their first channel as grey.

Metadata: mpp and objective power from the Aperio ImageDescription
(``MPP``, ``AppMag``), the OME-XML (``PhysicalSizeX/Y`` with units,
``NominalMagnification``), or else the resolution tags when their unit is
centimetre (OpenSlide's rule: inch-based resolution is too often a 72-dpi
placeholder); properties carry ``aperio.*``, ``tiff.*`` and OpenSlide's keys.

`wsi_ats.readers.open_slide` decides when a file takes this path.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tifffile
from tifffile import TIFF

from wsi_ats.readers.base import Level, Slide, SlideError, blit
from wsi_ats.readers.handles import SMALL_LEVEL_BYTES, SMALL_PIXELS, HandleCache
from wsi_ats.readers.metadata import downsample, mean_mpp, openslide_properties, parse_float, to_microns
from wsi_ats.readers.pixels import check_samples, to_rgb
from wsi_ats.readers.remote import ByteSource, is_url, open_bytes, source_key
from wsi_ats.readers.zarr import Pyramid, ZarrSlide, pyramid_levels

#: Parsed TIFF files kept open per process.
MAX_OPEN = 32
#: TIFF tags copied into ``properties`` as ``tiff.<name>`` (the ones OpenSlide reports).
_TIFF_TAGS = (
    "ImageDescription",
    "Make",
    "Model",
    "Software",
    "DateTime",
    "Artist",
    "HostComputer",
    "Copyright",
    "DocumentName",
    "XResolution",
    "YResolution",
    "ResolutionUnit",
)
_RESOLUTION_UNITS = {1: "none", 2: "inch", 3: "centimeter"}
_JPEG = 7
_MINISWHITE, _MINISBLACK, _RGB, _YCBCR = 0, 1, 2, 6
_UNASSOCIATED_ALPHA = 2


@dataclass(frozen=True)
class _TiledLevel:
    page: tifffile.TiffPage
    offsets: np.ndarray
    counts: np.ndarray
    premultiplied: bool


@dataclass(frozen=True)
class _TiledHandle:
    """An open file (local or remote, read by byte range) and its parsed tiled pyramid."""

    file: ByteSource
    tiled: tuple[_TiledLevel, ...]
    levels: tuple[Level, ...]
    mpp: float | None
    properties: dict[str, Any]


_HANDLES: HandleCache[_TiledHandle | Pyramid] = HandleCache(MAX_OPEN)


def open_tiff(path: str, storage_options: dict[str, Any] | None = None, remote_cache: str | None = None) -> Slide:
    """A TIFF (path or URL) as a `TiffSlide` (tiled fast path) or, failing that, a `ZarrSlide` on tifffile's zarr view.

    ``remote_cache``: a folder keeping the byte ranges read from a URL (`wsi_ats.readers.remote_cache`).
    """
    key = source_key(path, storage_options)
    handle = _cached(path, key, storage_options, remote_cache)
    slide = TiffSlide(path, key, handle, storage_options) if isinstance(handle, _TiledHandle) else ZarrSlide(path, handle)
    slide.storage_options, slide.remote_cache = storage_options, remote_cache
    return slide


def _cached(path: str, key: Hashable, storage_options: dict[str, Any] | None, remote_cache: str | None) -> _TiledHandle | Pyramid:
    return _HANDLES.get((key, remote_cache), lambda: _open(path, key, storage_options, remote_cache))


class TiffSlide(Slide):
    """A tiled TIFF pyramid decoded tile by tile, without OpenSlide."""

    backend = "tiff"

    def __init__(self, path: str, key: Hashable, handle: _TiledHandle, storage_options: dict[str, Any] | None = None) -> None:
        self._key = key
        super().__init__(path, handle.levels, handle.mpp, handle.properties)
        self.storage_options = storage_options

    def _handle(self) -> _TiledHandle:
        handle = _cached(self.source, self._key, self.storage_options, self.remote_cache)
        assert isinstance(handle, _TiledHandle)
        return handle

    def read_tile(self, level: int, ty: int, tx: int) -> np.ndarray:
        return self.read_tiles(level, [(ty, tx)])[0]

    def read_tiles(self, level: int, tiles: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Several tiles of a level: their byte ranges are requested together (in flight at once over a URL)."""
        shapes = {tile: self.tile_box(level, *tile)[2:] for tile in tiles}  # checks each tile lies in the level
        h0, w0 = self.levels[level].shape
        small = h0 * w0 * 3 <= SMALL_LEVEL_BYTES
        kept = [SMALL_PIXELS.get((self._key, level, tile)) if small else None for tile in tiles]
        missing = [tile for tile, k in zip(tiles, kept) if k is None]
        handle = self._handle()
        lv, index, ranges = self._ranges(handle, level, missing)
        try:
            data = iter(handle.file.read_many(ranges))
        except OSError as err:
            raise SlideError(f"{self.source}: cannot read level {level} tiles: {err}") from err
        fresh = []
        for tile, i in zip(missing, index):
            h, w = shapes[tile]
            pixels = self._decode(level, tile, lv, i, next(data), h, w) if lv.counts[i] else np.full((h, w, 3), 255, np.uint8)
            if small:
                SMALL_PIXELS.put((self._key, level, tile), pixels)
            fresh.append(pixels)
        decoded = iter(fresh)
        return [k if k is not None else next(decoded) for k in kept]

    def prefetch_tiles(self, level: int, tiles: Sequence[tuple[int, int]]) -> None:
        for ty, tx in tiles:
            self.tile_box(level, ty, tx)
        handle = self._handle()
        handle.file.prefetch(self._ranges(handle, level, tiles)[2])

    def _ranges(
        self, handle: _TiledHandle, level: int, tiles: Sequence[tuple[int, int]]
    ) -> tuple[_TiledLevel, list[int], list[tuple[int, int]]]:
        """The level, the tiles' indices in its tile arrays, and the ``(offset, count)`` of those with bytes."""
        lv, columns = handle.tiled[level], self.tile_grid(level)[1]
        index = [ty * columns + tx for ty, tx in tiles]
        return lv, index, [(int(lv.offsets[i]), int(lv.counts[i])) for i in index if lv.counts[i]]

    def _decode(self, level: int, tile: tuple[int, int], lv: _TiledLevel, index: int, data: bytes, h: int, w: int) -> np.ndarray:
        where = f"{self.source}: level {level} tile {tile}"
        if len(data) != int(lv.counts[index]):
            raise SlideError(f"{where}: file ends inside the tile (truncated?)")
        try:
            tile_ = lv.page.decode(data, index, jpegtables=lv.page.jpegtables)[0]
        except Exception as err:  # imagecodecs raises a different class per codec
            raise SlideError(f"{where}: cannot decode: {err}") from err
        return to_rgb(tile_[0, :h, :w], premultiplied=lv.premultiplied)

    def _read(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        out = np.empty((h, w, 3), np.uint8)
        th, tw = self.tile_shape(level)
        tiles = list(self.tiles_covering(level, (y, x), (h, w)))
        for (ty, tx), pixels in zip(tiles, self.read_tiles(level, tiles)):
            blit(out, (y, x), pixels, (ty * th, tx * tw))
        return out

    def close(self) -> None:
        """Drop the cached handle; it closes once no read uses it, and a later read reopens it."""
        _HANDLES.discard((self._key, self.remote_cache))


# -- opening -------------------------------------------------------------------
def _open(path: str, key: Hashable, storage_options: dict[str, Any] | None, remote_cache: str | None) -> _TiledHandle | Pyramid:
    file = open_bytes(path, storage_options, remote_cache)
    if file.key != key:  # levels would not match the slide's
        file.close()
        raise SlideError(f"{path}: changed since it was opened")
    try:
        tf = tifffile.TiffFile(file.stream(), name=path)
        if is_url(path):
            _check_tiff_vendor(path, tf)
        _check_grey_samples(path, tf)
        pages = _fast_path_pages(tf)
        return _tiled_handle(path, file, tf, pages) if pages else _zarr_pyramid(path, tf)
    except SlideError:
        file.close()
        raise
    except Exception as err:  # tifffile signals bad input with many exception types
        file.close()
        raise SlideError(f"{path}: not a readable TIFF: {err}") from err


def _fast_path_pages(tf: tifffile.TiffFile) -> list[tifffile.TiffPage] | None:
    """The pyramid's pages, largest first, when each level is one page `_tile_decodable` accepts; else None."""
    if not tf.series:
        raise ValueError("no images")
    levels = tf.series[0].levels
    if any(len(level.pages) != 1 for level in levels):  # planes or channels in separate pages
        return None
    pages = [level.keyframe for level in levels]
    base = pages[0]
    if not tf.is_ome:
        for page in tf.pages:
            if (
                isinstance(page, tifffile.TiffPage)
                and page is not base
                and page.is_tiled
                and (tf.is_svs or page.is_reduced)
                and (page.samplesperpixel, page.dtype) == (base.samplesperpixel, base.dtype)
            ):
                pages.append(page)
    unique: dict[tuple[int, int], tifffile.TiffPage] = {}
    for page in sorted(pages, key=lambda p: (-p.imagewidth, -p.imagelength)):
        unique.setdefault((page.imagelength, page.imagewidth), page)
    return list(unique.values()) if all(_tile_decodable(p) for p in unique.values()) else None


def _tile_decodable(page: tifffile.TiffPage) -> bool:
    """Whether tifffile can decode the page tile by tile into 8-bit grey, RGB or RGBA."""
    return (
        page.is_tiled
        and page.imagedepth == 1
        and page.dtype == np.uint8
        and page.samplesperpixel in (1, 3, 4)
        and (page.samplesperpixel == 1 or page.planarconfig == 1)
        and (page.compression == 1 or page.compression in TIFF.DECOMPRESSORS)
        and (page.photometric in (_MINISBLACK, _RGB) or (page.photometric == _YCBCR and page.compression == _JPEG))
    )


def _tiled_handle(path: str, file: ByteSource, tf: tifffile.TiffFile, pages: list[tifffile.TiffPage]) -> _TiledHandle:
    size = file.size
    tiled = []
    for i, page in enumerate(pages):
        offsets = np.asarray(page.dataoffsets, np.int64)
        counts = np.asarray(page.databytecounts, np.int64)
        if len(offsets) and int((offsets + counts).max()) > size:
            raise SlideError(f"{path}: level {i} tile data lies past the end of the file (truncated?)")
        page.decode  # noqa: B018 -- tifffile builds and caches the decoder closure once, here, not in reader threads
        tiled.append(_TiledLevel(page, offsets, counts, _premultiplied(page)))
    shapes = [(p.imagelength, p.imagewidth) for p in pages]
    levels = tuple(Level(shape, downsample(shapes[0], shape), (p.tilelength, p.tilewidth)) for shape, p in zip(shapes, pages))
    mpp, properties = _metadata(tf, levels)
    tf.close()  # the pages keep what decoding needs; `file` stays open for range reads
    return _TiledHandle(file, tuple(tiled), levels, mpp, properties)


def _zarr_pyramid(path: str, tf: tifffile.TiffFile) -> Pyramid:
    """tifffile's zarr view of the main series (kept open: the store reads through ``tf``)."""
    import zarr

    series = tf.series[0]
    group = zarr.open_group(series.aszarr(multiscales=True), mode="r")
    arrays = tuple(group[str(i)] for i in range(len(series.levels)))
    axes = tuple(series.axes.lower().replace("s", "c"))
    yx = [(lv.shape[axes.index("y")], lv.shape[axes.index("x")]) for lv in series.levels]
    levels = pyramid_levels(path, arrays, axes, [downsample(yx[0], s) for s in yx])
    mpp, properties = _metadata(tf, levels)
    return Pyramid(arrays, axes, levels, mpp, properties, backend="tiff", premultiplied=_premultiplied(series.keyframe))


#: tifffile's flags for TIFF-based vendor formats only OpenSlide reads (their levels, overlaps, sparse regions).
_OPENSLIDE_ONLY = {"is_ndpi": "NDPI", "is_scn": "Leica SCN", "is_philips": "Philips TIFF", "is_bif": "Ventana BIF"}


def _check_tiff_vendor(url: str, tf: tifffile.TiffFile) -> None:
    """Refuse, over a URL, TIFF-based formats that only OpenSlide reads (it reads local files only)."""
    for flag, name in _OPENSLIDE_ONLY.items():
        if getattr(tf, flag, False):
            raise SlideError(local_only(url, name))


def local_only(url: str, name: str) -> str:
    """The error for a format OpenSlide must read, given as a URL."""
    return (
        f"{url}: {name} slides are read by OpenSlide, which reads local files only; stage it with --stage DIR "
        "(open_slide(..., stage=DIR) in Python: it is downloaded once into DIR), or copy it to a local disk and give that path"
    )


def _premultiplied(page: tifffile.TiffPage) -> bool:
    """Whether a fourth sample is associated alpha: ExtraSamples 1, or 0 (unspecified), which libtiff reads as associated."""
    return page.samplesperpixel == 4 and tuple(page.extrasamples)[:1] != (_UNASSOCIATED_ALPHA,)


def _check_grey_samples(path: str, tf: tifffile.TiffFile) -> None:
    """Refuse several samples per pixel that the file declares grey (``minisblack``): fluorescence channels, not RGB."""
    page = tf.series[0].keyframe if tf.series else None
    if page is not None and page.photometric in (_MINISWHITE, _MINISBLACK):
        check_samples(path, page.dtype, page.samplesperpixel, colour=False)


def check_tiff_samples(path: str) -> None:
    """Raise `pixels.UnsupportedPixels` when the main image's samples are not an RGB picture (for other readers of the file)."""
    try:
        tf = tifffile.TiffFile(path)
    except (ValueError, OSError):  # tifffile cannot parse it (TiffFileError is a ValueError): the other reader decides
        return
    with tf:
        if tf.series:
            _check_grey_samples(path, tf)
            series = tf.series[0]
            axes = series.axes.lower().replace("s", "c")
            check_samples(path, series.dtype, series.shape[axes.index("c")] if "c" in axes else 1)


# -- metadata ------------------------------------------------------------------
def _metadata(tf: tifffile.TiffFile, levels: tuple[Level, ...]) -> tuple[float | None, dict[str, Any]]:
    page = tf.pages.first
    props: dict[str, Any] = {}
    for name in _TIFF_TAGS:
        tag = page.tags.get(name)
        if tag is not None:
            props[f"tiff.{name}"] = _tag_text(name, tag.value)
    mpp_x = mpp_y = objective = None
    if tf.is_svs:
        vendor = "aperio"
        aperio = _aperio_fields(page.description)
        props.update({f"aperio.{k}": v for k, v in aperio.items()})
        mpp_x = mpp_y = parse_float(aperio.get("MPP"))
        objective = aperio.get("AppMag")
    else:
        vendor = "generic-tiff"
        if tf.is_ome and tf.ome_metadata:
            mpp_x, mpp_y, objective = _ome_resolution(tf.ome_metadata)
        elif page.resolutionunit == 3:
            mpp_x, mpp_y = (1e4 / r if r else None for r in page.resolution)
    props.update(openslide_properties(vendor, levels, mpp_x, mpp_y, objective))
    return mean_mpp(mpp_x, mpp_y), props


def _tag_text(name: str, value: Any) -> str:
    if name == "ResolutionUnit":
        return _RESOLUTION_UNITS.get(int(value), str(value))
    if isinstance(value, tuple) and len(value) == 2 and value[1]:  # a TIFF RATIONAL
        return repr(value[0] / value[1])
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _aperio_fields(description: str) -> dict[str, str]:
    """``key = value`` pairs of an Aperio ImageDescription (``header|key = value|...``)."""
    fields = {}
    for item in description.split("|")[1:]:
        key, sep, value = item.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _ome_resolution(xml: str) -> tuple[float | None, float | None, str | None]:
    """Physical pixel size (µm) and nominal magnification of the first OME image."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None, None, None
    pixels = next((el for el in root.iter() if el.tag.endswith("}Pixels") or el.tag == "Pixels"), None)
    objective = next((el for el in root.iter() if el.tag.endswith("Objective")), None)
    mpp = [None, None]
    if pixels is not None:
        for i, axis in enumerate("XY"):
            value = parse_float(pixels.get(f"PhysicalSize{axis}"))
            mpp[i] = to_microns(value, pixels.get(f"PhysicalSize{axis}Unit", "µm"))
    magnification = objective.get("NominalMagnification") if objective is not None else None
    return mpp[0], mpp[1], magnification
