"""wsi-ats: attention sampling (Katharopoulos & Fleuret, ICML 2019) on gigapixel whole-slide images.

Names are imported lazily so that a dask worker that only decodes tiles never
imports torch, and ``import wsi_ats`` stays fast.

Importing the package (before torch) makes OpenMP threads sleep rather than spin while they
wait (``OMP_WAIT_POLICY=PASSIVE``, unless set): on a machine whose cores are shared with
other processes, spinning threads wait for descheduled peers and torch's many small
parallel regions run several times slower; idle machines lose nothing measurable
(figures: ``benchmarks/results/NOTES.md``).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

_EXPORTS = {
    "open_slide": "wsi_ats.readers",
    "Slide": "wsi_ats.readers",
    "Level": "wsi_ats.readers",
    "SlideError": "wsi_ats.readers",
    "fetch_patches": "wsi_ats.engine.fetch",
    "ATSModel": "wsi_ats.models",
    "load_checkpoint": "wsi_ats.checkpoint",
    "Pipeline": "wsi_ats.pipeline",
    "predict_slide": "wsi_ats.engine.run",
    "SlideResult": "wsi_ats.result",
    "read_manifest": "wsi_ats.manifest",
}

__all__ = ["__version__", "ats", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name == "ats":
        return importlib.import_module("wsi_ats.ats")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'wsi_ats' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
