"""Synthetic whole-slide cohorts on which attention sampling is necessary.

Positive slides hold a few small lesions (crowded large dark nuclei); negative slides hold as
many mimics (normal nuclei on dense stroma). Both are the same dark dot at downsample 16, so a
low-resolution view finds the candidates but only the high-resolution patches classify them.
A 3-class cohort (``classes=3``) splits the lesions into two types that differ only in how
their nuclei are arranged: ``lesion_a`` (a solid crowd) and ``lesion_b`` (rings around lumens).

Slides are rendered procedurally tile by tile from a small seeded scene and streamed into an
Aperio-like pyramidal TIFF or an OME-Zarr, so any size is written in bounded memory.
"""

from wsi_ats.synth.annotations import feature_collection, write_geojson
from wsi_ats.synth.cohort import SlideSpec, make_cohort, make_slide, plan_cohort
from wsi_ats.synth.scene import Blob, Scene, make_scene

__all__ = [
    "Blob",
    "Scene",
    "SlideSpec",
    "feature_collection",
    "make_cohort",
    "make_scene",
    "make_slide",
    "plan_cohort",
    "write_geojson",
]
