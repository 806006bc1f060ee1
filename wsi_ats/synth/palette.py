"""Colours of the synthetic H&E stain (RGB, 0-255).

`BLOB_MEAN` is the one number lesions and mimics share: each blob's background is solved so
that its mean colour equals it, which is what makes the two indistinguishable at low zoom.
"""

from __future__ import annotations

import numpy as np

#: Glass. A neutral grey so that one scalar is the background of every channel (zarr fill value).
BACKGROUND = 245
STROMA_LIGHT = np.array([243, 182, 214], dtype=np.float32)
STROMA_DARK = np.array([212, 118, 170], dtype=np.float32)
NUCLEUS = np.array([72, 42, 122], dtype=np.float32)
LESION_NUCLEUS = np.array([48, 20, 92], dtype=np.float32)
BLOB_MEAN = np.array([135, 78, 152], dtype=np.float32)
#: Peak-to-peak amplitude of the per-pixel grain added to tissue (zero mean).
GRAIN = 14.0
