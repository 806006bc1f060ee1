"""What ``wsi-ats info`` reports: levels, tiles, resolution and vendor of one slide."""

from __future__ import annotations

from typing import Any

from wsi_ats.readers import open_slide

#: Property keys that name the scanner vendor and objective power, by format.
VENDOR_KEYS = ("openslide.vendor", "vendor")
OBJECTIVE_KEYS = ("openslide.objective-power", "objective_power", "AppMag")


def _first(props: dict[str, Any], keys: tuple[str, ...]) -> Any:
    return next((props[k] for k in keys if props.get(k) not in (None, "")), None)


def describe(source: str) -> dict[str, Any]:
    """A JSON-ready summary of a slide; raises like `open_slide` on bad input."""
    with open_slide(source) as slide:
        return {
            "source": str(source),
            "backend": type(slide).__name__,
            "vendor": _first(slide.properties, VENDOR_KEYS),
            "objective_power": _first(slide.properties, OBJECTIVE_KEYS),
            "mpp": slide.mpp,
            "levels": [
                {"level": i, "shape": list(lv.shape), "downsample": lv.downsample, "tile": list(lv.tile) if lv.tile else None}
                for i, lv in enumerate(slide.levels)
            ],
        }


def format_description(desc: dict[str, Any]) -> str:
    """The human-readable table printed by ``wsi-ats info``."""
    mpp = f"{desc['mpp']:.4g} um/px" if desc["mpp"] else "unknown"
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
    return "\n".join(lines)
