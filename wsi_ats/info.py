"""What ``wsi-ats info`` reports: levels, tiles, resolution (and where it came from) and vendor of one slide,
and whether its pixels can be read.

Opening a slide reads only its metadata, so a file whose tiles are truncated or undecodable
opens fine; `describe` therefore reads one tile of level 0 (the middle one) and the
smallest level whole (one tile of it when even that level is huge), and lists what failed
as ``problems`` (the CLI then exits 2). What reads but would mislead a prediction is listed
as ``warnings``: a blank smallest level, no pyramid, a resolution unknown or implausible.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from wsi_ats.engine.plan import MAX_STREAMED_PIXELS, PLAUSIBLE_MPP, PYRAMID_FIX
from wsi_ats.readers import Slide, open_slide

#: Property keys that name the scanner vendor and objective power, by format.
VENDOR_KEYS = ("openslide.vendor", "vendor")
OBJECTIVE_KEYS = ("openslide.objective-power", "objective_power", "AppMag")
#: Largest level read whole (pixels); a larger smallest level means the slide has no real pyramid.
MAX_WHOLE_PIXELS = 1 << 24


def _first(props: dict[str, Any], keys: tuple[str, ...]) -> Any:
    return next((props[k] for k in keys if props.get(k) not in (None, "")), None)


def describe(source: str) -> dict[str, Any]:
    """A JSON-ready summary of a slide, with the ``problems`` and ``warnings`` its reads found; raises like `open_slide`."""
    with open_slide(source) as slide:
        problems, warnings = check_pixels(slide)
        return {
            "source": str(source),
            "backend": type(slide).__name__,
            "vendor": _first(slide.properties, VENDOR_KEYS),
            "objective_power": _first(slide.properties, OBJECTIVE_KEYS),
            "mpp": slide.mpp,
            "mpp_source": slide.mpp_source,
            "levels": [
                {"level": i, "shape": list(lv.shape), "downsample": lv.downsample, "tile": list(lv.tile) if lv.tile else None}
                for i, lv in enumerate(slide.levels)
            ],
            "problems": problems,
            "warnings": warnings + resolution_warnings(slide),
        }


def check_pixels(slide: Slide) -> tuple[list[str], list[str]]:
    """Read the middle tile of level 0 and the smallest level: ``(problems, warnings)``, each a list of one-line texts."""
    problems: list[str] = []
    rows, cols = slide.tile_grid(0)
    _try(problems, f"level 0 tile ({rows // 2}, {cols // 2})", lambda: slide.read_tile(0, rows // 2, cols // 2))
    k = max(range(len(slide.levels)), key=lambda i: slide.levels[i].downsample)
    (h, w), warnings = slide.levels[k].shape, []
    if h * w > MAX_WHOLE_PIXELS:
        rows, cols = slide.tile_grid(k)
        _try(problems, f"level {k} tile ({rows // 2}, {cols // 2})", lambda: slide.read_tile(k, rows // 2, cols // 2))
        if h * w > MAX_STREAMED_PIXELS:
            what = (
                f"over the {MAX_STREAMED_PIXELS / 1e9:.0f} gigapixels wsi-ats predict decodes to build the levels "
                "a model reads: it refuses the slide"
            )
        else:
            what = "wsi-ats predict decodes it whole to build the levels a model reads (slow)"
        warnings.append(f"no pyramid: the smallest level ({k}) is {h}x{w} px, {what}; {PYRAMID_FIX}")
        return problems, warnings
    pixels = _try(problems, f"level {k} ({h}x{w} px, the smallest)", lambda: slide.read_region(k, (0, 0), (h, w)))
    if pixels is not None and pixels.size and (pixels == pixels[:1, :1]).all():
        r, g, b = (int(v) for v in pixels[0, 0])
        warnings.append(f"blank: every pixel of level {k} is RGB ({r}, {g}, {b}) (an empty scan, or tiles or chunks missing)")
    return problems, warnings


def resolution_warnings(slide: Slide) -> list[str]:
    """A resolution that is unknown, guessed from the objective power, or one no slide scanner makes."""
    if slide.mpp is None:
        return ["resolution unknown: a model that reads by microns needs it (the manifest's mpp column or --mpp)"]
    lo, hi = PLAUSIBLE_MPP
    if not lo <= slide.mpp <= hi:
        return [f"implausible resolution: {slide.mpp:.4g} um/px at level 0, outside the {lo:g}-{hi:g} um/px of slide scanners"]
    if slide.mpp_source == "objective-power":
        return [f"no microns per pixel in the file: {slide.mpp:.4g} um/px guessed from its objective power"]
    return []


def _try(problems: list[str], what: str, read: Callable[[], np.ndarray]) -> np.ndarray | None:
    """``read()``, or None with a line in ``problems`` naming ``what`` could not be read and why."""
    try:
        return read()
    except Exception as err:  # noqa: BLE001 - every backend and codec fails its own way; each is a problem to report
        problems.append(f"cannot read {what}: {type(err).__name__}: {' '.join(str(err).split())}")
        return None


def format_description(desc: dict[str, Any]) -> str:
    """The human-readable table printed by ``wsi-ats info``, then any problems and warnings."""
    mpp = f"{desc['mpp']:.4g} um/px ({desc['mpp_source']})" if desc["mpp"] else f"unknown ({desc['mpp_source']})"
    lines = [
        f"{desc['source']}",
        f"  backend   {desc['backend']}",
        f"  vendor    {desc['vendor'] or 'unknown'}",
        f"  objective {desc['objective_power'] or 'unknown'}",
        f"  mpp       {mpp}",
        f"  {'level':>5} {'height':>8} {'width':>8} {'downsample':>10} {'tile':>9}",
    ]
    for lv in desc["levels"]:
        tile = "x".join(map(str, lv["tile"])) if lv["tile"] else "-"
        lines.append(f"  {lv['level']:>5} {lv['shape'][0]:>8} {lv['shape'][1]:>8} {lv['downsample']:>10.4g} {tile:>9}")
    lines += [f"  problem: {p}" for p in desc["problems"]]
    lines += [f"  warning: {w}" for w in desc["warnings"]]
    lines.append(f"  pixels    {'UNREADABLE' if desc['problems'] else 'read ok'}")
    return "\n".join(lines)
