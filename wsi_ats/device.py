"""Where the networks run, and in which precision.

CUDA when present (or asked for), else CPU. Mixed precision is bfloat16 autocast on a CUDA
device that supports it: bfloat16 has float32's range, so no loss scaling is needed; on
CPU and older GPUs everything stays float32. Sampling and the softmax over cells always
run in float32 (see `wsi_ats.models.ats_model`).

Decoded pixels cross to the device as uint8 (four times fewer bytes than floats), from
pinned memory with a non-blocking copy on CUDA; the model converts and normalises them there.
"""

from __future__ import annotations

import contextlib
import resource
import sys
from contextlib import AbstractContextManager

import numpy as np
import torch


def select_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` or ``"auto"``: CUDA if available, else CPU; an explicit CUDA device that is missing is an error."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} asked for, but CUDA is not available")
    return device


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``device``, or None where float32 is used throughout."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device, enabled: bool = True) -> AbstractContextManager:
    """Autocast context for forward passes on ``device`` (a no-op where `amp_dtype` is None)."""
    dtype = amp_dtype(device)
    if not enabled or dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this process (MiB) and, on CUDA, peak allocated device memory (MiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mib = rss / 2**20 if sys.platform == "darwin" else rss / 2**10
    out = {"peak_rss_mib": round(rss_mib, 1)}
    if device.type == "cuda":
        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def to_device(pixels: np.ndarray, device: torch.device) -> torch.Tensor:
    """A uint8 array (patches ``[n, P, P, 3]`` or a window ``[H, W, 3]``) as a uint8 tensor on ``device``."""
    if pixels.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {pixels.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(pixels))
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)
