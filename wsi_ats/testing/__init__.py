"""Test helpers shipped with the package for code that extends it, as ``zarr.testing`` is for stores.

`wsi_ats.testing.readers.SlideContract` holds every behaviour a slide backend
must show; a backend proves itself by subclassing it in its own test module.
These modules import pytest; nothing in `wsi_ats` imports them at runtime.
"""
