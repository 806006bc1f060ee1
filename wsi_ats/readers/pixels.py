"""Turning a format's decoded samples into the package's ``(h, w, 3) uint8`` RGB, or refusing them.

One rule for every backend, so that one image reads the same whatever stores it:

- **uint16** maps to 8 bits by a display window when the format gives one (OME-Zarr's
  ``omero`` channels), else by the full range, rounded: ``(v + 128) // 257``, which is
  what libtiff (and so OpenSlide) does for 16-bit RGB.
- **1 channel** (grey) is replicated to RGB.
- **4 channels** are RGB + alpha, composited onto white (or the slide's stated
  background) as OpenSlide's RGBA composited by a viewer: transparent means "not
  scanned", which must read as background, not as whatever colour the writer left
  under it (often black, which a tissue detector would take for tissue). The
  arithmetic is OpenSlide's: straight alpha is premultiplied with libtiff's rounding,
  ``(v * a + 127) // 255``, then ``+ background * (255 - a) / 255``. The OpenSlide
  backend recovers OpenSlide's premultiplied pixels exactly from openslide-python's
  un-premultiplied RGBA, so both TIFF backends agree bit for bit.
- **Anything else is refused** (`UnsupportedPixels`): floating-point samples have no
  display range, and 2 or more than 4 channels are fluorescence (or unknown) data whose
  mapping to RGB is a choice the user must make, not one a reader may guess.
"""

from __future__ import annotations

import numpy as np

from wsi_ats.readers.base import SlideError

WHITE = (255, 255, 255)
#: Sample types read as they are (uint8) or mapped to 8 bits (uint16).
SAMPLE_TYPES = (np.dtype(np.uint8), np.dtype(np.uint16))
#: Channel counts that are an RGB picture: grey, RGB, RGB + alpha.
CHANNELS = (1, 3, 4)


class UnsupportedPixels(SlideError):
    """The file is readable, but its samples are not an RGB picture (float, fluorescence channels, ...).

    No backend should read it (OpenSlide would show the first channel as grey), so
    `wsi_ats.readers.open_slide` does not fall back to another one.
    """


def check_samples(source: str, dtype: np.dtype | str, channels: int, *, colour: bool = True) -> None:
    """Raise `UnsupportedPixels`, naming ``source`` and the fix, unless the samples are an RGB-like picture.

    ``colour=False``: the format declares the channels as grey levels (a TIFF's
    ``minisblack`` photometric), so more than one is fluorescence, never RGB.
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        raise UnsupportedPixels(
            f"{source}: {dtype} (floating-point) samples have no display range, so they cannot be shown as RGB; "
            "convert the image to 8-bit RGB (scale to 0-255, save as uint8) or pass the converted array to open_slide"
        )
    if dtype not in SAMPLE_TYPES:
        raise UnsupportedPixels(f"{source}: {dtype} samples are not supported; convert the image to uint8 (or uint16) RGB")
    if channels not in CHANNELS or (not colour and channels > 1):
        raise UnsupportedPixels(
            f"{source}: {channels} channels: multichannel fluorescence is not RGB; a slide has 1 (grey), 3 (RGB) or "
            "4 (RGB + alpha) channels. Render the channels you want as an RGB image first (e.g. QuPath or "
            "napari export, or bfconvert), then open that"
        )


def to_uint8(samples: np.ndarray, window: tuple[tuple[float, float], ...] | None = None) -> np.ndarray:
    """uint8 as is; uint16 through per-channel ``(start, end)`` ``window`` (rounded, clipped) or the full range."""
    if samples.dtype == np.uint8:
        return samples
    if window is None:
        return ((samples.astype(np.uint32) + 128) // 257).astype(np.uint8)
    start, end = (np.array(v, np.float32) for v in zip(*window))
    return np.clip(np.rint((samples - start) * (255 / (end - start))), 0, 255).astype(np.uint8)


def premultiply(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Straight-alpha ``rgb`` times ``alpha / 255`` with libtiff's rounding (uint8 in, uint8 out)."""
    return ((rgb.astype(np.uint32) * alpha + 127) // 255).astype(np.uint8)


def to_rgb(pixels: np.ndarray, background: tuple[int, int, int] = WHITE, *, premultiplied: bool = False) -> np.ndarray:
    """``(h, w, c)`` uint8 with c = 1 (grey), 3 (RGB) or 4 (RGBA) -> ``(h, w, 3)`` uint8 (see the module docstring).

    ``premultiplied``: the fourth channel is associated alpha (the colour samples are
    already multiplied by it, TIFF's ``ExtraSamples = 1``); else it is straight alpha.
    """
    channels = pixels.shape[-1]
    if channels == 1:
        return np.repeat(pixels, 3, axis=-1)
    if channels == 3:
        return pixels
    if channels != 4:
        raise ValueError(f"expected 1, 3 or 4 channels, got {channels}")
    rgb, alpha = pixels[..., :3], pixels[..., 3:]
    if alpha.min() == 255:
        return rgb
    covered = rgb if premultiplied else premultiply(rgb, alpha)
    uncovered = (np.asarray(background, np.uint32) * (255 - alpha.astype(np.uint32)) + 127) // 255
    return np.minimum(covered + uncovered, 255).astype(np.uint8)
