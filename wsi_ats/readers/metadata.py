"""Metadata conventions shared by the backends: downsamples, units, openslide-style keys.

Every backend reports its levels and resolution the way OpenSlide does, so code
that was written against OpenSlide's properties keeps working on any format.
"""

from __future__ import annotations

from collections.abc import Sequence

from wsi_ats.readers.base import Level

#: Length units (OME-NGFF/UDUNITS names and OME-XML symbols) in micrometres.
MICRONS_PER_UNIT = {
    "angstrom": 1e-4,
    "Å": 1e-4,
    "nanometer": 1e-3,
    "nm": 1e-3,
    "micrometer": 1.0,
    "micron": 1.0,
    "µm": 1.0,
    "um": 1.0,
    "millimeter": 1e3,
    "mm": 1e3,
    "centimeter": 1e4,
    "cm": 1e4,
    "meter": 1e6,
    "m": 1e6,
}


def downsample(base_shape: tuple[int, int], shape: tuple[int, int]) -> float:
    """OpenSlide's level downsample: the mean of the height and width ratios to level 0."""
    return (base_shape[0] / shape[0] + base_shape[1] / shape[1]) / 2


def to_microns(value: float | None, unit: str | None) -> float | None:
    """``value`` in ``unit`` as micrometres; None when either is missing, unknown or not positive."""
    if value is None or unit is None or unit not in MICRONS_PER_UNIT:
        return None
    microns = float(value) * MICRONS_PER_UNIT[unit]
    return microns if microns > 0 else None


def parse_float(text: str | None) -> float | None:
    """A metadata string as a float; None when absent or not a number."""
    try:
        return float(text) if text else None
    except ValueError:
        return None


def mean_mpp(mpp_x: float | None, mpp_y: float | None) -> float | None:
    """One microns-per-pixel figure for a slide: the mean of the known axes (usually equal)."""
    known = [v for v in (mpp_x, mpp_y) if v is not None and v > 0]
    return sum(known) / len(known) if known else None


def openslide_properties(
    vendor: str,
    levels: Sequence[Level],
    mpp_x: float | None = None,
    mpp_y: float | None = None,
    objective_power: str | None = None,
) -> dict[str, str]:
    """The ``openslide.*`` keys OpenSlide itself would set for this pyramid (string values)."""
    props = {"openslide.vendor": vendor, "openslide.level-count": str(len(levels))}
    for i, lv in enumerate(levels):
        props[f"openslide.level[{i}].height"] = str(lv.shape[0])
        props[f"openslide.level[{i}].width"] = str(lv.shape[1])
        props[f"openslide.level[{i}].downsample"] = repr(lv.downsample)
        if lv.tile is not None:
            props[f"openslide.level[{i}].tile-height"] = str(lv.tile[0])
            props[f"openslide.level[{i}].tile-width"] = str(lv.tile[1])
    for key, value in (("mpp-x", mpp_x), ("mpp-y", mpp_y), ("objective-power", objective_power)):
        if value is not None:
            props[f"openslide.{key}"] = str(value)
    return props
