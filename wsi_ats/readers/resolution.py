"""A slide's resolution (micrometres per pixel at level 0) and where it comes from.

In order: a value the user gives (manifest ``mpp`` column, ``--mpp``, ``open_slide(mpp=)``)
overrides the file, since files are sometimes wrong; then the file's own figure; then the
objective power (``AppMag``: 40x is about 0.25 um/px), which a caller should warn about,
since scanners' "40x" differ by a few percent; otherwise the resolution is unknown and a
model that needs microns refuses the slide with an error naming the fix.
"""

from __future__ import annotations

from wsi_ats.readers.base import Slide
from wsi_ats.readers.metadata import parse_float

#: Property keys that carry the objective power, by format.
OBJECTIVE_KEYS = ("openslide.objective-power", "objective_power", "AppMag")
#: Micrometres per pixel of a 1x objective: a 40x scan is about 0.25 um/px.
MICRONS_AT_1X = 10.0
#: Where `Slide.mpp` came from.
SOURCES = ("given", "file", "objective-power", "unknown")


def objective_power(slide: Slide) -> float | None:
    """The objective power the file states, or None."""
    for key in OBJECTIVE_KEYS:
        value = parse_float(str(slide.properties.get(key) or ""))
        if value is not None and value > 0:
            return value
    return None


def apply_resolution(slide: Slide, given: float | None = None) -> Slide:
    """Set ``slide.mpp`` and ``slide.mpp_source`` by the rule above; returns the slide."""
    if given is not None:
        if not (isinstance(given, (int, float)) and given > 0):
            raise ValueError(f"{slide.name}: mpp must be a positive number of micrometres per pixel, got {given!r}")
        slide.mpp, slide.mpp_source = float(given), "given"
    elif slide.mpp is not None:
        slide.mpp_source = "file"
    elif (power := objective_power(slide)) is not None:
        slide.mpp, slide.mpp_source = MICRONS_AT_1X / power, "objective-power"
    else:
        slide.mpp_source = "unknown"
    slide.given_mpp = given
    return slide
